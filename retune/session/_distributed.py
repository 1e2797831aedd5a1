"""One run per ``torch.distributed`` job: rank 0 owns it, every rank applies the same changes.

When :func:`retune.init` finds an initialised default process group of two or more ranks:

* **Rank 0** (:class:`LeaderRun`) is a normal run: it creates or resumes the run, writes
  metrics, heartbeats, polls and claims commands, validates and applies them, and writes every
  checkpoint (the replicated model / optimizer once, plus every rank's RNG state).
* **Other ranks** (:class:`RankRun`) get a handle with the same API. They learn the run id, the
  node, the data seed and the checkpoint a resume loads from rank 0; they write nothing to the
  store unless ``per_rank_metrics=True`` (then their metrics are stored as ``rank{r}/{key}``).
  They read the store and the object location only to load a checkpoint (a resume or a
  restore), so both must be reachable from every rank for those.

**The agreement protocol.** The ranks agree at *agreement boundaries*: about every
:data:`AGREEMENT_INTERVAL` of training (every step when steps are longer), at most
:data:`MAX_CADENCE` steps apart, and at every scheduled checkpoint's step. The number of steps
to the next one is a step count carried by the agreement itself, so every rank knows it; the
steps between skip the boundary. At each, every rank starts one asynchronous
``all_reduce(MAX)`` of six ``int64``: rank 0's number of queued commands, any rank's pending
signal, any rank's stop request, rank 0's paused flag, the guard's work (2: a rank's guard
tripped; 1: rank 0's last-good checkpoint is due), and rank 0's cadence (steps between the
agreements that follow, from the steps it just timed). It completes while the next steps
train, and the next agreement boundary acts on it: a command, signal or stop that reached a
rank before agreement boundary *s* is applied at the one after, on every rank alike (each rank
acts only on what was agreed, never on its own flags). When all are zero (nearly always) that
is all.
Otherwise the ranks *exchange*: every rank's RNG state is
all-gathered (canonical JSON bytes in a ``uint8`` tensor, for the checkpoints rank 0 may
write); rank 0 takes the scheduled checkpoint, claims, validates and applies the commands (the
one validation), resolves them, and broadcasts what it applied (*effects*: canonical JSON in a
``uint8`` tensor, its length first) with its node, step, paused and stop flags; the other ranks
apply the same effects, and one last ``all_reduce`` confirms that every rank did. A rank that
could not apply what rank 0 applied makes every rank raise :class:`DistributedError` (the
ranks would diverge). No pickle and no ``broadcast_object_list`` anywhere. While paused the
ranks repeat the boundary every ``poll_interval`` (those repeats agree at once, synchronously),
so none waits in a collective for longer than that; ``finish()`` waits for the agreement in
flight. ``run.checkpoint()``, ``run.restore()`` and the end-of-epoch checkpoints are
collective too: call them on every rank at the same point.

A collective that fails (a rank died; a rank stopped answering for longer than the process
group's ``timeout=``) raises :class:`DistributedError` from ``run.step()``: the run on rank 0
ends ``crashed`` with that reason.

torch is imported only when a process group exists (``import retune`` stays torch-free).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import numpy as np

from retune import _json
from retune.checkpoint import resolve_checkpoint
from retune.errors import CommandRejected, DistributedError, InvalidArgument, RetuneError
from retune.session import _steer
from retune.session._checkpointer import PendingCheckpoint
from retune.session._control import Applier, Handler
from retune.session._handlers import HANDLERS
from retune.session._protocols import TrainingSession
from retune.session._run import Run, _merged
from retune.session._state import _rng_state, _set_rng_state
from retune.session._writer import Columns, Group, MetricWriter
from retune.store import CheckpointRecord, CommandRecord, Store

__all__ = ["RANKS_PART", "Cluster", "LeaderRun", "RankRun", "detect"]

log = logging.getLogger("retune")

RANKS_PART = "retune.ranks"
"""The checkpoint part holding the RNG state of every rank but 0 (rank 0's is ``rng``)."""

_NEVER = 2**62
T = TypeVar("T")

AGREEMENT_INTERVAL = 0.05
"""Seconds of training between two step-boundary agreements, about (the default command poll
interval: agreeing more often would not apply commands sooner): rank 0 turns it into a
number of steps (at least one) from the steps it just timed, and every rank uses that number."""
MAX_CADENCE = 64
"""The most steps between two agreements, whatever the step time: bounds how long a sudden
slow-down can delay a command, a pause or a stop."""


def detect() -> Cluster | None:
    """The default process group when one of two or more ranks is initialised, else None.

    Never imports torch: without ``torch.distributed`` imported there is no process group.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    if dist.get_world_size() < 2:
        return None
    return Cluster()


def _canonical(value: Any) -> bytes:
    return json.dumps(
        _json.jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


class Cluster:
    """The default process group, seen through the few collectives Retune needs.

    Tensors live on the CPU for gloo and on the current CUDA device for NCCL. Every failure
    of a collective is raised as :class:`DistributedError` naming this rank.
    """

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch = torch
        self._dist = dist
        self.rank = int(dist.get_rank())
        self.world_size = int(dist.get_world_size())
        self.backend = str(dist.get_backend())
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )

    def describe(self) -> dict[str, Any]:
        """What the run records about the job (``meta["distributed"]``)."""
        return {"world_size": self.world_size, "backend": self.backend}

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RuntimeError as e:  # DistBackendError, gloo's closed connections, timeouts
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({detail[:300]}); "
                "another rank has died or did not answer within the process group's timeout"
            ) from e

    def agree(self, values: list[int]) -> list[int]:
        """Element-wise maximum of ``values`` over every rank (one small ``all_reduce``)."""
        return self.agree_later(values).result()

    def agree_later(self, values: list[int]) -> Agreement:
        """Start the element-wise maximum of ``values`` over every rank without waiting for
        it (an asynchronous ``all_reduce``): its latency passes while the next step trains.
        Every rank must start it at the same point; :meth:`Agreement.result` waits."""
        torch = self._torch
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        work = self._call(
            "the step-boundary agreement",
            lambda: self._dist.all_reduce(tensor, op=self._dist.ReduceOp.MAX, async_op=True),
        )
        return Agreement(self, tensor, work)

    def _bytes_tensor(self, data: bytes) -> Any:
        array = np.frombuffer(data, dtype=np.uint8).copy()
        return self._torch.from_numpy(array).to(self.device)

    def broadcast_bytes(self, data: bytes = b"") -> bytes:
        """Rank 0's ``data`` on every rank: its length (``int64``), then the bytes (``uint8``)."""
        torch = self._torch
        size = torch.tensor([len(data) if self.rank == 0 else 0], dtype=torch.int64)
        size = size.to(self.device)
        self._call("a broadcast from rank 0", lambda: self._dist.broadcast(size, 0))
        length = int(size.item())
        if not length:
            return b""
        if self.rank == 0:
            buffer = self._bytes_tensor(data)
        else:
            buffer = torch.empty(length, dtype=torch.uint8, device=self.device)
        self._call("a broadcast from rank 0", lambda: self._dist.broadcast(buffer, 0))
        return bytes(buffer.cpu().numpy().tobytes())

    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, by rank (lengths all-gathered first, then padded bytes)."""
        torch, dist = self._torch, self._dist
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        self._call("gathering the ranks' RNG states", lambda: dist.all_gather(sizes, size))
        lengths = [int(s.item()) for s in sizes]
        longest = max(lengths)
        if not longest:
            return [b""] * self.world_size
        buffer = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        if data:
            buffer[: len(data)] = self._bytes_tensor(data)
        parts = [torch.empty_like(buffer) for _ in range(self.world_size)]
        self._call("gathering the ranks' RNG states", lambda: dist.all_gather(parts, buffer))
        return [
            bytes(part[:n].cpu().numpy().tobytes()) for part, n in zip(parts, lengths, strict=True)
        ]

    def send(self, message: Mapping[str, Any]) -> None:
        """Rank 0: broadcast ``message`` as canonical JSON."""
        self.broadcast_bytes(_canonical(dict(message)))

    def receive(self) -> dict[str, Any]:
        """Other ranks: the message rank 0 sent with :meth:`send`."""
        message = json.loads(self.broadcast_bytes().decode("utf-8"))
        if not isinstance(message, dict):
            raise DistributedError(f"rank {self.rank}: rank 0 sent {message!r:.80}")
        return message

    def confirm(self, failure: str | None) -> None:
        """Every rank says whether it applied what rank 0 applied; if any could not, every
        rank raises :class:`DistributedError` naming those ranks (one ``all_reduce``)."""
        flags = [0] * self.world_size
        flags[self.rank] = 1 if failure else 0
        failed = [rank for rank, flag in enumerate(self.agree(flags)) if flag]
        if failed:
            own = f": {failure}" if failure else ""
            raise DistributedError(
                f"rank(s) {failed} could not apply what rank 0 applied; every rank stops "
                f"rather than train on diverged state{own}"
            )

    def gather_rng(self) -> dict[str, Any]:
        """Rank 0: the RNG state of every other rank, by rank (as ``str``); others: ``{}``."""
        mine = b"" if self.rank == 0 else _canonical(_rng_to_wire(_rng_state()))
        every = self.gather_bytes(mine)
        if self.rank:
            return {}
        return {
            str(rank): _rng_from_wire(json.loads(data.decode("utf-8")))
            for rank, data in enumerate(every)
            if rank and data
        }


class Agreement:
    """An agreement in flight (:meth:`Cluster.agree_later`): its result, once, on demand."""

    def __init__(self, cluster: Cluster, tensor: Any, work: Any) -> None:
        self._cluster = cluster
        self._tensor = tensor
        self._work = work

    def result(self) -> list[int]:
        """The element-wise maximum over every rank; raises :class:`DistributedError` when a
        rank died or did not answer."""
        self._cluster._call("the step-boundary agreement", self._work.wait)
        return [int(v) for v in self._tensor.tolist()]


# -- RNG states on the wire (JSON: no pickle) -----------------------------------------------


def _rng_to_wire(state: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    wire: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if "torch" in state:
        wire["torch"] = bytes(state["torch"].numpy().tobytes()).hex()
    if "cuda" in state:
        wire["cuda"] = [bytes(t.cpu().numpy().tobytes()).hex() for t in state["cuda"]]
    return wire


def _rng_from_wire(wire: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = wire["python"]
    name, keys, pos, has_gauss, cached = wire["numpy"]
    state: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        if "torch" in wire:
            state["torch"] = torch.from_numpy(
                np.frombuffer(bytes.fromhex(wire["torch"]), dtype=np.uint8).copy()
            )
        if "cuda" in wire:
            state["cuda"] = [
                torch.from_numpy(np.frombuffer(bytes.fromhex(h), dtype=np.uint8).copy())
                for h in wire["cuda"]
            ]
    return state


def _no_explore(session: TrainingSession, command: CommandRecord) -> dict[str, Any] | None:
    """Explorations restore and train candidates over many steps on rank 0 alone: refused."""
    raise CommandRejected("explore is not supported under torch.distributed yet")


def _remote_error(message: dict[str, Any]) -> RetuneError:
    """What rank 0 failed with, as this rank raises it."""
    if message.get("code") == CommandRejected.code:
        return CommandRejected(str(message.get("error")), command_id=message.get("command"))
    return DistributedError(f"rank 0 failed, so every rank stops: {message.get('error')}")


class _ClusterRun(Run):
    """What rank 0 and the other ranks share: the agreement started at the last boundary."""

    _cluster: Cluster
    _agreement: Agreement | None = None
    """Started at the last step boundary (the flags as they were then); this one acts on it."""
    pipelined = True
    """Whether a boundary acts on the agreement started at the one before (rank 0 decides for
    every rank: False with a guard, whose last-good checkpoint must not hold a state another
    rank already found bad at that step)."""
    _next_agreement = 0
    """The step whose boundary agrees next: the same on every rank (a step count)."""

    def _agrees_now(self) -> bool:
        """Whether this step's boundary is one where the ranks agree. ``step()`` calls the
        boundary only then (``_next_boundary``), or sooner for a queued command or a signal,
        which wait here for the agreement (applied on one rank only, they would diverge)."""
        return self._step >= self._next_agreement

    def _plan_next_agreement(self, cadence: int) -> None:
        """After an agreement: the next one ``cadence`` steps on (as agreed, so the same on
        every rank), or sooner at the next scheduled checkpoint's step."""
        step = self._step
        upcoming = step + max(1, min(cadence, MAX_CADENCE))
        if self._next_checkpoint > step:
            upcoming = min(upcoming, self._next_checkpoint)
        self._next_agreement = self._next_boundary = upcoming  # step() skips the steps between

    def _reschedule(self) -> None:
        """The loop position moved (a restore or a resume, on every rank alike): agree at the
        next step."""
        self._next_agreement = self._next_boundary = self._step + 1

    def _agreed(self) -> list[int]:
        """The agreement this boundary acts on: the one started at the last boundary, or,
        when none is in flight (the first boundary, the repeats of a pause), one now."""
        agreement, self._agreement = self._agreement, None
        return agreement.result() if agreement is not None else self._cluster.agree(self._flags())

    def _flags(self) -> list[int]:
        """This rank's part of the agreement (see the module docstring)."""
        raise NotImplementedError

    def _agree_next(self, flags: list[int]) -> None:
        """Start the agreement the next boundary acts on (every rank at the same boundary);
        when not :attr:`pipelined`, the next boundary agrees then, at once."""
        if self.pipelined:
            self._agreement = self._cluster.agree_later(flags)

    def _stop_checkpointed(self) -> None:
        """Every rank leaves the stop together, once rank 0's stop checkpoint is listed (one
        ``all_reduce``): a rank that exited first (with a signal's exit status) could make a
        launcher such as torchrun kill rank 0 in the middle of writing it, and a resume would
        then go back to an older checkpoint."""
        self._cluster.agree([0])

    def finish(self, status: str = "finished", *, error: str | None = None) -> None:
        """As :meth:`Run.finish`, after the agreement in flight completes on every rank."""
        agreement, self._agreement = self._agreement, None
        if agreement is not None and not self._ended:
            try:
                agreement.result()
            except DistributedError as e:
                log.warning("retune: the last step-boundary agreement failed: %s", e)
                if status == "finished":
                    status, error = "crashed", str(e)
        super().finish(status, error=error)


class LeaderRun(_ClusterRun):
    """Rank 0's run: a normal run that also leads the agreement at the step boundaries."""

    _kept_ends = frozenset({"crashed"})
    """A crash another rank recorded stands: the job failed, whatever rank 0 saw."""

    def __init__(self, *args: Any, cluster: Cluster, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cluster = cluster
        self._peer_rng: dict[str, Any] = {}
        self._sent: dict[str, bool] = {"paused": False, "stop": False}
        self._effects: list[dict[str, Any]] = []
        self._reply: dict[str, Any] = {}
        recording = {kind: self._recording(handler) for kind, handler in HANDLERS.items()}
        recording["explore"] = _no_explore
        self._applier = Applier(recording)
        self._inbox = self._applier.inbox
        self.add_state(RANKS_PART, lambda: dict(self._peer_rng), self._load_peer_rng)
        self._timed_from: tuple[int, float] | None = None  # (step, monotonic) after a boundary
        self._step_seconds = 0.0  # the last measured time per training step (0: not yet)

    def _load_peer_rng(self, value: Any) -> None:
        # a restore brings back the other ranks' RNG too: the next checkpoint records those
        self._peer_rng = dict(value) if isinstance(value, dict) else {}

    def _recording(self, handler: Handler) -> Handler:
        def record(session: TrainingSession, command: CommandRecord) -> dict[str, Any] | None:
            result = handler(session, command)  # a rejection raises: nothing to replay
            self._effects.append(
                {"kind": command.kind, "payload": command.payload, "result": result}
            )
            return result

        return record

    def _exchange(self, work: Callable[[], T]) -> T:
        """Gather every rank's RNG, do ``work`` (rank 0 only), broadcast what it applied,
        and wait until every rank confirms it applied the same."""
        cluster = self._cluster
        self._peer_rng = cluster.gather_rng()
        self._effects, self._reply = [], {}
        try:
            value = work()
        except BaseException as e:
            code = e.code if isinstance(e, RetuneError) else type(e).__name__
            cluster.send({"error": f"{type(e).__name__}: {e}", "code": code, **self._reply})
            raise
        self._sent = {"paused": self.flags.paused, "stop": self.flags.stop_requested}
        cluster.send(
            {
                **self._reply,
                "effects": self._effects,
                "node": self._node,
                "step": self._step,
                **self._sent,
            }
        )
        cluster.confirm(None)
        return value

    def _guard_work(self) -> int:
        """This rank's guard in the agreement: 2 tripped, 1 a last-good checkpoint due."""
        guard = self.guard
        if guard is None:
            return 0
        if guard.tripped is not None:
            return 2
        return int(self._step >= guard.next_due)

    def _process(self, due: bool, guard_work: int = 0) -> PendingCheckpoint | None:
        """The guard (a recovery, or its checkpoint), the scheduled checkpoint (written in the
        background, as on one process: the other ranks do not wait for it) and the queued
        commands; the scheduled save when it holds this boundary's state (nothing changed
        after it), else None."""
        scheduled: PendingCheckpoint | None = None
        guard = self.guard
        if guard_work and guard is not None:
            if guard_work == 2 and guard.tripped is None:
                guard.tripped = (
                    f"{guard.key} tripped the guard on another rank at step {self._step}"
                )
            guard.at_boundary()
            if guard.effect is not None:
                self._effects.append(
                    {"kind": "guard", "payload": {"action": "recover"}, "result": guard.effect}
                )
                guard.effect = None
        if due:
            every = self.checkpointer.policy.every_n_steps or _NEVER
            self._next_checkpoint = (self._step // every + 1) * every
            scheduled = self.checkpointer.save_async("schedule")  # None: skipped (when_busy)
        if self._inbox:
            self._applier.apply_pending(self)
            if self._effects:
                scheduled = None  # a command changed the state after it
        return scheduled

    def _at_boundary(self, values: Mapping[str, Any]) -> None:
        if self.training_thread is None:
            self.training_thread = threading.current_thread()
        if self._stopped_here:  # every rank stopped at the same boundary: nothing to agree
            self._stop_here(already_saved=True)
            return
        if not self._agrees_now():
            return  # a queued command waits for the agreement: it must apply on every rank
        self._time_steps()
        due = self._step >= self._next_checkpoint  # the same on every rank
        scheduled: PendingCheckpoint | None = None
        while True:
            pending, signal, stop, paused, guard_any, cadence = self._agreed()
            if signal or stop:
                self.flags.stop_requested = True  # a signal or stop on any rank stops every rank
            if pending or signal or due or stop or guard_any:
                kept = self._exchange(partial(self._process, due, guard_any))
                if kept is not None or self._effects:  # what a pause's repeat applied, too
                    scheduled = kept
                paused, stop = int(self._sent["paused"]), int(self._sent["stop"])
            due = False
            if paused and not stop:  # what the other ranks were told, not this rank's flags
                if self._applier.wake.wait(self._poll_interval):
                    self._applier.wake.clear()
                continue
            break
        if stop:  # the stop relies on the scheduled save: it must be listed
            self._stop_here(already_saved=scheduled is not None and scheduled.wait() is not None)
        else:
            self._agree_next(self._flags())
            self._plan_next_agreement(cadence)
            self._timed_from = (self._step, time.monotonic())

    def _time_steps(self) -> None:
        """Time the steps trained since the last agreement ended (boundary work excluded)."""
        if self._timed_from is not None:
            step, since = self._timed_from
            if self._step > step:
                self._step_seconds = (time.monotonic() - since) / (self._step - step)

    def _cadence(self) -> int:
        """Steps until the agreement after next: about :data:`AGREEMENT_INTERVAL` of training
        at the last measured step time; 1 when the agreement is synchronous (a guard)."""
        if not self.pipelined or self._step_seconds <= 0:
            return 1
        return max(1, min(MAX_CADENCE, round(AGREEMENT_INTERVAL / self._step_seconds)))

    def _flags(self) -> list[int]:
        """Rank 0's part of the agreement: queued commands, a signal, a stop request, paused,
        the guard's work, and the steps between the agreements that follow."""
        return [
            len(self._inbox),
            self._signal,
            int(self.flags.stop_requested),
            int(self.flags.paused),
            self._guard_work(),
            self._cadence(),
        ]

    def checkpoint(self, tag: str | None = None) -> CheckpointRecord:
        """Collective: call on every rank at the same point; rank 0 saves (every rank's RNG)."""

        def work() -> CheckpointRecord:
            record = Run.checkpoint(self, tag)
            self._reply["checkpoint"] = record.label
            return record

        return self._exchange(work)

    def _steered(self, call: Callable[[], CommandRecord]) -> CommandRecord:
        """``run.set()`` / ``scale()`` / ``restore()`` on rank 0. From the training thread (or
        before training started) it is applied here, so it is collective: every rank calls
        the same method at the same point. From another thread it is queued, and the next
        step boundary's exchange applies it on every rank."""
        if not _steer._applies_here(self):
            return call()

        def work() -> CommandRecord:
            try:
                record = call()
            except CommandRejected as e:
                self._reply["command"] = e.command_id
                raise
            self._reply["command"] = record.id
            return record

        return self._exchange(work)

    def _send(self, kind: str, payload: dict[str, Any], timeout: float) -> CommandRecord:
        """``run.set()`` / ``scale()`` / ``restore()``: see :meth:`_steered`."""
        return self._steered(partial(_steer.send, self, kind, payload, timeout=timeout))

    def _on_epoch_end(self) -> None:
        every = self.checkpointer.policy.every_n_epochs
        if every and self.loop.epoch % every == 0:  # the exchange gathers every rank's RNG
            self._exchange(lambda: self.checkpointer.save_async("schedule"))


class _SilentWriter(MetricWriter):
    """The writer of a rank that records nothing: no thread, no store writes."""

    def __init__(self) -> None:  # no thread: nothing is ever written
        self._silent = Columns(0)
        self.dropped = 0

    def columns(self, node: int) -> Columns:
        self._silent = Columns(node)
        return self._silent

    def undo_partial(self, group: Group) -> None:
        del group.values[len(group.steps) * group.width :]

    def flush(self) -> int:
        self._silent.groups.clear()
        return 0

    def close(self) -> None:
        self._silent.groups.clear()

    @property
    def unwritten(self) -> int:
        return 0

    @property
    def alive(self) -> bool:
        return False


class RankRun(_ClusterRun):
    """The handle of a rank other than 0: same API; follows rank 0 where the ranks agree.

    Logging is a no-op unless ``per_rank_metrics`` (then ``rank{r}/{key}`` is stored). Names
    and values are still checked, so a bad one raises on every rank alike.
    """

    def __init__(
        self, *args: Any, cluster: Cluster, per_rank_metrics: bool = False, **kwargs: Any
    ) -> None:
        self._cluster = cluster
        self._per_rank = per_rank_metrics
        self._prefix = f"rank{cluster.rank}/"
        super().__init__(*args, **kwargs)
        self.add_state(RANKS_PART, lambda: {}, self._load_own_rng)

    def _open_writer(self, flush_interval: float, poll_interval: float) -> MetricWriter:
        if not self._per_rank:
            return _SilentWriter()
        return MetricWriter(  # points only: rank 0 writes the run's step and heartbeat
            self.store,
            self.id,
            flush_interval=flush_interval,
            poll_interval=poll_interval,
            progress=None,
        )

    def _load_own_rng(self, value: Any) -> None:
        mine = value.get(str(self._cluster.rank)) if isinstance(value, dict) else None
        if mine is None:
            log.warning(
                "retune: the checkpoint holds no RNG state for rank %d; it keeps rank 0's",
                self._cluster.rank,
            )
            return
        _set_rng_state(mine)

    def _tagged(self, values: Mapping[Any, Any]) -> dict[str, float]:
        checked = self._checked(values)
        return {f"{self._prefix}{key}": value for key, value in checked.items()}

    def step(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> int:
        """Complete one global step (see :meth:`Run.step`); metrics are checked, and stored
        as ``rank{r}/{key}`` only with ``per_rank_metrics=True``."""
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        values = self._checked(_merged(metrics, kwargs))
        if self.guard is not None:  # this rank's own trigger joins the agreement
            self.guard.observe(self._step + 1, values)
        if self._per_rank:
            return Run.step(self, {f"{self._prefix}{key}": v for key, v in values.items()})
        step = self._step + 1
        self._step = step
        if step >= self._next_boundary:  # as Run.step: only where the ranks agree (or sooner)
            self._at_boundary(values)  # nothing of them is kept: the agreement needs no values
        return self._step  # as Run.step: where a restore at this boundary moved it back

    def log(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        tagged = self._tagged(_merged(metrics, kwargs))
        if self._per_rank:
            Run.log(self, tagged)

    def publish_tunables(self) -> None:
        """Rank 0 records the knobs every rank declares; this rank only applies them."""

    def _mark_ended(self, status: str, error: str | None) -> None:
        """Rank 0 records how the run ended. This rank records only a crash: the job failed,
        so the run is ``crashed`` whether rank 0 is alive or not (when it died, SIGKILL or
        out of memory, nobody else would record it) and whether rank 0 ended the run before
        or after (rank 0 keeps a crash recorded first: :attr:`LeaderRun._kept_ends`). The
        first crash recorded stands, with its reason; later ones are events."""
        if status != "crashed":
            return
        rank = self._cluster.rank
        reason = f"rank {rank} crashed: {error or 'no reason given'}"
        try:
            recorded = self.store.update_run(
                self.id,
                status="crashed",
                ended_at=time.time(),
                step=self._step,  # the job's step: rank 0's last flush may be behind it
                error=reason,
                unless_status={"crashed"},
            )
            if recorded:  # the first end recorded: close the node as rank 0 would have
                self.store.end_node(self.id, self._node, self._step)
            self.store.add_event(
                self.id, "crashed", {"error": reason, "rank": rank}, node=self._node,
                step=self._step,
            )  # fmt: skip
        except RetuneError as e:
            log.warning("retune: rank %d could not record the crash: %s", rank, e)

    # -- following rank 0 -------------------------------------------------------------------
    def _follow(self) -> dict[str, Any]:
        cluster = self._cluster
        cluster.gather_rng()
        message = cluster.receive()
        if "error" in message:
            raise _remote_error(message)
        failure: str | None = None
        try:
            self._replay(message["effects"])
            node = int(message["node"])
            if node != self._node:  # rank 0 opened a node: this rank's points go to it too
                self._set_node(node)
            if int(message["step"]) != self._step:
                raise DistributedError(
                    f"rank {cluster.rank} is at step {self._step}, rank 0 at {message['step']}"
                )
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
            log.error("retune: rank %d could not follow rank 0: %s", cluster.rank, failure)
        cluster.confirm(failure)
        return message

    def _replay(self, effects: list[dict[str, Any]]) -> None:
        """Apply what rank 0 applied, in its order (rank 0 validated it already)."""
        for effect in effects:
            kind, payload = effect["kind"], effect.get("payload") or {}
            group, mode = payload.get("group"), payload.get("mode", "rescale")
            if kind == "set":
                self.tunables.set(payload.get("values", {}), group, mode)
            elif kind == "scale":
                self.tunables.scale(payload.get("factors", {}), group, mode)
            elif kind == "pause":
                self.flags.paused = True
            elif kind in ("continue", "resume"):
                self.flags.paused = False
            elif kind == "stop":
                self.flags.stop_requested = True
                self.flags.paused = False
            elif kind == "guard":
                if self.guard is None:
                    raise DistributedError("rank 0's guard acted, but this rank has no guard")
                self.guard.replay(payload, effect.get("result") or {})
            elif kind == "restore":
                label = (effect.get("result") or {}).get("checkpoint")
                record = resolve_checkpoint(self.store, self.id, str(label))
                self.load_state(self.checkpointer.load(record))
                values = payload.get("set") or {}
                if values:
                    self.tunables.set(values, group, mode)
            elif kind != "checkpoint":
                raise DistributedError(f"rank 0 applied {kind!r}, which this rank cannot")

    def _at_boundary(self, values: Mapping[str, Any]) -> None:
        if self.training_thread is None:
            self.training_thread = threading.current_thread()
        if self._stopped_here:
            self._stop_here(already_saved=True)
            return
        if not self._agrees_now():
            return
        due = self._step >= self._next_checkpoint  # the same on every rank
        if due:
            every = self.checkpointer.policy.every_n_steps or _NEVER
            self._next_checkpoint = (self._step // every + 1) * every
        while True:
            pending, signal, stop, paused, guard_any, cadence = self._agreed()
            if signal:
                self.flags.stop_requested = True
            if pending or signal or due or stop or guard_any:
                message = self._follow()
                paused, stop = int(message["paused"]), int(message["stop"])
            due = False
            if paused and not stop:
                continue
            break
        if stop:
            self._stop_here(already_saved=True)  # rank 0 took the stop checkpoint
        else:
            self._agree_next(self._flags())
            self._plan_next_agreement(cadence)

    def _flags(self) -> list[int]:
        """This rank's part of the agreement: a signal, a stop request, its guard tripped
        (rank 0 alone proposes the cadence)."""
        tripped = 2 if self.guard is not None and self.guard.tripped is not None else 0
        return [0, self._signal, int(self.flags.stop_requested), 0, tripped, 0]

    def checkpoint(self, tag: str | None = None) -> CheckpointRecord:
        """Collective: rank 0 saves (this rank's RNG included); returns its record."""
        message = self._follow()
        return resolve_checkpoint(self.store, self.id, str(message["checkpoint"]))

    def _followed(self) -> CommandRecord:
        """Rank 0's ``run.set()`` / ``scale()`` / ``restore()``, called on every rank from the
        training thread: this rank follows and returns rank 0's command (or raises what rank
        0 raised). Only rank 0 may steer from another thread."""
        if not _steer._applies_here(self):
            raise InvalidArgument(
                "under torch.distributed only rank 0 may send commands from another thread"
            )
        message = self._follow()
        return self.store.get_command(int(message["command"]))

    def _send(self, kind: str, payload: dict[str, Any], timeout: float) -> CommandRecord:
        """``run.set()`` / ``scale()`` / ``restore()``: follow rank 0's (see :meth:`_followed`)."""
        return self._followed()

    def _on_epoch_end(self) -> None:
        every = self.checkpointer.policy.every_n_epochs
        if every and self.loop.epoch % every == 0:
            self._follow()


def join(
    cluster: Cluster,
    *,
    store: str | Store | None,
    objects: str | None,
    build: Callable[..., RankRun],
) -> RankRun:
    """A rank other than 0 joins the run rank 0 started (or resumed), at the same step."""
    from retune.store import objects_url_for, open_store

    message = cluster.receive()
    if "error" in message:
        raise DistributedError(f"rank 0 could not start the run: {message['error']}")
    failure: str | None = None
    run: RankRun | None = None
    owns_store = not isinstance(store, Store)
    opened = open_store(store) if not isinstance(store, Store) else store
    try:
        record = opened.get_run(str(message["run"]))
        run = build(
            opened,
            record,
            int(message["node"]),
            data_seed=int(message["data_seed"]),
            objects_url=objects or objects_url_for(opened.url),
            owns_store=owns_store,
        )
        run.pipelined = bool(message.get("pipelined", True))  # rank 0's choice, for every rank
        if message.get("resumed"):
            target = resolve_checkpoint(opened, record.id, str(message["resumed"]))
            run.load_state(run.checkpointer.load(target))
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
    try:
        cluster.confirm(failure)
    except BaseException:
        if run is not None:
            run.finish("crashed", error=failure)
        elif owns_store:
            opened.close()
        raise
    assert run is not None
    return run

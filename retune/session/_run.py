"""The run handle: what the training script holds and calls every step."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from retune.control import Knob, KnobValues, LiveTunables
from retune.errors import CommandRejected, InvalidArgument, RetuneError, StopTraining
from retune.session import _lifecycle, _restore
from retune.session._checkpointer import Checkpointer, CheckpointPolicy
from retune.session._control import Applier
from retune.session._loop import LoopPosition
from retune.session._snapshot import RunSnapshot, read_snapshot
from retune.session._tree import TreeNode
from retune.session._writer import MetricWriter
from retune.store import CheckpointRecord, CommandRecord, RunRecord, Store

__all__ = ["Run"]

_NUMBER_TYPES = (float, int)
_NEVER = 2**62  # a step no run reaches: no scheduled checkpoint


def _coerce_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Turn every value into a float (tensors, numpy scalars, bools) or raise InvalidArgument."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"metric names must be non-empty strings, got {key!r}")
        if isinstance(value, str) or not hasattr(value, "__float__"):
            raise InvalidArgument(
                f"metric {key!r} must be a number, got {type(value).__name__} {value!r:.60}"
            )
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidArgument(f"metric {key!r} must be a single number: {e}") from e
    return out


class Run:
    """A training run being recorded. Create it with :func:`retune.init`.

    Call :meth:`step` once per optimizer step (from the training thread) and :meth:`log` for
    metrics of the current step; end with :meth:`finish` or use the run as a context manager.
    ``step()`` only appends to an in-memory buffer; a background thread writes batches.
    """

    def __init__(
        self,
        store: Store,
        record: RunRecord,
        node: int,
        *,
        training: Mapping[str, Any],
        tunables: LiveTunables,
        data_seed: int,
        objects_url: str,
        policy: CheckpointPolicy,
        flush_interval: float,
        poll_interval: float,
        owns_store: bool,
    ) -> None:
        self.store = store
        self._record = record
        self._node = node
        self._step = 0
        self._owns_store = owns_store
        self.model = training.get("model")
        self.optimizer = training.get("optimizer")
        self.scheduler = training.get("scheduler")
        self.scaler = training.get("scaler")
        self.tunables = tunables
        self.state: dict[str, Any] = {}
        """User state saved in every checkpoint: tensors, numbers, strings, lists, dicts."""
        self.loop = LoopPosition(data_seed)
        self.loop.should_stop = lambda: self._stop_requested
        self.loop.on_epoch_end = self._on_epoch_end
        self.checkpointer = Checkpointer(self, objects_url, policy)
        self._next_checkpoint = policy.every_n_steps or _NEVER
        self.ui_server: Any = None  # the dashboard served by retune.init(..., ui=True)
        self._ended = False
        self._paused = False
        self._stop_requested = False
        self._poll_interval = poll_interval
        self._end_lock = threading.Lock()
        self._applier = Applier(
            {
                "set": Run._on_set,
                "scale": Run._on_scale,
                "pause": Run._on_pause,
                "resume": Run._on_resume,
                "stop": Run._on_stop,
                "checkpoint": Run._on_checkpoint,
                "restore": _restore.on_restore,
            }
        )
        self._inbox = self._applier.inbox
        self._writer = MetricWriter(
            store,
            record.id,
            flush_interval=flush_interval,
            poll_interval=poll_interval,
            progress=lambda: self._step,
            tick=lambda: self._applier.poll(self),
        )
        self._buffer = self._writer.buffer
        _lifecycle.track(self)

    # -- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._record.id

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def global_step(self) -> int:
        """The last completed global step (0 before the first :meth:`step`)."""
        return self._step

    @property
    def node(self) -> int:
        """The number of the node now being trained (``n1`` is the root)."""
        return self._node

    @property
    def hp(self) -> KnobValues:
        """Current values of the user's knobs: ``run.hp.clip_norm``, ``run.hp["clip_norm"]``."""
        return self.tunables.hp

    @property
    def ended(self) -> bool:
        return self._ended

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, id={self.id!r}, step={self._step})"

    # -- hot path ---------------------------------------------------------------------------
    def step(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> int:
        """Complete one global step and record its metrics; returns the step number (from 1).

        Values must be numbers (floats, ints, one-element tensors, numpy scalars); NaN and inf
        are kept and flagged. Metrics may be given as keywords or, for names that are not
        identifiers (``"val/loss"``), as a mapping.
        """
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        values = kwargs if metrics is None else {**metrics, **kwargs}
        for value in values.values():
            if type(value) not in _NUMBER_TYPES:
                values = _coerce_metrics(values)
                break
        self._step += 1
        if values:
            self._buffer.append((self._step, self._node, time.time(), values))
        if self._inbox or self._step >= self._next_checkpoint:
            self._at_boundary()
        return self._step

    # -- commands ---------------------------------------------------------------------------
    def _at_boundary(self) -> None:
        """Scheduled checkpoint; queued commands; hold while paused; StopTraining after a stop."""
        if self._step >= self._next_checkpoint:
            every = self.checkpointer.policy.every_n_steps or _NEVER
            self._next_checkpoint = (self._step // every + 1) * every
            self.checkpointer.save("schedule")
        self._applier.apply_pending(self)
        while self._paused and not self._stop_requested:
            if self._applier.wake.wait(self._poll_interval):
                self._applier.wake.clear()
            self._applier.apply_pending(self)
        if self._stop_requested:
            raise StopTraining(f"run {self.name} ({self.id}) stopped at step {self._step}")

    def _set_step(self, step: int) -> None:
        self._step = step

    @property
    def should_stop(self) -> bool:
        """True once a ``stop`` command was applied (``step()`` then raises StopTraining)."""
        return self._stop_requested

    # -- tunables ---------------------------------------------------------------------------
    def tunable(
        self,
        name: str,
        initial: Any = None,
        *,
        get: Any = None,
        set: Any = None,
        bounds: tuple[float | None, float | None] = (None, None),
        kind: str | None = None,
        doc: str = "",
    ) -> Knob:
        """Declare a knob commands may change; returns it (``knob.value`` is always current).

        ``run.tunable("clip_norm", 1.0, bounds=(0, None))`` holds the value (read it as
        ``run.hp.clip_norm``); ``run.tunable("dropout", get=..., set=..., bounds=(0, 1))``
        wraps any getter/setter. Bounds are inclusive; values must be finite.
        """
        knob = self.tunables.add(
            Knob(name, initial, get=get, set=set, bounds=bounds, kind=kind, doc=doc)
        )
        self.store.update_run(self.id, tunables=self.tunables.records())
        return knob

    def tune_dropout(self, model: Any, name: str = "dropout") -> Knob:
        """One knob ``name`` for the ``p`` of every ``nn.Dropout*`` module of ``model``.

        Reading gives the first module's p; setting sets all of them.
        """
        from retune.integrations.pytorch import dropout_modules

        modules = dropout_modules(model)
        if not modules:
            raise InvalidArgument("the model has no dropout modules")

        def set_all(p: float) -> None:
            for module in modules:
                module.p = p

        return self.tunable(
            name,
            get=lambda: float(modules[0].p),
            set=set_all,
            bounds=(0.0, 1.0),
            kind="float",
        )

    def _change(self, command: CommandRecord, kind: str) -> dict[str, Any]:
        payload = command.payload
        group, mode = payload.get("group"), payload.get("mode", "rescale")
        before = self.checkpointer.save("change")  # so that any change can be undone
        try:
            if kind == "set":
                diff = self.tunables.set(payload.get("values", {}), group, mode)
            else:
                diff = self.tunables.scale(payload.get("factors", {}), group, mode)
        except CommandRejected:
            self.store.delete_checkpoints(self.id, [before.id])
            raise
        self._start_node(kind, diff, command.user)
        return {"diff": diff, "mode": mode, "checkpoint": before.label}

    def _on_set(self, command: CommandRecord) -> dict[str, Any]:
        return self._change(command, "set")

    def _on_scale(self, command: CommandRecord) -> dict[str, Any]:
        return self._change(command, "scale")

    def _start_node(
        self, kind: str, diff: dict[str, Any], who: str | None, parent: int | None = None
    ) -> None:
        """Close the current node and open a child (of ``parent``, default the current node)
        starting at the current step, with the current values."""
        self.flush()  # points of the old node are written before the tree changes
        self.store.end_node(self.id, self._node, self._step)
        node = self.store.create_node(
            self.id,
            parent=self._node if parent is None else parent,
            start_step=self._step,
            change_kind=kind,
            values=self.tunables.values(),
            diff=diff,
            created_by=who,
        )
        self._node = node.id
        self.store.update_run(self.id, tunables=self.tunables.records())

    # -- checkpoints, loop position, restore ------------------------------------------------
    def checkpoint(self, tag: str | None = None) -> CheckpointRecord:
        """Save the full training state now (call between steps, from the training thread)."""
        return self.checkpointer.save("user", tag=tag)

    def restore(
        self,
        target: str,
        *,
        set: Mapping[str, Any] | None = None,
        group: int | str | None = None,
        mode: str = "rescale",
    ) -> CommandRecord:
        """Go back to a checkpoint now, on a new branch, optionally with new values.

        ``target`` is ``c3``, ``latest``, a node ``n3`` or ``n3@1200``. Call it from the
        training thread between steps; from elsewhere use ``retune.connect(run).restore()``.
        Raises ``CommandRejected`` with the reason when it cannot be done (nothing changes).
        """
        from retune.control._commands import restore_payload, submit

        payload = restore_payload(target, set, group, mode)
        command = submit(self.store, self.id, "restore", payload, source="python")
        return self._applier.apply_now(self, command)

    def epochs(self, count: int) -> Iterator[int]:
        """``for epoch in run.epochs(n)``: starts at the restored epoch after a resume."""
        return self.loop.epochs(count)

    def batches(self, loader: Any) -> Iterator[Any]:
        """``for batch in run.batches(loader)``: this epoch's batches in Retune's seeded order,
        from the restored batch on. Works with any map-style dataset in a DataLoader."""
        return self.loop.batches(loader)

    @property
    def epoch(self) -> int:
        """The current epoch of :meth:`epochs` (restores may move it)."""
        return self.loop.epoch

    def _loop_state(self) -> dict[str, int]:
        return {**self.loop.state_dict(), "step": self._step}

    def _set_loop_state(self, state: dict[str, int]) -> None:
        self.loop.load_state_dict(state)
        self._step = int(state["step"])
        every = self.checkpointer.policy.every_n_steps
        self._next_checkpoint = (self._step // every + 1) * every if every else _NEVER

    def _on_epoch_end(self) -> None:
        every = self.checkpointer.policy.every_n_epochs
        if every and self.loop.epoch % every == 0:
            self.checkpointer.save("schedule")

    def _on_checkpoint(self, command: CommandRecord) -> dict[str, Any]:
        record = self.checkpointer.save("command", tag=command.payload.get("tag"))
        return {"checkpoint": record.label, "step": record.step}

    def tree(self) -> list[TreeNode]:
        """The run's tree as stored now (buffered metrics are flushed first)."""
        self.flush()
        return read_snapshot(self.store, self.id).tree()

    def branch(self, node: int | str) -> RunSnapshot:
        """The branch ending at ``node``: ``run.branch("n3").metric("loss")``."""
        self.flush()
        return read_snapshot(self.store, self.id).branch(node)

    def _on_pause(self, command: CommandRecord) -> dict[str, Any]:
        if self._paused:
            raise CommandRejected("the run is already paused")
        self._paused = True
        self.store.update_run(self.id, status="paused")
        return {}

    def _on_resume(self, command: CommandRecord) -> dict[str, Any]:
        if not self._paused:
            raise CommandRejected("the run is not paused")
        self._paused = False
        self.store.update_run(self.id, status="running")
        return {}

    def _on_stop(self, command: CommandRecord) -> dict[str, Any]:
        self._stop_requested = True
        self._paused = False
        return {}

    def log(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Record metrics at the current step (e.g. validation after an epoch)."""
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        values = _coerce_metrics(kwargs if metrics is None else {**metrics, **kwargs})
        if values:
            self._buffer.append((self._step, self._node, time.time(), values))

    def flush(self) -> None:
        """Write every buffered point now (the background thread does this every second)."""
        self._writer.flush()

    # -- ending -----------------------------------------------------------------------------
    def finish(self, status: str = "finished", *, error: str | None = None) -> None:
        """Flush everything, close the current node and mark the run ``status``. Idempotent."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        _lifecycle.untrack(self)
        if self._stop_requested and status == "finished":
            status = "stopped"
        try:
            self._writer.close()
        finally:
            self._applier.reject_remaining(self, f"the run ended ({status}) before it was applied")
            now = time.time()
            self.store.end_node(self.id, self._node, self._step)
            self.store.update_run(
                self.id,
                status=status,
                ended_at=now,
                heartbeat_at=now,
                step=self._step,
                error=error,
            )
            if status != "finished":
                self.store.add_event(
                    self.id,
                    status,
                    {"error": error} if error else {},
                    node=self._node,
                    step=self._step,
                )
            if self._owns_store:
                self.store.close()

    def _end_from_lifecycle(self, status: str, error: str | None) -> None:
        try:
            self.finish(status, error=error)
        except RetuneError as e:  # at interpreter exit there is no caller left to raise to
            print(f"retune: could not finish run {self.name} ({self.id}): {e}")

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, StopTraining):
            self.finish("stopped")
            return True
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped", error="interrupted (KeyboardInterrupt)")
        else:
            self.finish("crashed", error="".join(traceback.format_exception(exc_type, exc, tb)))
        return False

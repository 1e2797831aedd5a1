"""The guard: when the watched metric spikes or turns NaN/inf, roll back to the last good
checkpoint, lower lr, skip the batches in between, and record it all as a ``guard`` node.

Detection runs on the hot path (:meth:`GuardRuntime.observe`, called by ``run.step()`` with
the step's metrics): one dict lookup, a NaN/inf test, a comparison with ``spike`` times the
metric's level, and an incremental update of that level (the mean of the first ``window``
healthy values, then an exponential moving average with ``alpha = 2 / (window + 1)``). Values
that trip the guard are never folded into the level. Everything else happens at the step
boundary (:meth:`GuardRuntime.at_boundary`), on the training thread:

* **Last-good checkpoints.** Every ``every`` steps the guard saves a checkpoint (reason
  ``guard``). It becomes *last good* only once ``every`` further steps passed without a trigger;
  a trigger discards the unconfirmed one (it may already hold the trouble). The guard keeps the
  newest ``keep_good`` confirmed ones (deduplicated blobs) and deletes the older ones, except
  those a recovery used (the tree refers to them).
* **Recovery.** On a trigger the guard restores the newest last-good checkpoint (attempt ``k``
  of a streak takes the ``k``-th newest, when there are that many), through the same in-process
  path as the ``restore`` command, multiplies lr by ``lr_factor ** k`` through the same code as
  ``scale`` (scheduler-aware, rescale mode), and, when the run owns the data order
  (``run.batches()``) and ``skip_batches`` is set, moves the data position to where the trigger
  happened: the batches in between are never seen again on the new branch. The state it leaves
  is checkpointed first (reason ``change``), so the recovery can be vetoed.
* **Giving up.** After ``max_attempts`` recoveries without a healthy window (``window``
  consecutive healthy values), the next trigger restores the newest last-good checkpoint
  without changing lr and **pauses** the run with the reason; a person's ``set`` / ``scale`` /
  ``restore`` resets the count, ``continue`` resumes.

Every recovery is a node of kind ``guard`` whose ``info["guard"]`` says why and what was done,
plus one command record (kind ``guard``, source ``guard``) in the audit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from retune.control._commands import GUARD_ACTIONS, GUARD_KNOBS
from retune.errors import CommandRejected, InvalidArgument, RetuneError
from retune.session._handlers import put_back
from retune.session._protocols import TrainingSession

if TYPE_CHECKING:
    from retune.session._loop import LoopPosition
    from retune.store import CheckpointRecord, CommandRecord

__all__ = ["GUARD_ACTIONS", "GUARD_KNOBS", "Guard", "GuardRuntime", "GuardedRun", "guard_config"]

log = logging.getLogger("retune")


class GuardedRun(TrainingSession, Protocol):
    """What the guard sees of a run: a command handler's view, the loop, and state parts."""

    loop: LoopPosition

    def add_state(
        self, name: str, capture: Callable[[], Any], load: Callable[[Any], None]
    ) -> None: ...


_PART = "guard"  # the state part in every checkpoint: the metric's level


@dataclass(frozen=True)
class Guard:
    """How the guard watches a run and what it does on a trigger (see ``docs/guard.md``).

    ``metric``: the metric watched (logged through ``run.step``). A trigger is a NaN/inf value
    (when ``nan``) or a value above ``spike`` times the metric's recent level (mean of the first
    ``window`` values, then an EMA over ``window`` steps; spikes count only after ``warmup``
    values and while the level is positive). ``lr_factor``: lr is multiplied by
    ``lr_factor ** k`` on the ``k``-th recovery of a streak (1.0 leaves lr alone).
    ``skip_batches``: skip the batches between the restored checkpoint and the trigger.
    ``max_attempts``: recoveries without a healthy window before the run pauses (0: pause at
    the first trigger). ``keep_good``: last-good checkpoints kept. ``every``: steps between the
    guard's checkpoints (default ``window``). ``enabled``: start switched on.

    Invalid values raise :class:`~retune.errors.InvalidArgument`.
    """

    metric: str = "loss"
    spike: float = 3.0
    window: int = 50
    nan: bool = True
    lr_factor: float = 0.5
    skip_batches: bool = True
    max_attempts: int = 3
    keep_good: int = 2
    every: int | None = None
    warmup: int | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise InvalidArgument(f"Guard.metric must be a metric name, got {self.metric!r}")
        _number("spike", self.spike, low=1.0, strict=True)
        _number("lr_factor", self.lr_factor, low=0.0, high=1.0, strict=True)
        _count("window", self.window, 1)
        _count("max_attempts", self.max_attempts, 0)
        _count("keep_good", self.keep_good, 1)
        if self.every is not None:
            _count("every", self.every, 1)
        if self.warmup is not None:
            _count("warmup", self.warmup, 0)
        for name in ("nan", "skip_batches", "enabled"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"Guard.{name} must be True or False")

    @property
    def checkpoint_every(self) -> int:
        """Steps between the guard's checkpoints."""
        return self.every if self.every is not None else self.window

    @property
    def warmup_values(self) -> int:
        """Healthy values seen before a spike can trigger (NaN/inf trigger at once)."""
        return self.warmup if self.warmup is not None else min(10, self.window)


def _number(name: str, value: Any, *, low: float, high: float = math.inf, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"Guard.{name} must be a finite number, got {value!r}")
    if (value <= low if strict else value < low) or value > high:
        upper = "" if high == math.inf else f" and at most {high:g}"
        raise InvalidArgument(f"Guard.{name} must be above {low:g}{upper}, got {value!r}")


def _count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidArgument(f"Guard.{name} must be an int of at least {low}, got {value!r}")


def guard_config(guard: Any) -> Guard | None:
    """``retune.init(guard=...)``: ``True`` is :class:`Guard` with its defaults, ``False`` /
    ``None`` no guard, a :class:`Guard` itself; anything else raises ``InvalidArgument``."""
    if guard is None or guard is False:
        return None
    if guard is True:
        return Guard()
    if isinstance(guard, Guard):
        return guard
    raise InvalidArgument(f"guard must be True, False or retune.Guard(...), got {guard!r:.60}")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class GuardRuntime:
    """The guard of one live run (training thread only, except :meth:`observe`'s caller,
    which is the training thread too)."""

    def __init__(self, run: GuardedRun, config: Guard) -> None:
        self.run = run
        self.config = config
        self.key = config.metric
        self.enabled = config.enabled
        self.spike = float(config.spike)
        self.nan = config.nan
        self.lr_factor = float(config.lr_factor)
        self.skip_batches = config.skip_batches
        self.max_attempts = config.max_attempts
        self.window = config.window
        self.every = config.checkpoint_every
        self.warmup = config.warmup_values
        self.alpha = 2.0 / (config.window + 1)
        self.level = 0.0  # the metric's robust level
        self.seen = 0  # healthy values folded into the level
        self.healthy = 0  # healthy values since the last trigger
        self.attempts = 0  # recoveries since the last healthy window
        self.tripped: str | None = None  # the reason of a trigger not handled yet
        self.next_due = 0  # global step of the next guard checkpoint
        self.good: list[CheckpointRecord] = []  # confirmed last-good, oldest first
        self.pending: CheckpointRecord | None = None  # taken, not confirmed yet
        self.used: set[int] = set()  # checkpoint ids a recovery restored (never deleted)
        self.last_node: int | None = None  # the node of the guard's last action
        self.last_left: CheckpointRecord | None = None  # the state that action left
        self.last_reason: str | None = None
        self.effect: dict[str, Any] | None = None  # the last action, for other ranks to replay

    # -- attaching --------------------------------------------------------------------------
    def attach(self, *, record: bool = True) -> None:
        """Register the guard's knobs and its checkpointed state on the run (``record``: write
        the knobs to the store; a follower rank of a distributed job writes nothing)."""
        from retune.control import Knob

        run = self.run
        bounds: dict[str, tuple[float | None, float | None]] = {
            "guard": (None, None),
            "guard_spike": (1.0, None),  # above 1
            "guard_lr_factor": (0.0, 1.0),  # above 0, at most 1
            "guard_max_attempts": (0, None),
            "guard_skip": (None, None),
        }
        above_low = {"guard_spike", "guard_lr_factor"}
        docs = {
            "guard": "the guard is on",
            "guard_spike": "trigger above spike x the metric's level",
            "guard_lr_factor": "lr multiplier per recovery",
            "guard_max_attempts": "recoveries before the run pauses",
            "guard_skip": "skip the batches between the checkpoint and the trigger",
        }
        for name, attribute in GUARD_KNOBS.items():
            run.tunables.add(
                Knob(
                    name,
                    get=self._getter(attribute),
                    set=self._setter(attribute),
                    bounds=bounds[name],
                    inclusive=(name not in above_low, True),
                    doc=docs[name],
                )
            )
        if record:  # as run.tunable() does: the knobs, and their values on the current node
            run.publish_tunables()
        run.add_state(_PART, self._capture, self._load)

    def _getter(self, attribute: str) -> Any:
        return lambda: getattr(self, attribute)

    def _setter(self, attribute: str) -> Any:
        def assign(value: Any) -> None:  # validated against the knob's bounds already
            if attribute in ("enabled", "skip_batches"):
                value = bool(value)
            elif attribute == "max_attempts":
                value = int(value)
            else:
                value = float(value)
            setattr(self, attribute, value)

        return assign

    def settings(self) -> dict[str, Any]:
        """The live settings (knob values), which a rollback must not undo."""
        return {a: getattr(self, a) for a in GUARD_KNOBS.values()}

    def _capture(self) -> dict[str, Any]:
        return {"level": self.level, "seen": self.seen}

    def _load(self, value: Any) -> None:
        if isinstance(value, Mapping):
            self.level = float(value.get("level", 0.0))
            self.seen = int(value.get("seen", 0))

    # -- the hot path -----------------------------------------------------------------------
    def observe(self, step: int, values: Mapping[str, Any]) -> bool:
        """Fold this step's metric in; True when the boundary has work (a trigger, or a guard
        checkpoint due). Called by ``run.step()`` once the values were accepted (numbers:
        floats, or what ``float()`` takes)."""
        value = values.get(self.key)
        if value is not None:
            if type(value) is not float:
                value = float(value)  # a tensor or numpy scalar: the step accepted it already
            if value - value != 0.0:  # NaN or +-inf
                if self.nan and self.enabled:
                    self.tripped = f"{self.key} {_fmt(value)} at step {step}"
                    return True
            elif self.seen >= self.warmup and 0.0 < self.level < value / self.spike:
                if self.enabled:
                    self.tripped = (
                        f"{self.key} {_fmt(value)} > {_fmt(self.spike)} x "
                        f"{_fmt(self.level)} at step {step}"
                    )
                    return True
            else:
                if self.seen < self.window:
                    self.seen += 1
                    self.level += (value - self.level) / self.seen
                else:
                    self.level += self.alpha * (value - self.level)
                self.healthy += 1
        return step >= self.next_due

    # -- the step boundary ------------------------------------------------------------------
    def at_boundary(self) -> None:
        """Recover from a trigger, or take the guard checkpoint that is due (training thread).
        Idle while an exploration runs: it restores its own start state per candidate and
        scores a diverging candidate itself."""
        if getattr(self.run, "exploration", None) is not None:
            self.tripped = None
            return
        if self.tripped is not None:
            reason, self.tripped = self.tripped, None
            if self.enabled:
                self._recover(reason)
            return
        step = self.run.global_step
        if step < self.next_due:
            return
        self.next_due = step + self.every
        if not self.enabled:
            return
        if self.attempts and self.healthy >= self.window:
            self.attempts = 0  # a healthy window: the streak is over
        if self.pending is not None:
            self.good.append(self.pending)
            self.pending = None
            while len(self.good) > self.config.keep_good:
                self._drop(self.good.pop(0))
        try:
            self.pending = self.run.checkpointer.save("guard")
        except RetuneError as e:  # no new last-good point this time; training goes on
            log.warning("retune: the guard's checkpoint at step %d was not saved: %s", step, e)

    def _drop(self, record: CheckpointRecord) -> None:
        if record.id not in self.used:
            self.run.store.delete_checkpoints(self.run.id, [record.id])

    def forget(self) -> None:
        """A person moved the run to another state (restore): the last-good checkpoints belong
        to another history, so the guard stops using them (they stay listed: the person may
        have restored one) and collects new ones from here."""
        self.attempts = 0
        self.good, self.pending = [], None
        self.next_due = 0

    def on_change(self, kind: str) -> None:
        """A person's ``set`` / ``scale`` / ``restore`` (not the guard's own): reset the
        attempt count; after a restore, forget the last-good checkpoints."""
        if kind == "restore":
            self.forget()
        elif kind in ("set", "scale"):
            self.attempts = 0

    # -- recovering -------------------------------------------------------------------------
    def _target(self) -> CheckpointRecord | None:
        if not self.good:
            return None
        return self.good[-min(self.attempts + 1, len(self.good))]

    def _recover(self, reason: str) -> None:
        run = self.run
        trigger_step = run.global_step
        self.healthy = 0
        if self.pending is not None:  # taken shortly before the trouble: not trusted
            self._drop(self.pending)
            self.pending = None
        give_up = self.attempts >= self.max_attempts
        target = self.good[-1] if give_up and self.good else self._target()
        if target is None:
            self._pause(reason, "no last-good checkpoint yet", trigger_step)
            return
        try:
            state = run.checkpointer.load(target)
        except RetuneError as e:
            self.good.remove(target)
            self._pause(reason, f"last-good checkpoint {target.label} unusable: {e}", trigger_step)
            return
        if not give_up:
            self.attempts += 1
        try:
            left = run.checkpointer.save("change")  # the state being left: a veto goes back here
        except RetuneError as e:
            self._pause(reason, f"the state being left could not be saved: {e}", trigger_step)
            return
        left_node = run.node
        trouble = run.loop_state()
        settings = self.settings()
        try:
            run.load_state(state)
        except Exception as e:  # a state part refused it: back to the state it found
            put_back(run, left)
            why = f"loading {target.label} failed ({type(e).__name__}: {e})"[:300]
            self._pause(reason, why, trigger_step)
            return
        for attribute, value in settings.items():
            setattr(self, attribute, value)  # a rollback never undoes the guard's knobs
        diff: dict[str, Any] = {}
        notes: list[str] = []
        factor = self.lr_factor**self.attempts
        if not give_up and factor != 1.0:
            if any(spec.name == "lr" for spec in run.tunables.specs):
                try:
                    diff = run.tunables.scale({"lr": factor})
                except CommandRejected as e:
                    notes.append(f"lr not lowered: {e}")
            else:
                notes.append("lr not lowered: the run has no optimizer lr")
        skipped = self._skip(trouble, notes)
        run.flush()
        run.store.end_node(run.id, left_node, trigger_step)
        run.start_node("guard", diff, "guard", parent=target.node)
        action = "paused" if give_up else "recovered"
        record: dict[str, Any] = {
            "action": action,
            "reason": reason,
            "trigger_step": trigger_step,
            "attempt": self.attempts,
            "max_attempts": self.max_attempts,
            "restored": target.label,
            "restored_step": target.step,
            "left": left.label,
            "left_node": left_node,
            "lr_factor": 1.0 if give_up else factor,
            "diff": diff,
            "skipped": skipped,
        }
        if notes:
            record["notes"] = notes
        self.used.add(target.id)
        self.last_node, self.last_left, self.last_reason = run.node, left, reason
        self.next_due = run.global_step + self.every
        self.effect = {
            "checkpoint": target.label,
            "lr_factor": factor if diff else None,
            "skip_to": skipped.get("to"),
        }
        if give_up:
            record["message"] = self._give_up_message(reason)
        run.store.update_node_info(run.id, run.node, {"guard": record})
        self._audit(record)
        if give_up:  # last: whoever sees the run paused finds the reason recorded
            self._set_paused()

    def _give_up_message(self, reason: str) -> str:
        return (
            f"guard paused the run: {reason}, after {self.attempts} recoveries without a healthy "
            "window; `retune set RUN lr=...` then `retune continue RUN` resumes it"
        )

    def _skip(self, trouble: dict[str, int], notes: list[str]) -> dict[str, Any]:
        """Move the data position past the batches the restored branch would replay."""
        run = self.run
        restored = run.loop_state()
        start = (restored["epoch"], restored["batch"])
        end = (trouble["epoch"], trouble["batch"])
        if not self.skip_batches:
            return {"count": 0, "batches": []}
        if not run.loop.iterating:
            notes.append("batches not skipped: the loop does not iterate run.batches()")
            return {"count": 0, "batches": []}
        if end <= start:
            return {"count": 0, "batches": []}
        per_epoch = run.loop.epoch_batches
        batches: list[list[int]] = []
        epoch, batch = start
        while (epoch, batch) < end:
            if per_epoch is not None and batch >= per_epoch:
                epoch, batch = epoch + 1, 0
                continue
            batches.append([epoch, batch])
            batch += 1
        run.set_loop_state({**restored, "epoch": end[0], "batch": end[1]})
        return {"count": len(batches), "from": list(start), "to": list(end), "batches": batches}

    def _pause(self, reason: str, why: str, step: int) -> None:
        """No recovery possible: pause where the run is, saying why."""
        run = self.run
        message = f"guard paused the run: {reason}; {why}"
        record = {"action": "paused", "reason": reason, "trigger_step": step, "message": message}
        self.effect = {"checkpoint": None, "lr_factor": None, "skip_to": None}
        run.store.update_node_info(run.id, run.node, {"guard": record})
        self.last_reason = reason
        self._audit(record)
        self._set_paused()  # last: whoever sees the run paused finds the reason recorded

    def _set_paused(self) -> None:
        self.run.flags.paused = True
        self.run.store.update_run(self.run.id, status="paused")

    def _audit(self, record: dict[str, Any]) -> None:
        """One command record (kind ``guard``, source ``guard``), applied at this step."""
        run = self.run
        store = run.store
        payload = {"action": record["action"], "reason": record["reason"]}
        command = store.submit_command(run.id, "guard", payload, source="guard", user="guard")
        claimed = store.claim_command(command.id)
        if claimed is not None:
            result = {k: v for k, v in record.items() if k != "skipped"}
            result["skipped"] = record.get("skipped", {}).get("count", 0)
            store.resolve_command(
                claimed.id,
                status="applied",
                reason=None,
                applied_step=run.global_step,
                node=run.node,
                result=result,
            )
        store.add_event(run.id, f"guard_{record['action']}", record, node=run.node,
                        step=run.global_step)  # fmt: skip

    # -- what a person does -----------------------------------------------------------------
    def command(self, command: CommandRecord) -> dict[str, Any]:
        """Apply a ``guard`` command (on, off, veto, set); raises ``CommandRejected``."""
        payload = command.payload
        action = payload.get("action")
        run = self.run
        if action == "on":
            self.enabled = True
            self.next_due = 0
        elif action == "off":
            self.enabled = False
        elif action == "set":
            values = payload.get("values") or {}
            diff = run.tunables.set(values)
            run.store.update_run(run.id, tunables=run.tunables.records())
            return {"diff": diff}
        elif action == "veto":
            return self._veto(command)
        else:
            raise CommandRejected(f"guard actions are {', '.join(GUARD_ACTIONS)}, got {action!r}")
        run.store.update_run(run.id, tunables=run.tunables.records())
        return {"enabled": self.enabled}

    def _veto(self, command: CommandRecord) -> dict[str, Any]:
        """Undo the guard's last recovery: back to the state it left, guard switched off."""
        run = self.run
        left = self.last_left
        if left is None or self.last_node is None:
            raise CommandRejected("the guard has no recovery to veto on this run")
        if run.node != self.last_node:
            raise CommandRejected(
                f"the guard's last recovery (n{self.last_node}) is no longer the current node; "
                "restore a checkpoint instead"
            )
        try:
            state = run.checkpointer.load(left)
        except RetuneError as e:
            raise CommandRejected(str(e)) from e
        settings = self.settings()
        from_node, from_step = run.node, run.global_step
        run.load_state(state)
        for attribute, value in settings.items():
            setattr(self, attribute, value)
        self.enabled = False
        self.attempts = 0
        self.last_node = self.last_left = None
        run.flush()
        run.store.end_node(run.id, from_node, from_step)
        run.start_node("restore", {}, command.user, parent=left.node)
        info = {
            "action": "vetoed",
            "reason": f"veto of the guard's recovery n{from_node} ({self.last_reason})",
            "restored": left.label,
            "vetoed_node": from_node,
        }
        run.store.update_node_info(run.id, run.node, {"guard": info})
        if run.flags.paused:
            run.flags.paused = False
            run.store.update_run(run.id, status="running")
        run.store.update_run(run.id, tunables=run.tunables.records())
        return {"checkpoint": left.label, "vetoed": f"n{from_node}", "enabled": False}

    # -- a follower rank of a distributed job --------------------------------------------------
    def replay(self, payload: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Do what rank 0's guard did (a recovery, or a ``guard`` command), on this rank:
        the same checkpoint (this rank's RNG from it), lr factor, data position and switch."""
        run = self.run
        action = payload.get("action")
        self.tripped = None
        self.healthy = 0
        if action == "on":
            self.enabled = True
        elif action == "off":
            self.enabled = False
        elif action == "set":
            run.tunables.set(payload.get("values") or {})
        elif action in ("recover", "veto"):
            label = result.get("checkpoint")
            if label:
                from retune.checkpoint import resolve_checkpoint

                record = resolve_checkpoint(run.store, run.id, str(label))
                settings = self.settings()
                run.load_state(run.checkpointer.load(record))
                for attribute, value in settings.items():
                    setattr(self, attribute, value)
            factor = result.get("lr_factor")
            if factor:
                run.tunables.scale({"lr": float(factor)})
            skip_to = result.get("skip_to")
            if skip_to:
                run.set_loop_state({**run.loop_state(), "epoch": skip_to[0], "batch": skip_to[1]})
            if action == "veto":
                self.enabled = False
        else:
            raise CommandRejected(f"rank 0's guard did {action!r}, which this rank cannot")

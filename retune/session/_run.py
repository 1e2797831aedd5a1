"""The run handle: what the training script holds and calls every step.

``Run`` is the facade (identity, tunables, checkpoints, the tree, ending) and the hot path
(``step()``). What commands do lives in ``_handlers`` behind the small ``TrainingSession``
interface that ``Run`` implements; the Applier (``_control``) claims and dispatches them.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from retune.control import Knob, LiveTunables, TunableValues
from retune.errors import InvalidArgument, RetuneError, StopTraining, StoreError
from retune.session import _lifecycle, _steer
from retune.session._checkpointer import Checkpointer, CheckpointPolicy, PendingCheckpoint
from retune.session._control import Applier
from retune.session._handlers import HANDLERS
from retune.session._loop import LoopPosition
from retune.session._protocols import ActiveExploration, SessionFlags
from retune.session._snapshot import RunSnapshot, read_snapshot
from retune.session._state import apply_state
from retune.session._tree import TreeNode
from retune.session._writer import NO_GROUP, Group, MetricWriter
from retune.store import CheckpointRecord, CommandRecord, RunRecord, Store, open_store

if TYPE_CHECKING:
    from retune.session._guard import GuardRuntime

__all__ = ["Run"]

_now = time.time
"""The wall clock of every point (a module global: one lookup less per step than
``time.time``)."""

log = logging.getLogger("retune")

_NEVER = 2**62  # a step no run reaches: no scheduled checkpoint
_MAX_KEY = 255  # the store's metric key column


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"metric names must be non-empty strings, got {key!r:.60}")
    if len(key) > _MAX_KEY:
        raise InvalidArgument(f"metric name {key[:40]!r}... is longer than {_MAX_KEY} characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"metric name {key!r:.60} is not valid text: {e.reason}") from e
    if "\x00" in key:
        raise InvalidArgument(f"metric name {key!r:.60} contains a NUL character")
    return key


def _coerce_metrics(metrics: Mapping[Any, Any]) -> dict[str, float]:
    """Check every name and turn every value into a float (tensors, numpy scalars, bools,
    ints within float range) or raise ``InvalidArgument`` naming the bad one."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        _check_key(key)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
            raise InvalidArgument(
                f"metric {key!r} must be a number, got {type(value).__name__} {value!r:.60}"
            )
        try:
            out[key] = float(value)
        except OverflowError as e:
            raise InvalidArgument(
                f"metric {key!r} is too large for a float (64-bit): {str(value)[:20]}..."
            ) from e
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidArgument(f"metric {key!r} must be a single number: {e}") from e
    return out


def _floats(values: Mapping[str, Any]) -> dict[str, float]:
    """A call's values (already accepted by the buffer) as floats, for the exploration."""
    return {key: float(value) for key, value in values.items()}


def _port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (a quick bind probe)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _merged(metrics: Any, kwargs: dict[str, Any]) -> dict[Any, Any]:
    if metrics is None:
        return kwargs
    if not isinstance(metrics, Mapping):
        raise InvalidArgument(
            f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}"
        )
    return {**metrics, **kwargs}


class Run:
    """A training run being recorded. Create it with :func:`retune.init`.

    Call :meth:`step` once per optimizer step (from the training thread) and :meth:`log` for
    metrics of the current step; end with :meth:`finish` or use the run as a context manager.
    ``step()`` only appends to an in-memory buffer; a background thread writes batches.
    """

    _kept_ends: frozenset[str] = frozenset()
    """Statuses the run's own end does not overwrite (a distributed run's rank 0 keeps the
    crash another rank recorded first)."""

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
        self.state_parts: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        """Named extra state (see :meth:`add_state`), captured in every checkpoint."""
        self.unclaimed_parts: dict[str, Any] = {}
        """Parts of the last loaded checkpoint no :meth:`add_state` has claimed yet."""
        self.flags = SessionFlags()
        self.exploration: ActiveExploration | None = None
        self.loop = LoopPosition(data_seed)
        self.loop.should_stop = lambda: self.flags.stop_requested
        self.loop.on_epoch_end = self._on_epoch_end
        self.checkpointer = Checkpointer(self, objects_url, policy)
        self._next_checkpoint = policy.every_n_steps or _NEVER
        # step() calls _at_boundary() once the step reaches this: the first step (to learn
        # the training thread), scheduled checkpoints, signals, and every step after a stop
        self._next_boundary = 0
        self.training_thread: threading.Thread | None = None
        self._signal = 0  # SIGTERM / SIGINT to act on at the next boundary
        self._stopped_here = False  # the stop was checkpointed; later steps raise
        self.ui_server: Any = None  # the dashboard served by retune.init(..., ui=True)
        self._ui_store: Store | None = None
        self._ended = False
        self._ending_pending = False  # finish() could not write the end: retried at exit
        self._poll_interval = poll_interval
        self._end_lock = threading.Lock()
        self._applier = Applier(dict(HANDLERS))
        self._inbox = self._applier.inbox
        self._live_records: list[dict[str, Any]] | None = None
        self.guard: GuardRuntime | None = None  # set by retune.init(..., guard=...)
        self._writer = self._open_writer(flush_interval, poll_interval)
        self._columns = self._writer.columns(node)  # this node's metric buffers
        self._group = NO_GROUP  # the group of the names the last call logged
        _lifecycle.track(self)

    def _open_writer(self, flush_interval: float, poll_interval: float) -> MetricWriter:
        """The background writer of this run's metrics, heartbeat and command polls (a rank
        other than 0 of a distributed job opens its own: see ``_distributed``)."""
        return MetricWriter(
            self.store,
            self.id,
            flush_interval=flush_interval,
            poll_interval=poll_interval,
            progress=lambda: self._step,
            tick=lambda: self._applier.poll(self),
            after_flush=self._after_flush,
        )

    def _after_flush(self) -> None:
        """The writer thread, after each flush: the live tunables, and any resolution of an
        applied command the store refused before (it is up again: the flush went through)."""
        self._refresh_tunables()
        self._applier.settle(self.store)

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
    def hp(self) -> TunableValues:
        """Every tunable's current value: user knobs (``run.hp.clip_norm``,
        ``run.hp["clip_norm"]``) and optimizer values per param group (``run.hp["lr"]`` is a
        list). A table in a notebook."""
        return self.tunables.hp

    @property
    def ended(self) -> bool:
        return self._ended

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, id={self.id!r}, step={self._step})"

    # -- hot path ---------------------------------------------------------------------------
    def step(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> int:
        """Complete one global step and record its metrics; returns the run's step after it
        (from 1): the step just completed or, when a restore (a command, the guard, an
        exploration) was applied at this step's boundary, the step it went back to.

        Values must be numbers (floats, ints, one-element tensors, numpy scalars); NaN and inf
        are kept and flagged. Metrics may be given as keywords or, for names that are not
        identifiers (``"val/loss"``), as a mapping. A bad name (not a non-empty string, not
        valid text, over 255 characters) or value (not a number, an int beyond float range)
        raises ``InvalidArgument`` and records nothing. Names already seen are not checked
        again, which keeps this call around a microsecond.
        """
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        values = kwargs if metrics is None else _merged(metrics, kwargs)
        step = self._step + 1
        if values:
            group = self._group
            if len(values) == group.width:  # likely the names of the last call (take checks)
                try:  # pack converts what float() would (or raises), then one atomic append
                    group.values.frombytes(group.pack(*group.take(values)))  # KeyError: names
                    group.times.append(_now())
                    group.steps.append(step)  # last: the call is complete for the writer
                except BaseException as e:  # nothing half-recorded stays, Ctrl-C included
                    self._writer.undo_partial(group)
                    if not isinstance(e, Exception):
                        raise
                    self._append(step, values)  # other names, or the full check says why
            else:
                self._append(step, values)
        self._step = step
        guard = self.guard
        tripped = guard is not None and guard.observe(step, values)
        if tripped or self._inbox or step >= self._next_boundary:
            self._at_boundary(values)
            return self._step  # a restore applied at this boundary moved it back
        return step

    def _append(self, step: int, values: Mapping[Any, Any]) -> None:
        """Append a call whose names differ from the last call's: names seen together before
        (this node) are not checked again; anything else is checked whole first
        (``InvalidArgument``, nothing recorded)."""
        group = self._columns.groups.get(tuple(values))
        if group is None or not self._put(group, step, values):
            checked = self._checked(values)
            group = self._columns.group(tuple(checked))
            self._put(group, step, checked)  # checked floats: only Ctrl-C can interrupt it
        self._group = group

    def _put(self, group: Group, step: int, values: Mapping[Any, Any]) -> bool:
        """Append one call to ``group``, whole or not at all; False when a value is refused
        (re-raises Ctrl-C and the like after undoing the part appended). :meth:`step` repeats
        these lines inline on purpose: a method call would cost ~5% of its time."""
        try:
            group.values.frombytes(group.pack(*values.values()))  # converted, then atomic
            group.times.append(_now())
            group.steps.append(step)
        except BaseException as e:
            self._writer.undo_partial(group)
            if not isinstance(e, Exception):
                raise
            return False
        return True

    def _checked(self, values: Mapping[Any, Any]) -> dict[str, float]:
        return _coerce_metrics(values)

    # -- the step boundary ------------------------------------------------------------------
    def _at_boundary(self, values: Mapping[str, Any]) -> None:
        """Scheduled checkpoint; the exploration's step; queued commands; hold while paused;
        the stop (checkpointed)."""
        if self.training_thread is None:
            self.training_thread = threading.current_thread()
        if self.guard is not None:
            self.guard.at_boundary()  # a recovery, or the guard's checkpoint that is due
        scheduled: PendingCheckpoint | None = None
        if self._step >= self._next_checkpoint:
            every = self.checkpointer.policy.every_n_steps or _NEVER
            self._next_checkpoint = (self._step // every + 1) * every
            scheduled = self.checkpointer.save_async("schedule")  # written in the background
        saved = scheduled is not None
        self._reschedule()
        if self.exploration is not None:
            saved = False  # it may have restored another state
            self.exploration.after_step(_floats(values))
        if self._inbox:
            saved = False  # a command may change the state after the scheduled checkpoint
            self._applier.apply_pending(self)
        self._reschedule()  # an exploration began or ended
        while self.flags.paused and not self.flags.stop_requested and not self._signal:
            if self._applier.wake.wait(self._poll_interval):
                self._applier.wake.clear()
            if self._inbox:
                saved = False
                self._applier.apply_pending(self)
        if self._signal or self.flags.stop_requested:
            if saved and scheduled is not None:  # the stop relies on it: it must be listed
                saved = scheduled.wait() is not None
            self._stop_here(already_saved=saved)

    def _reschedule(self) -> None:
        if (
            self.training_thread is None
            or self._signal
            or self._stopped_here
            or self.exploration is not None  # it counts every step
        ):
            self._next_boundary = 0
        else:
            self._next_boundary = self._next_checkpoint

    def _stop_here(self, *, already_saved: bool) -> None:
        """End training at this boundary: checkpoint first (so resume continues from here),
        then raise what the stop asks for. Inside ``run.epochs()``/``run.batches()`` a stop
        command returns instead, and the loops end."""
        first = not self._stopped_here
        if first:
            self._stopped_here = True
            self._next_boundary = 0  # any later step() comes back here and raises
            if not already_saved:
                try:
                    self.checkpointer.save("stop")
                except RetuneError as e:
                    log.warning("retune: no checkpoint at the stop (step %d): %s", self._step, e)
            self._stop_checkpointed()
        signum, self._signal = self._signal, 0
        if signum:
            self.flags.stop_requested = True
            _lifecycle.cancel_grace()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        if first and self.loop.iterating:
            return
        raise StopTraining(f"run {self.name} ({self.id}) stopped at step {self._step}")

    def _stop_checkpointed(self) -> None:
        """The stop's checkpoint is listed (or failed, and said so): a hook for the ranks of a
        job, which wait for it together."""

    def _stop_at_boundary(self, signum: int) -> bool:
        """Called by the signal handler (main thread): stop at the next boundary. Returns True
        when this run trains on the main thread, so the handler need not interrupt it."""
        if self._ended or self.training_thread is None:
            return False
        if self.training_thread is threading.main_thread():
            self._signal = signum
            self._next_boundary = 0
            return True
        if signum == signal.SIGTERM:  # the process is going away: stop the other thread too
            self.flags.stop_requested = True
            self._next_boundary = 0
        return False

    @property
    def should_stop(self) -> bool:
        """True once a ``stop`` command was applied (``step()`` then raises StopTraining)."""
        return self.flags.stop_requested

    # -- what command handlers use (the TrainingSession interface) --------------------------
    def start_node(
        self,
        kind: str,
        diff: dict[str, Any],
        who: str | None,
        *,
        parent: int | None = None,
        close_current: bool = True,
    ) -> None:
        """Close the current node and open a child (of ``parent``, default the current node)
        starting at the current step, with the current values."""
        if self.guard is not None and kind != "guard":
            self.guard.on_change(kind)  # a person's change resets the guard's attempts
        if close_current:
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
        self._set_node(node.id)
        self._live_records = self.tunables.records()
        self.store.update_run(self.id, tunables=self._live_records)

    def _set_node(self, node: int) -> None:
        """Train on ``node`` from now: its points go to fresh columns."""
        self._node = node
        self._columns = self._writer.columns(node)
        self._group = NO_GROUP

    def loop_state(self) -> dict[str, int]:
        """Epoch, batch, data seed and global step, as a checkpoint stores them."""
        return {**self.loop.state_dict(), "step": self._step}

    def set_loop_state(self, state: dict[str, int]) -> None:
        """Move the loop position and the global step (a restore or a resume)."""
        self.loop.load_state_dict(state)
        self._step = int(state["step"])
        every = self.checkpointer.policy.every_n_steps
        self._next_checkpoint = (self._step // every + 1) * every if every else _NEVER
        self._reschedule()

    # the names the state capture (``_state``) calls
    _loop_state = loop_state
    _set_loop_state = set_loop_state

    def add_state(self, name: str, capture: Callable[[], Any], load: Callable[[Any], None]) -> None:
        """Checkpoint more state under ``name``: what a framework's loop or a callback keeps.

        Every checkpoint calls ``capture()`` (training thread, at a step boundary); it must
        return a state tree (tensors, arrays, numbers, strings, lists, dicts: no objects).
        A restore or a resume calls ``load(value)`` after the model, optimizer, scheduler,
        RNG and loop position are back, with the value captured then; a checkpoint taken
        before ``name`` was added leaves it alone. If ``load`` raises, a restore puts back the
        state from before it and is rejected with the reason. Integrations use this for their
        loop progress and callback states.

        A resume loads its checkpoint inside :func:`retune.init`, before parts can be added:
        adding a part the resumed checkpoint holds calls ``load`` with it at once.
        """
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"a state part needs a non-empty name, got {name!r}")
        if not callable(capture) or not callable(load):
            raise InvalidArgument(f"state part {name!r} needs callable capture and load")
        self.state_parts[name] = (capture, load)
        if name in self.unclaimed_parts:
            load(self.unclaimed_parts.pop(name))

    def load_state(self, state: Any) -> None:
        """Put a decoded checkpoint state into the live objects (training thread only)."""
        apply_state(self, state)

    def _refresh_tunables(self) -> None:
        """After a flush (writer thread): store the optimizer's live values when they moved
        (a scheduler changing lr), so ``retune get`` and the control panel show them."""
        try:
            current = self.tunables.live_records()
            if current != self._live_records:
                self.store.update_run(self.id, tunables=current)
                self._live_records = current
        except RetuneError as e:
            log.debug("retune: live tunable values not written: %s", e)
        except Exception as e:  # a param group changing under us: next flush tries again
            log.debug("retune: live tunable values not read: %s", e)

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
        inclusive: tuple[bool, bool] = (True, True),
    ) -> Knob:
        """Declare a knob commands may change; returns it (``knob.value`` is always current).

        ``run.tunable("clip_norm", 1.0, bounds=(0, None))`` holds the value (read it as
        ``run.hp.clip_norm``); ``run.tunable("dropout", get=..., set=..., bounds=(0, 1))``
        wraps any getter/setter. Bounds are numbers or None, low <= high, inclusive unless
        ``inclusive`` says otherwise (``inclusive=(False, True)``: above low, at most high);
        values must be finite. A bad declaration raises ``InvalidArgument`` saying why.
        """
        knob = Knob(name, initial, get=get, set=set, bounds=bounds, inclusive=inclusive,
                    kind=kind, doc=doc)  # fmt: skip
        self.tunables.add(knob)
        self.publish_tunables()
        return knob

    def resolve_applied(
        self, command_id: int, *, step: int, node: int, result: dict[str, Any]
    ) -> None:
        """Record a command applied at ``step`` on ``node`` once its work has ended (a change
        whose checkpoint was written in the background); any thread, never raises: what the
        store refuses is written after a later flush, or by :meth:`finish`."""
        self._applier.resolve_applied(self.store, command_id, step=step, node=node, result=result)

    def publish_tunables(self) -> None:
        """Store the declared tunables with their values, so commands are validated against
        them, and a knob declared after the current node began among the node's values (its
        value at the node's start: the start node of ``retune.init`` then ``run.tunable``
        records it too). ``run.tunable()`` calls it; call it after adding knobs with
        ``run.tunables.add()`` (integrations do). A rank other than 0 of a distributed job
        records nothing: rank 0 does."""
        self._live_records = records = self.tunables.records()
        self.store.update_run(self.id, tunables=records)
        values = {record["name"]: record["value"] for record in records}  # read once, above
        self.store.add_node_values(self.id, self._node, values)

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
        timeout: float = 120.0,
        **values: Any,
    ) -> CommandRecord:
        """Go back to a checkpoint, on a new branch, optionally with new values:
        ``run.restore("n2@300", lr=3e-4)`` (or ``set={"lr": 3e-4}``).

        ``target`` is ``c3``, ``latest``, a node ``n3`` or ``n3@1200``. From the training
        thread (between steps) it is applied at once; from another thread (a notebook cell
        while training runs in the background) it is applied at the next step boundary and
        this call waits for that (see ``retune.session._steer``). Returns the applied command;
        raises ``CommandRejected`` with the reason when it cannot be done (nothing changes).
        """
        from retune.control._commands import restore_payload

        payload = restore_payload(target, {**(set or {}), **values}, group, mode)
        return self._send("restore", payload, timeout)

    def set(
        self,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        group: int | str | None = None,
        mode: str = "rescale",
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> CommandRecord:
        """Set tunables to new values: ``run.set(lr=1e-3)``; a new node from the next step.

        The same command path as ``retune set`` (validated at submission and against the live
        optimizer, recorded, applied at a step boundary; see :meth:`restore` for where and
        when). ``group`` picks one param group; ``mode`` is what an attached LR scheduler does
        (``rescale`` keeps its shape, ``constant`` holds the value). Names that clash with the
        keywords go in ``values``. Returns the applied command or raises ``CommandRejected``.
        """
        payload = {"values": {**(values or {}), **kwargs}, "group": group, "mode": mode}
        return self._send("set", payload, timeout)

    def scale(
        self,
        factors: Mapping[str, float] | None = None,
        /,
        *,
        group: int | str | None = None,
        mode: str = "rescale",
        timeout: float = 60.0,
        **kwargs: float,
    ) -> CommandRecord:
        """Multiply tunables (per group, keeping their ratios): ``run.scale(lr=0.5)``; like
        :meth:`set` otherwise."""
        payload = {"factors": {**(factors or {}), **kwargs}, "group": group, "mode": mode}
        return self._send("scale", payload, timeout)

    def request_stop(self) -> None:
        """Ask the training thread to stop cleanly at its next step boundary (any thread, a
        signal handler too; no command is recorded). There it checkpoints and ``step()``
        raises ``StopTraining`` (``run.epochs()``/``run.batches()`` end instead). The flag is
        set before the boundary is moved, so a boundary running meanwhile cannot miss it."""
        self.flags.stop_requested = True
        self._next_boundary = 0

    # -- notebooks (retune[notebook]) -------------------------------------------------------
    def start(self, train: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``train(run, *args, **kwargs)`` in a background thread; returns a
        :class:`retune.notebook.Job` at once (see there; ``total=`` gives the expected
        number of steps for a progress bar). Made for Jupyter: cells stay free to
        ``run.set(...)``, ``run.plot(...)``, ``job.stop()``."""
        from retune.notebook import start

        return start(train, self, *args, **kwargs)

    def plot(self, *keys: str, **options: Any) -> Any:
        """A live chart of metrics ``keys`` (all when none), branches overlaid, a marker at
        each change; keeps updating while the run trains (:func:`retune.notebook.plot_metric`)."""
        from retune.notebook import plot_metric

        return plot_metric(self, *keys, **options)

    def dashboard(self, port: int = 8765, *, height: int = 720) -> Any:
        """The dashboard page of this run, served from this process, as an inline frame."""
        from retune.notebook import dashboard

        return dashboard(self, port=port, height=height)

    def explore(
        self,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        steps: int,
        metric: str,
        goal: str = "min",
        score: str = "last",
        start: str | None = None,
        then: str = "best",
        max_candidates: int | None = None,
        group: int | str | None = None,
        mode: str = "rescale",
        **kwargs: Any,
    ) -> CommandRecord:
        """Queue an exploration: ``run.explore(lr=[1e-3, 3e-4, 1e-4], steps=300,
        metric="val_loss")``. Returns the command, ``pending``: the training loop runs it
        from its next step boundary on (each candidate restored from one checkpoint, trained
        ``steps`` steps, scored), then continues from the best (``then="best"``) or from
        where it was (``then="stay"``). Any thread may call it; read the progress with
        ``retune.connect(run).exploration(command.id)``. A bad spec raises
        ``CommandRejected`` with the reason (nothing changes). See ``docs/explore.md``.
        """
        from retune.control._commands import explore_payload, submit
        from retune.session._steer import command_source

        payload = explore_payload(
            {**(values or {}), **kwargs},
            steps=steps,
            metric=metric,
            goal=goal,
            score=score,
            start=start,
            then=then,
            max_candidates=max_candidates,
            group=group,
            mode=mode,
        )
        command = submit(self.store, self.id, "explore", payload, source=command_source())
        self._inbox.append(command)  # the next step() applies it (the poller may be later)
        return command

    def _send(self, kind: str, payload: dict[str, Any], timeout: float) -> CommandRecord:
        """Where :meth:`set`, :meth:`scale` and :meth:`restore` go once their payload is
        built: applied here from the training thread, else queued and waited for
        (``_steer.send``). Distributed runs make it collective."""
        return _steer.send(self, kind, payload, timeout=timeout)

    def epochs(self, count: int) -> Iterator[int]:
        """``for epoch in run.epochs(n)``: starts at the restored epoch after a resume; ends
        early (without raising) after a stop."""
        return self.loop.epochs(count)

    def batches(self, loader: Any) -> Iterator[Any]:
        """``for batch in run.batches(loader)``: this epoch's batches in Retune's seeded order,
        from the restored batch on; ends early (without raising) after a stop. Works with any
        map-style dataset in a DataLoader."""
        return self.loop.batches(loader)

    @property
    def epoch(self) -> int:
        """The current epoch of :meth:`epochs` (restores may move it)."""
        return self.loop.epoch

    def _on_epoch_end(self) -> None:
        every = self.checkpointer.policy.every_n_epochs
        if every and self.loop.epoch % every == 0:
            self.checkpointer.save_async("schedule")

    def tree(self) -> list[TreeNode]:
        """The run's tree as stored now (buffered metrics are flushed first)."""
        self.flush()
        return read_snapshot(self.store, self.id).tree()

    def branch(self, node: int | str) -> RunSnapshot:
        """The branch ending at ``node``: ``run.branch("n3").metric("loss")``."""
        self.flush()
        return read_snapshot(self.store, self.id).branch(node)

    def log(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Record metrics at the current step (e.g. validation after an epoch); checked like
        :meth:`step`'s (``InvalidArgument``, nothing recorded)."""
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        values = _merged(metrics, kwargs)
        if values:
            self._append(self._step, values)
            if self.exploration is not None:
                self.exploration.observe(_floats(values))

    def flush(self) -> None:
        """Write every buffered point now (the background thread does this every second)."""
        self._writer.flush()

    # -- the dashboard ----------------------------------------------------------------------
    def serve_dashboard(self, port: int = 8765, *, tries: int = 20) -> str | None:
        """Serve the dashboard on the first free port from ``port`` on; prints and returns its
        URL for this run, or prints that it is not served (training goes on either way).
        :meth:`finish` stops it."""
        from retune.server import serve_in_thread

        for candidate in range(port, port + tries):
            if not _port_free(candidate):
                continue  # skip it quietly (the server would log a raw bind error)
            ui_store = open_store(self.store.url)
            try:
                self.ui_server, url = serve_in_thread(ui_store, port=candidate)
            except RetuneError:
                ui_store.close()
                continue
            self._ui_store = ui_store
            page = f"{url}runs/{self.id}"
            note = "" if candidate == port else f" (port {port} is in use)"
            print(f"retune: dashboard at {page}{note}", flush=True)
            return page
        print(
            f"retune: the dashboard is not served (ports {port}-{port + tries - 1} are in use); "
            "`retune ui` can serve it",
            flush=True,
        )
        return None

    # -- ending -----------------------------------------------------------------------------
    def _release(self) -> None:
        """Give back what the run installed: scheduler pins and hooks, the dashboard."""
        try:
            self.tunables.close()
        except Exception as e:  # never keeps the run from ending
            log.warning("retune: could not remove the scheduler hooks: %s", e)
        server, self.ui_server = self.ui_server, None
        if server is not None:
            server.should_exit = True
        if self._ui_store is not None:
            self._ui_store.close()
            self._ui_store = None

    def finish(self, status: str = "finished", *, error: str | None = None) -> None:
        """Flush everything, close the current node and mark the run ``status``. Idempotent.

        Also removes the scheduler pin/hook Retune installed and stops a ``ui=True`` dashboard.
        When the last metrics cannot be written (a full disk), the run is marked ``crashed``
        with the reason and ``StoreError`` is raised; when even that cannot be written, the
        error says so, and the end is tried again at interpreter exit (metrics still held
        included), once space may allow; failing that, readers show the run as stale (its
        heartbeat has stopped).
        """
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        _lifecycle.untrack(self)
        if self.flags.stop_requested and status == "finished":
            status = "stopped"
        self._release()
        self.checkpointer.close()  # the save in flight is listed (or recorded failed) first
        self._applier.settle(self.store)  # a change it resolved, if the store refused it
        with _lifecycle.ending():  # a signal now waits until the end is written
            self._record_end(status, error)

    def _record_end(self, status: str, error: str | None) -> None:
        """The writes of :meth:`finish`: the last metrics, then how the run ended."""
        lost: RetuneError | None = None
        try:
            self._writer.close()
        except RetuneError as e:
            lost = e
            unwritten = self._writer.unwritten
            status = "crashed"
            error = f"{unwritten} metric point(s) could not be written: {e}" + (
                f"\n{error}" if error else ""
            )
        try:
            self._mark_ended(status, error)
        except RetuneError as e:
            _lifecycle.retry_at_exit(lambda: self._retry_ending(status, error))
            self._ending_pending = True
            raise StoreError(
                f"run {self.name} ({self.id}) could not be marked {status}: {e}; retried at "
                "exit, else it shows as stale (no heartbeat)"
            ) from (lost or e)
        finally:
            if self._owns_store and not self._ending_pending:
                self.store.close()
        if lost is not None:
            raise StoreError(f"run {self.name} ({self.id}) ended crashed: {error}") from lost

    def _retry_ending(self, status: str, error: str | None) -> None:
        """At exit, after ``finish()`` could not write the end (a full disk): write what is
        still held and mark the run ``status`` (``crashed`` with the reason) if space allows."""
        try:
            try:
                self._writer.close()
            except RetuneError as e:
                log.debug("retune: held metrics still not written: %s", e)
            self._mark_ended(status, error)
            print(f"retune: run {self.name} ({self.id}) marked {status} at exit", file=sys.stderr)
        except RetuneError as e:
            print(
                f"retune: run {self.name} ({self.id}) could not be marked {status} ({e}); "
                "it shows as stale",
                file=sys.stderr,
            )
        finally:
            if self._owns_store:
                self.store.close()

    def _mark_ended(self, status: str, error: str | None) -> None:
        if self.exploration is not None:
            self.exploration.interrupt(f"the run ended ({status}) during the exploration")
        now = time.time()
        self.store.update_run(
            self.id,
            status=status,
            ended_at=now,
            heartbeat_at=now,
            step=self._step,
            error=error,
            unless_status=self._kept_ends,
        )
        self.store.end_node(self.id, self._node, self._step)
        self._applier.reject_remaining(self, f"the run ended ({status}) before it was applied")
        if status != "finished":
            self.store.add_event(
                self.id,
                status,
                {"error": error} if error else {},
                node=self._node,
                step=self._step,
            )

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
        elif issubclass(exc_type, SystemExit):
            code = exc.code if isinstance(exc, SystemExit) else None
            if _lifecycle.terminated():
                self.finish("stopped", error="terminated by SIGTERM")
            elif code is None or code == 0:
                self.finish()
            else:
                self.finish("crashed", error=f"the script exited with status {code!r}")
        else:
            self.finish("crashed", error="".join(traceback.format_exception(exc_type, exc, tb)))
        return False

"""What each command does to a live training session, once the Applier has claimed it.

The handlers see the run only through :class:`TrainingSession`, a small explicit interface
(start a node, the loop state, the checkpointer, the tunables, the store), so the run handle
(:class:`~retune.session.Run`) stays the facade and the hot path. Every handler runs on the
training thread at a step boundary; it returns the command's result (recorded with it) or
raises ``CommandRejected`` with the reason, and then nothing has changed.

Kinds: ``set``, ``scale``, ``pause``, ``continue`` (un-pause; ``resume`` is its old name and
stays an alias), ``stop``, ``checkpoint``, ``restore``, ``explore``, ``guard`` (switch
the guard, set its knobs, veto its last recovery: see ``_guard``).

While an exploration runs, ``set``, ``scale``, ``restore`` and ``explore`` are rejected with
the reason (they would change the state the candidates are compared on); ``stop`` ends the
exploration instead of the run; ``pause``, ``continue`` and ``checkpoint`` apply as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retune.checkpoint import resolve_checkpoint
from retune.control import validate
from retune.errors import CommandRejected, InvalidArgument, RetuneError
from retune.session._explore import Exploration
from retune.session._protocols import PendingSave, SessionFlags, TrainingSession
from retune.store import CheckpointRecord, CommandRecord

__all__ = ["HANDLERS", "SessionFlags", "TrainingSession"]


Handler = Callable[[TrainingSession, CommandRecord], dict[str, Any] | None]


def _not_while_exploring(session: TrainingSession, kind: str) -> None:
    exploration = session.exploration
    if exploration is not None:
        raise CommandRejected(
            f"an exploration (command {exploration.command_id}) is running: {kind} is refused "
            "until it ends; `retune stop RUN` ends the exploration"
        )


def _change(session: TrainingSession, command: CommandRecord, kind: str) -> None:
    """Checkpoint (phase 1 here, the writing in the background), change, open the node; the
    command is resolved ``applied`` once that checkpoint is listed, naming it (or, when it
    could not be written, saying why: the change stays applied)."""
    _not_while_exploring(session, kind)
    payload = command.payload
    group, mode = payload.get("group"), payload.get("mode", "rescale")
    tunables = session.tunables
    change = tunables.set if kind == "set" else tunables.scale
    values = payload.get("values" if kind == "set" else "factors", {})
    change(values, group, mode, apply=False)  # a rejection costs no checkpoint
    before = session.checkpointer.save_later("change")  # so that any change can be undone
    if not before.background and before.record is None:  # failed, nothing changed: refuse
        raise CommandRejected(f"the checkpoint before the change failed: {before.failure}")
    try:
        diff = change(values, group, mode)
    except CommandRejected:  # a setter refused (the values were put back)
        record = before.wait()
        if record is not None:
            session.store.delete_checkpoints(session.id, [record.id])
        raise
    step = session.global_step
    session.start_node(kind, diff, command.user)
    node = session.node

    def resolve(saved: PendingSave) -> None:  # once listed (or failed), on its thread
        result: dict[str, Any] = {"diff": diff, "mode": mode, "checkpoint": None}
        if saved.record is not None:
            result["checkpoint"] = saved.record.label
        else:
            result["checkpoint_error"] = saved.failure
        session.resolve_applied(command.id, step=step, node=node, result=result)

    before.then(resolve)


def on_set(session: TrainingSession, command: CommandRecord) -> None:
    """New absolute values from the current state, on a new node (checkpointed before)."""
    _change(session, command, "set")


def on_scale(session: TrainingSession, command: CommandRecord) -> None:
    """Values multiplied per param group, on a new node (checkpointed before)."""
    _change(session, command, "scale")


def on_pause(session: TrainingSession, command: CommandRecord) -> dict[str, Any]:
    """Hold the loop at this step boundary until ``continue`` or ``stop``."""
    if session.flags.paused:
        raise CommandRejected("the run is already paused")
    session.flags.paused = True
    session.store.update_run(session.id, status="paused")
    return {}


def on_continue(session: TrainingSession, command: CommandRecord) -> dict[str, Any]:
    """Un-pause (kind ``continue``, or its old name ``resume``)."""
    if not session.flags.paused:
        raise CommandRejected("the run is not paused")
    session.flags.paused = False
    session.store.update_run(session.id, status="running")
    return {}


def on_stop(session: TrainingSession, command: CommandRecord) -> dict[str, Any]:
    """End training at this boundary; the run checkpoints there before it stops. During an
    exploration it ends the exploration instead (the run goes back to where it was when the
    exploration began); a second stop stops the run."""
    if session.exploration is not None:
        return session.exploration.cancel(command)
    session.flags.stop_requested = True
    session.flags.paused = False
    return {}


def on_checkpoint(session: TrainingSession, command: CommandRecord) -> dict[str, Any]:
    """Save the full state now, kept (never pruned)."""
    record = session.checkpointer.save("command", tag=command.payload.get("tag"))
    return {"checkpoint": record.label, "step": record.step}


def _target(session: TrainingSession, target: Any) -> CheckpointRecord:
    if not isinstance(target, str) or not target:
        raise CommandRejected("restore needs a target: c3, latest, n3 or n3@1200")
    try:
        return resolve_checkpoint(session.store, session.id, target)
    except RetuneError as e:
        raise CommandRejected(str(e)) from e


def put_back(session: TrainingSession, before: CheckpointRecord) -> None:
    """After a restore failed midway: load ``before`` (the state saved just before it, as
    the restore found the run) and delete that checkpoint, which no node will name."""
    session.load_state(session.checkpointer.load(before))
    session.store.delete_checkpoints(session.id, [before.id])


def on_restore(session: TrainingSession, command: CommandRecord) -> dict[str, Any]:
    """Restore the live model, optimizer, scheduler, RNG and loop position from a checkpoint,
    apply optional new values, and continue on a new node child of the checkpoint's node.

    Nothing changes when the target is unknown, a blob is missing or corrupt, or a new value
    is invalid; if a setter fails after the state was restored, the state from just before the
    restore is put back.
    """
    _not_while_exploring(session, "restore")
    payload = command.payload
    session.checkpointer.wait()  # a background save in flight is listed first: "latest" sees it
    record = _target(session, payload.get("target"))
    values = payload.get("set") or {}
    group, mode = payload.get("group"), payload.get("mode", "rescale")
    try:
        for name, value in values.items():
            validate(session.tunables.specs, name, value, group)
    except InvalidArgument as e:
        raise CommandRejected(str(e)) from e
    try:
        state = session.checkpointer.load(record)  # verifies every blob before touching anything
    except RetuneError as e:
        raise CommandRejected(str(e)) from e
    before = session.checkpointer.save("change")  # the branch being left can be restored later
    left_node, left_step = session.node, session.global_step
    diff: dict[str, Any] = {}
    try:
        session.load_state(state)
        if values:
            diff = session.tunables.set(values, group, mode)
    except Exception as e:
        put_back(session, before)
        if isinstance(e, CommandRejected):
            raise
        raise CommandRejected(f"restoring {record.label} failed: {type(e).__name__}: {e}") from e
    session.flush()
    session.store.end_node(session.id, left_node, left_step)
    session.start_node("restore", diff, command.user, parent=record.node)
    session.store.add_event(
        session.id,
        "restored",
        {"checkpoint": record.label, "from_node": before.node, "from_step": before.step},
        node=session.node,
        step=session.global_step,
    )
    return {"checkpoint": record.label, "diff": diff, "left": before.label, "mode": mode}


def on_guard(session: TrainingSession, command: CommandRecord) -> dict[str, Any]:
    """Switch the guard on or off, set its knobs, or veto its last recovery."""
    guard = getattr(session, "guard", None)
    if guard is None:
        raise CommandRejected("this run has no guard: start it with retune.init(..., guard=True)")
    result: dict[str, Any] = guard.command(command)
    return result


def on_explore(session: TrainingSession, command: CommandRecord) -> None:
    """Start an exploration (see ``_explore``); it resolves the command when it ends."""
    _not_while_exploring(session, "explore")
    Exploration(session, command).begin()


HANDLERS: dict[str, Handler] = {
    "set": on_set,
    "scale": on_scale,
    "pause": on_pause,
    "continue": on_continue,
    "resume": on_continue,  # the old word for un-pause, kept as an alias
    "stop": on_stop,
    "checkpoint": on_checkpoint,
    "restore": on_restore,
    "guard": on_guard,
    "explore": on_explore,
}
"""Every command kind a training process applies, by kind."""

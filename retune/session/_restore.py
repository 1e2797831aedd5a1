"""Going back to a checkpoint: in the running process (``restore``) or in a new one (resume)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retune.checkpoint import resolve_checkpoint
from retune.control import validate
from retune.errors import CommandRejected, InvalidArgument, RetuneError
from retune.session._state import apply_state
from retune.store import CheckpointRecord, CommandRecord

if TYPE_CHECKING:
    from retune.session._run import Run

__all__ = ["on_restore", "resume_from"]


def _target(run: Run, target: Any) -> CheckpointRecord:
    if not isinstance(target, str) or not target:
        raise CommandRejected("restore needs a target: c3, latest, n3 or n3@1200")
    try:
        return resolve_checkpoint(run.store, run.id, target)
    except RetuneError as e:
        raise CommandRejected(str(e)) from e


def on_restore(run: Run, command: CommandRecord) -> dict[str, Any]:
    """Restore the live model, optimizer, scheduler, RNG and loop position from a checkpoint,
    apply optional new values, and continue on a new node child of the checkpoint's node.

    Nothing changes when the target is unknown, a blob is missing or corrupt, or a new value
    is invalid; if a setter fails after the state was restored, the state from just before the
    restore is put back.
    """
    payload = command.payload
    record = _target(run, payload.get("target"))
    values = payload.get("set") or {}
    group, mode = payload.get("group"), payload.get("mode", "rescale")
    try:
        for name, value in values.items():
            validate(run.tunables.specs, name, value, group)
    except InvalidArgument as e:
        raise CommandRejected(str(e)) from e
    try:
        state = run.checkpointer.load(record)  # verifies every blob before touching anything
    except RetuneError as e:
        raise CommandRejected(str(e)) from e
    before = run.checkpointer.save("change")  # the branch being left can be restored later
    left_node, left_step = run.node, run.global_step
    diff: dict[str, Any] = {}
    try:
        apply_state(run, state)
        if values:
            diff = run.tunables.set(values, group, mode)
    except Exception as e:
        apply_state(run, run.checkpointer.load(before))  # back to where the command found us
        run.store.delete_checkpoints(run.id, [before.id])
        if isinstance(e, CommandRejected):
            raise
        raise CommandRejected(f"restoring {record.label} failed: {type(e).__name__}: {e}") from e
    run.flush()
    run.store.end_node(run.id, left_node, left_step)
    run._start_node("restore", diff, command.user, parent=record.node)
    run.store.add_event(
        run.id,
        "restored",
        {"checkpoint": record.label, "from_node": before.node, "from_step": before.step},
        node=run.node,
        step=run.global_step,
    )
    return {"checkpoint": record.label, "diff": diff, "left": before.label, "mode": mode}


def resume_from(run: Run, target: str, who: str | None) -> CheckpointRecord:
    """In a new process: load ``target`` of the run and open a ``resume`` node for it."""
    record = resolve_checkpoint(run.store, run.id, target)
    apply_state(run, run.checkpointer.load(record))
    node = run.store.create_node(
        run.id,
        parent=record.node,
        start_step=record.step,
        change_kind="resume",
        values=run.tunables.values(),
        diff={},
        created_by=who,
    )
    run._node = node.id
    run.store.update_run(run.id, step=record.step, tunables=run.tunables.records())
    return record

"""Continuing a run in a new process (resume) from one of its checkpoints.

Restoring inside the running process is a command: see ``on_restore`` in ``_handlers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retune.checkpoint import resolve_checkpoint
from retune.store import CheckpointRecord

if TYPE_CHECKING:
    from retune.session._run import Run

__all__ = ["resume_from"]


def resume_from(run: Run, target: str, who: str | None) -> CheckpointRecord:
    """In a new process: load ``target`` of the run and open a ``resume`` node for it."""
    record = resolve_checkpoint(run.store, run.id, target)
    run.load_state(run.checkpointer.load(record))
    run.start_node("resume", {}, who, parent=record.node, close_current=False)
    run.store.update_run(run.id, step=record.step)
    return record

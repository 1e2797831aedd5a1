"""Naming a checkpoint: ``c3``, ``latest``, a node ``n3`` (its latest checkpoint), or
``n3@1200`` (the latest checkpoint at or before step 1200 on the branch ending at n3)."""

from __future__ import annotations

import re

from retune.errors import CheckpointNotFound
from retune.store import LIVE_STATUSES, CheckpointRecord, Store

__all__ = ["resolve_checkpoint"]

_INT64_MAX = 2**63 - 1
_CHECKPOINT = re.compile(r"c([0-9]+)", re.ASCII)
_NODE = re.compile(r"n?([0-9]+)(?:@([0-9]+))?", re.ASCII)
_FORMS = "use c3, latest, n3 or n3@1200"


def _number(text: str, target: str) -> int:
    value = int(text)
    if value > _INT64_MAX:
        raise CheckpointNotFound(f"{target!r} names no checkpoint: {text[:20]}... is too large")
    return value


def resolve_checkpoint(
    store: Store, run_id: str, target: str, *, current_step: int | None = None
) -> CheckpointRecord:
    """The checkpoint ``target`` names in run ``run_id``.

    ``n3@1200`` is the latest checkpoint at or before step 1200 on the branch from the root to
    n3 (n3's own checkpoints, then its ancestors' before n3 started); the step may be earlier
    than 1200 (compare ``record.step``). A step beyond the node is refused: beyond its end
    step, or, for a node still open, beyond ``current_step`` (the caller's view of where the
    run is) or, without one, beyond the step recorded for a run that is no longer live. A live
    run's open node has no bound unless ``current_step`` gives one (its recorded step lags).

    Raises ``CheckpointNotFound`` (one line) when the run has no checkpoint, the target is
    malformed (only ASCII digits count), names an unknown checkpoint or node, or a step
    beyond the node.
    """
    text = target.strip()
    checkpoints = store.list_checkpoints(run_id)
    if not checkpoints:
        raise CheckpointNotFound(f"run {run_id} has no checkpoints yet")
    if text == "latest":
        return checkpoints[-1]
    if match := _CHECKPOINT.fullmatch(text):
        wanted = _number(match.group(1), target)
        for checkpoint in checkpoints:
            if checkpoint.id == wanted:
                return checkpoint
        raise CheckpointNotFound(f"run {run_id} has no checkpoint c{wanted}")
    match = _NODE.fullmatch(text)
    if match is None:
        raise CheckpointNotFound(f"{target!r} names no checkpoint: {_FORMS}")
    node_id = _number(match.group(1), target)
    step_text = match.group(2)
    nodes = {n.id: n for n in store.list_nodes(run_id)}
    if node_id not in nodes:
        raise CheckpointNotFound(f"run {run_id} has no node n{node_id}")
    limit = _number(step_text, target) if step_text is not None else None
    if limit is not None:
        node = nodes[node_id]
        end = node.end_step if node.end_step is not None else current_step
        if end is None:
            run = store.get_run(run_id)
            end = None if run.status in LIVE_STATUSES else run.step
        if end is not None and limit > end:
            where = "ends at" if node.end_step is not None else "has reached"
            raise CheckpointNotFound(
                f"n{node_id} {where} step {end}; step {limit} is beyond it "
                f"(use n{node_id}@{end} or an earlier step)"
            )
    # walk up the branch: a node's own checkpoints, then its ancestors' before it started
    current: int | None = node_id
    while current is not None:
        node = nodes[current]
        candidates = [
            c for c in checkpoints if c.node == current and (limit is None or c.step <= limit)
        ]
        if candidates:
            return max(candidates, key=lambda c: (c.step, c.id))
        limit = node.start_step if limit is None else min(limit, node.start_step)
        current = node.parent
    where = f"n{node_id}" + (f" at or before step {step_text}" if step_text else "")
    raise CheckpointNotFound(f"run {run_id} has no checkpoint on the branch of {where}")

"""Naming a checkpoint: ``c3``, ``latest``, a node ``n3`` (its latest checkpoint), or
``n3@1200`` (the latest checkpoint at or before step 1200 on the branch ending at n3)."""

from __future__ import annotations

from retune.errors import CheckpointNotFound
from retune.store import CheckpointRecord, Store

__all__ = ["resolve_checkpoint"]


def resolve_checkpoint(store: Store, run_id: str, target: str) -> CheckpointRecord:
    """The checkpoint ``target`` names in run ``run_id``; ``CheckpointNotFound`` otherwise."""
    text = target.strip()
    checkpoints = store.list_checkpoints(run_id)
    if not checkpoints:
        raise CheckpointNotFound(f"run {run_id} has no checkpoints yet")
    if text == "latest":
        return checkpoints[-1]
    if text.startswith("c") and text[1:].isdigit():
        wanted = int(text[1:])
        for checkpoint in checkpoints:
            if checkpoint.id == wanted:
                return checkpoint
        raise CheckpointNotFound(f"run {run_id} has no checkpoint {text}")
    node_text, _, step_text = text.partition("@")
    node_text = node_text.removeprefix("n")
    if not node_text.isdigit() or (step_text and not step_text.isdigit()):
        raise CheckpointNotFound(f"{target!r} names no checkpoint: use c3, latest, n3 or n3@1200")
    node_id = int(node_text)
    nodes = {n.id: n for n in store.list_nodes(run_id)}
    if node_id not in nodes:
        raise CheckpointNotFound(f"run {run_id} has no node n{node_id}")
    limit = int(step_text) if step_text else None
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

"""Naming a checkpoint: ``c3``, ``latest``, a node ``n3`` (its latest checkpoint), or
``n3@1200`` (the latest checkpoint at or before step 1200 on the branch ending at n3)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from retune.errors import CheckpointNotFound
from retune.store import LIVE_STATUSES, CheckpointRecord, NodeRecord, Store

__all__ = ["NamedTarget", "check_target", "resolve_checkpoint"]

_INT64_MAX = 2**63 - 1
_CHECKPOINT = re.compile(r"c([0-9]+)", re.ASCII)
_NODE = re.compile(r"n?([0-9]+)(?:@([0-9]+))?", re.ASCII)
_FORMS = "use c3, latest, n3 or n3@1200"


def _number(text: str, target: str) -> int:
    value = int(text)
    if value > _INT64_MAX:
        raise CheckpointNotFound(f"{target!r} names no checkpoint: {text[:20]}... is too large")
    return value


@dataclass(frozen=True)
class NamedTarget:
    """A checkpoint target whose form is valid: ``latest``, ``c<id>``, or ``n<node>[@<step>]``
    with ``nodes`` the run's nodes (node forms only; the node is one of them)."""

    kind: str  # "latest", "checkpoint" or "node"
    number: int = 0  # the checkpoint id or the node id
    limit: int | None = None  # the step of n3@1200
    nodes: dict[int, NodeRecord] = field(default_factory=dict)


def check_target(
    store: Store, run_id: str, target: str, *, current_step: int | None = None
) -> NamedTarget:
    """What ``target`` names, refused (``CheckpointNotFound``, one line) when no checkpoint the
    run could ever list would match it: a malformed target (only ASCII digits count, at most
    int64), an unknown node, or a step beyond the node (see :func:`resolve_checkpoint`).
    Whether such a checkpoint exists yet is not looked at."""
    text = target.strip()
    if text == "latest":
        return NamedTarget("latest")
    if match := _CHECKPOINT.fullmatch(text):
        return NamedTarget("checkpoint", _number(match.group(1), target))
    match = _NODE.fullmatch(text)
    if match is None:
        raise CheckpointNotFound(f"{target!r} names no checkpoint: {_FORMS}")
    node_id = _number(match.group(1), target)
    step_text = match.group(2)
    limit = _number(step_text, target) if step_text is not None else None
    nodes = {n.id: n for n in store.list_nodes(run_id)}
    if node_id not in nodes:
        raise CheckpointNotFound(f"run {run_id} has no node n{node_id}")
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
    return NamedTarget("node", node_id, limit, nodes)


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

    Raises ``CheckpointNotFound`` (one line) for what :func:`check_target` refuses, checked
    first, then when the run has no checkpoint, or none matches.
    """
    named = check_target(store, run_id, target, current_step=current_step)
    checkpoints = store.list_checkpoints(run_id)
    if not checkpoints:
        raise CheckpointNotFound(f"run {run_id} has no checkpoints yet")
    if named.kind == "latest":
        return checkpoints[-1]
    if named.kind == "checkpoint":
        for checkpoint in checkpoints:
            if checkpoint.id == named.number:
                return checkpoint
        raise CheckpointNotFound(f"run {run_id} has no checkpoint c{named.number}")
    # walk up the branch: a node's own checkpoints, then its ancestors' before it started
    limit = named.limit
    current: int | None = named.number
    while current is not None:
        node = named.nodes[current]
        candidates = [
            c for c in checkpoints if c.node == current and (limit is None or c.step <= limit)
        ]
        if candidates:
            return max(candidates, key=lambda c: (c.step, c.id))
        limit = node.start_step if limit is None else min(limit, node.start_step)
        current = node.parent
    where = f"n{named.number}"
    if named.limit is not None:
        where += f" at or before step {named.limit}"
    raise CheckpointNotFound(f"run {run_id} has no checkpoint on the branch of {where}")

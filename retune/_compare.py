"""Comparing nodes of one run: their hyperparameters side by side and their branches' metrics
aligned by step. Shared by ``retune compare``, the dashboard's compare view
(``GET /api/runs/{run}/compare``) and the exports (:func:`flat_hyperparameters`).

A node's curve is its branch: the path from the root to the node, each node's points up to
where the next node of the path starts (DESIGN.md's metric definition). Nothing here imports
torch or writes to the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retune._downsample import minmax_indices
from retune.control._parse import parse_node
from retune.errors import InvalidArgument, NodeNotFound
from retune.session._tree import branch_mask, path_to
from retune.store import NodeRecord, RunRecord, Store

__all__ = [
    "MAX_NODES",
    "BranchSeries",
    "Comparison",
    "ParamRow",
    "compare",
    "flat_hyperparameters",
]

MAX_NODES = 16
"""At most this many nodes in one comparison (a table wider than that is unreadable)."""


def _group_label(groups: Sequence[Any], index: int) -> str:
    name = groups[index]
    return f"{name}" if isinstance(name, str) and name else f"{index}"


def flat_hyperparameters(
    values: Sequence[Mapping[str, Any]], tunables: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each node's hyperparameters as flat ``{name: value}``, with the same names for all.

    Optimizer values are stored per param group (a list, one value per group). A tunable whose
    groups all hold the same value in every node given is one name (``lr``); otherwise each
    group is its own name, ``lr[0]``, ``lr[1]`` (or ``lr[head]`` for a named group), as node
    diffs write it. Tuple values (``betas``) stay lists. Names keep the tunables' order, then
    the order they first appear.
    """
    specs = {str(t.get("name")): t for t in tunables}
    names: list[str] = [n for n in specs if any(n in v for v in values)]
    for node_values in values:
        names.extend(n for n in node_values if n not in names)
    out: list[dict[str, Any]] = [{} for _ in values]
    for name in names:
        groups = (specs.get(name) or {}).get("groups")
        per_group = isinstance(groups, list) and all(
            isinstance(v.get(name), list) and len(v[name]) == len(groups)
            for v in values
            if name in v
        )
        if not per_group or not groups:
            for flat, node_values in zip(out, values, strict=True):
                if name in node_values:
                    flat[name] = node_values[name]
            continue
        assert isinstance(groups, list)
        uniform = all(
            all(g == v[name][0] for g in v[name]) for v in values if name in v
        )  # every group holds one value in every node: one column
        for flat, node_values in zip(out, values, strict=True):
            if name not in node_values:
                continue
            if uniform:
                flat[name] = node_values[name][0]
            else:
                for index, value in enumerate(node_values[name]):
                    flat[f"{name}[{_group_label(groups, index)}]"] = value
    return out


@dataclass(frozen=True)
class ParamRow:
    """One hyperparameter across the compared nodes; ``None`` where a node lacks it."""

    name: str
    values: tuple[Any, ...]
    differs: bool


@dataclass(frozen=True)
class BranchSeries:
    """One metric along one node's branch, in step order (read-only arrays)."""

    node: int
    key: str
    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)

    def last(self) -> tuple[int, float] | None:
        """``(step, value)`` of the branch's last point, or ``None`` when it has none."""
        if not len(self.steps):
            return None
        return int(self.steps[-1]), float(self.values[-1])

    def at(self, steps: np.ndarray) -> np.ndarray:
        """The values at ``steps`` (NaN where the branch has no point at that step)."""
        out = np.full(len(steps), math.nan)
        if len(self.steps):
            pos = np.clip(np.searchsorted(self.steps, steps), 0, len(self.steps) - 1)
            hit = self.steps[pos] == steps
            out[hit] = self.values[pos[hit]]
        return out

    def to_dict(self, max_points: int | None = None) -> dict[str, Any]:
        """JSON-ready: steps, values (NaN as ``null``), positions of non-finite points, the
        total before downsampling (min/max buckets to ``max_points``) and the last point."""
        index = np.arange(len(self.steps))
        if max_points is not None:
            index = minmax_indices(self.values, max_points)
        values = self.values[index]
        last = self.last()
        return {
            "total": len(self.steps),
            "steps": self.steps[index].tolist(),
            "values": [None if math.isnan(v) else v for v in values.tolist()],
            "nonfinite": np.flatnonzero(~np.isfinite(values)).tolist(),
            "last": None if last is None else {"step": last[0], "value": last[1]},
        }


@dataclass(frozen=True)
class Comparison:
    """Nodes of one run side by side: what differs between them and how their branches went.

    ``nodes`` are in the order asked; ``branches[key]`` holds one :class:`BranchSeries` per
    node, in that order.
    """

    run: RunRecord
    nodes: tuple[NodeRecord, ...]
    params: tuple[ParamRow, ...]
    branches: dict[str, tuple[BranchSeries, ...]]
    diverge_step: int
    """The step where the compared branches part: the start of the first node not on every
    compared path (0 when they share nothing but the root's start)."""

    @property
    def labels(self) -> list[str]:
        return [n.label for n in self.nodes]

    @property
    def keys(self) -> list[str]:
        return list(self.branches)

    def differing(self) -> list[ParamRow]:
        return [row for row in self.params if row.differs]

    def aligned(self, key: str, rows: int = 10) -> tuple[np.ndarray, list[np.ndarray]]:
        """Up to ``rows`` steps that every compared branch has, from :attr:`diverge_step` on,
        evenly spread and always with the last shared one; and each branch's values there."""
        branches = self.branches[key]
        shared = branches[0].steps if branches else np.empty(0, np.int64)
        for branch in branches[1:]:
            shared = np.intersect1d(shared, branch.steps, assume_unique=False)
        shared = shared[shared >= self.diverge_step]
        if rows <= 0:
            shared = shared[:0]
        elif len(shared) > rows:
            picks = np.unique(np.linspace(0, len(shared) - 1, rows).round().astype(np.int64))
            shared = shared[picks]
        return shared, [branch.at(shared) for branch in branches]

    def to_dict(self, *, max_points: int | None = 2000, rows: int = 10) -> dict[str, Any]:
        """The comparison as JSON-ready data (what ``--json`` and the HTTP API return)."""
        labels = self.labels
        metrics: dict[str, Any] = {}
        for key, branches in self.branches.items():
            steps, values = self.aligned(key, rows)
            metrics[key] = {
                "branches": {
                    label: branch.to_dict(max_points)
                    for label, branch in zip(labels, branches, strict=True)
                },
                "aligned": {
                    "steps": steps.tolist(),
                    "values": {
                        label: [None if math.isnan(v) else v for v in column.tolist()]
                        for label, column in zip(labels, values, strict=True)
                    },
                },
            }
        return {
            "run": {"id": self.run.id, "name": self.run.name},
            "nodes": [
                {
                    "id": node.label,
                    "parent": None if node.parent is None else f"n{node.parent}",
                    "start_step": node.start_step,
                    "end_step": node.end_step,
                    "change_kind": node.change_kind,
                    "diff": node.diff,
                    "info": node.info,
                }
                for node in self.nodes
            ],
            "diverge_step": self.diverge_step,
            "hyperparameters": [
                {
                    "name": row.name,
                    "differs": row.differs,
                    "values": dict(zip(labels, row.values, strict=True)),
                }
                for row in self.params
            ],
            "metrics": metrics,
        }


def _node_ids(refs: Sequence[int | str], nodes: Sequence[NodeRecord]) -> list[int]:
    if not refs:
        raise InvalidArgument("name at least one node to compare (e.g. n3 n5)")
    if len(refs) > MAX_NODES:
        raise InvalidArgument(f"compare at most {MAX_NODES} nodes at once, got {len(refs)}")
    ids = [ref if isinstance(ref, int) else parse_node(ref) for ref in refs]
    known = {n.id for n in nodes}
    for node_id in ids:
        if node_id not in known:
            have = ", ".join(n.label for n in nodes)
            raise NodeNotFound(f"no node n{node_id}; the run has {have}")
    if len(set(ids)) != len(ids):
        raise InvalidArgument("each node may be named once")
    return ids


def compare(
    store: Store,
    run: str,
    nodes: Sequence[int | str],
    *,
    metrics: Sequence[str] | None = None,
) -> Comparison:
    """Compare ``nodes`` (``3``, ``"3"`` or ``"n3"``) of ``run`` (an id or a name).

    ``metrics`` picks the keys (default: every key of the run); each branch's points are read
    from the store. Differing hyperparameters come first (by name), then the equal ones.

    Raises:
        RunNotFound: no such run.
        NodeNotFound: a node the run does not have.
        InvalidArgument: no node, more than :data:`MAX_NODES`, a node twice, or a metric the
            run has no points for.
    """
    record = store.get_run(run)
    all_nodes = tuple(store.list_nodes(record.id))
    ids = _node_ids(list(nodes), all_nodes)
    by_id = {n.id: n for n in all_nodes}
    chosen = tuple(by_id[i] for i in ids)
    flat = flat_hyperparameters([n.values for n in chosen], record.tunables)
    names: list[str] = []
    for values in flat:
        names.extend(name for name in values if name not in names)
    rows = []
    for name in names:
        cells = tuple(values.get(name) for values in flat)
        differs = any(repr(c) != repr(cells[0]) for c in cells[1:])
        rows.append(ParamRow(name, cells, differs))
    rows.sort(key=lambda r: (not r.differs, r.name if r.differs else ""))
    known_keys = store.metric_keys(record.id)
    keys = list(dict.fromkeys(metrics)) if metrics else known_keys
    for key in keys:
        if key not in known_keys:
            have = ", ".join(known_keys) or "none"
            raise InvalidArgument(f"run {record.name} has no metric {key!r} (it has: {have})")
    paths = [path_to(all_nodes, node_id) for node_id in ids]
    common = set.intersection(*({n.id for n in path} for path in paths))
    firsts = [next((n.start_step for n in path if n.id not in common), None) for path in paths]
    starts = [s for s in firsts if s is not None]
    diverge = min(starts) if starts else 0
    branches: dict[str, tuple[BranchSeries, ...]] = {}
    for key in keys:
        data = store.read_metric(record.id, key, nodes=sorted({n.id for p in paths for n in p}))
        per_node = []
        for node_id, path in zip(ids, paths, strict=True):
            index = np.flatnonzero(branch_mask(path, data.nodes, data.steps))
            index = index[np.argsort(data.steps[index], kind="stable")]
            arrays = [data.steps[index], data.values[index], data.times[index]]
            for array in arrays:
                array.flags.writeable = False
            per_node.append(BranchSeries(node_id, key, *arrays))
        branches[key] = tuple(per_node)
    return Comparison(record, chosen, tuple(rows), branches, diverge)

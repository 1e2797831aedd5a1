"""Reading a run back: frozen snapshots of its configuration, tree and metric series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retune.errors import InvalidArgument
from retune.session._tree import TreeNode, branch_mask, build_tree, parse_node, path_to
from retune.store import CheckpointRecord, MetricSeries, NodeRecord, RunRecord, Store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MetricSeries", "RunSnapshot", "read_snapshot"]


@dataclass(frozen=True)
class RunSnapshot:
    """A run as it was when :func:`retune.load` read it. Nothing in it changes afterwards."""

    run: RunRecord
    nodes: tuple[NodeRecord, ...]
    series: dict[str, MetricSeries]
    checkpoints: tuple[CheckpointRecord, ...] = ()

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config

    @property
    def meta(self) -> dict[str, Any]:
        return self.run.meta

    @property
    def keys(self) -> list[str]:
        return sorted(self.series)

    def metric(
        self,
        key: str,
        start: int | None = None,
        end: int | None = None,
        max_points: int | None = None,
    ) -> MetricSeries:
        """The series of ``key`` (see :meth:`MetricSeries.select`); unknown keys are an error."""
        if key not in self.series:
            known = ", ".join(self.keys) or "none"
            raise InvalidArgument(f"run {self.name} has no metric {key!r} (it has: {known})")
        return self.series[key].select(start, end, max_points)

    def tree(self) -> list[TreeNode]:
        """Every node with parent, children, steps, values, diff, checkpoints, metric summary."""
        return build_tree(self.nodes, self.checkpoints, self.series)

    def branch(self, node: int | str) -> RunSnapshot:
        """The run as seen along one branch: the path from the root to ``node``.

        Its metric series hold each path node's points up to where the next one starts.
        """
        path = path_to(self.nodes, parse_node(node))
        series = {}
        for key, data in self.series.items():
            mask = branch_mask(path, data.nodes, data.steps)
            index = np.flatnonzero(mask)
            index = index[np.argsort(data.steps[index], kind="stable")]
            series[key] = data.take(index)
        return RunSnapshot(self.run, tuple(path), series, self.checkpoints)

    def to_pandas(self) -> pd.DataFrame:
        """All metrics in long form: columns key, step, value, time, node."""
        import pandas as pd

        frames = [s.to_pandas().assign(key=k) for k, s in sorted(self.series.items())]
        if not frames:
            return pd.DataFrame(columns=["key", "step", "value", "time", "node"])
        return pd.concat(frames, ignore_index=True)[["key", "step", "value", "time", "node"]]


def read_snapshot(store: Store, ref: str) -> RunSnapshot:
    """Read run ``ref`` (id, or name for the latest run of that name) with all its metrics."""
    run = store.get_run(ref)
    nodes = tuple(store.list_nodes(run.id))
    series = {}
    for key in store.metric_keys(run.id):
        series[key] = store.read_metric(run.id, key)
    return RunSnapshot(run, nodes, series, tuple(store.list_checkpoints(run.id)))

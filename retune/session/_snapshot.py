"""Reading a run back: frozen snapshots of its configuration, tree and metric series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retune._downsample import minmax_indices
from retune.errors import InvalidArgument
from retune.session._tree import TreeNode, branch_mask, build_tree, parse_node, path_to
from retune.store import CheckpointRecord, NodeRecord, RunRecord, Store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MetricSeries", "RunSnapshot", "read_snapshot"]


@dataclass(frozen=True)
class MetricSeries:
    """Points of one metric: equally long read-only arrays, ordered by step within each node.

    ``nonfinite`` flags NaN and +/-inf points, which are kept, never dropped.
    """

    key: str
    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray
    nodes: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def nonfinite(self) -> np.ndarray:
        mask: np.ndarray = ~np.isfinite(self.values)
        return mask

    @property
    def has_nonfinite(self) -> bool:
        return bool(self.nonfinite.any())

    def last(self) -> float | None:
        return float(self.values[-1]) if len(self.values) else None

    def select(
        self, start: int | None = None, end: int | None = None, max_points: int | None = None
    ) -> MetricSeries:
        """Points with ``start <= step <= end``, downsampled by min/max buckets to ``max_points``.

        Downsampling keeps each bucket's minimum, maximum and first NaN, so no spike is lost.
        """
        mask = np.ones(len(self.steps), dtype=bool)
        if start is not None:
            mask &= self.steps >= start
        if end is not None:
            mask &= self.steps <= end
        index = np.flatnonzero(mask)
        if max_points is not None:
            if max_points < 3:
                raise InvalidArgument(f"max_points must be at least 3, got {max_points}")
            index = index[minmax_indices(self.values[index], max_points)]
        return MetricSeries(
            self.key,
            _frozen(self.steps[index]),
            _frozen(self.values[index]),
            _frozen(self.times[index]),
            _frozen(self.nodes[index]),
        )

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame with columns step, value, time, node (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from e
        return pd.DataFrame(
            {"step": self.steps, "value": self.values, "time": self.times, "node": self.nodes}
        )


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


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
            series[key] = MetricSeries(
                key,
                _frozen(data.steps[index]),
                _frozen(data.values[index]),
                _frozen(data.times[index]),
                _frozen(data.nodes[index]),
            )
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
        data = store.read_metric(run.id, key)
        series[key] = MetricSeries(key, data.steps, data.values, data.times, data.nodes)
    return RunSnapshot(run, nodes, series, tuple(store.list_checkpoints(run.id)))

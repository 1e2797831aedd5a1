"""A metric as an SVG line chart, every branch overlaid: pure Python, for the one-file report.

Each node's own points are one line, coloured by the node's lane in the tree picture, and
starts from its parent's value at the step it branched from, so a branch reads as one curve
from the root. Each node is downsampled with the server's min/max buckets
(:func:`retune._downsample.minmax_indices`, its share of ``max_points`` in proportion to its
points), so no spike is lost. A marker sits at each change. NaN and +/-inf points break the
line and are counted in the caption, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from retune._downsample import minmax_indices
from retune._format import number
from retune.session._tree import TreeNode
from retune.store import MetricSeries
from retune.viz._layout import edge_label
from retune.viz._svg import PALETTE, esc, fmt, nice_ticks, truncate

__all__ = ["ChartPicture", "metric_chart"]

LEFT, RIGHT, TOP, BOTTOM = 58, 14, 26, 30


@dataclass(frozen=True)
class ChartPicture:
    """A drawn chart: the SVG, how many points the metric has and how many were drawn."""

    svg: str
    total: int
    drawn: int
    nonfinite: int


def _node_points(
    series: MetricSeries, node_ids: Sequence[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """node -> (steps, values) of its own points, in step order."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if not len(series):
        return out
    order = np.lexsort((series.steps, series.nodes))
    nodes, steps, values = series.nodes[order], series.steps[order], series.values[order]
    ids, starts = np.unique(nodes, return_index=True)
    ends = [*starts[1:].tolist(), len(nodes)]
    wanted = set(node_ids)
    for node_id, lo, hi in zip(ids.tolist(), starts.tolist(), ends, strict=True):
        if node_id in wanted:
            out[node_id] = (steps[lo:hi], values[lo:hi])
    return out


def _value_at(points: tuple[np.ndarray, np.ndarray] | None, step: int) -> float | None:
    """The value of the last point at or before ``step``."""
    if points is None or not len(points[0]):
        return None
    at = int(np.searchsorted(points[0], step, side="right")) - 1
    return float(points[1][at]) if at >= 0 else None


def metric_chart(
    key: str,
    series: MetricSeries,
    nodes: Sequence[TreeNode],
    lanes: Mapping[int, int],
    *,
    width: int = 640,
    height: int = 250,
    max_points: int = 2000,
) -> ChartPicture:
    """The chart of metric ``key``.

    Args:
        series: every point of the metric (``RunSnapshot.series[key]``).
        nodes: the tree's nodes; a line per node with points, a marker per change.
        lanes: node id -> its lane in the tree picture (its colour here).
        max_points: about how many points are drawn in all (min/max downsampled per node).
    """
    by_id = {n.id: n for n in nodes}
    points = _node_points(series, list(by_id))
    total = len(series)
    budget = max(0, max_points - 6 * len(points))
    lines: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for node_id, (own_steps, own_values) in points.items():
        share = 6 + (budget * len(own_steps)) // max(1, total)
        keep = np.arange(len(own_values))
        if len(own_values) > share:
            keep = minmax_indices(own_values, max(3, share))
        steps, values = own_steps[keep], own_values[keep]
        node = by_id[node_id]
        start = _value_at(points.get(node.parent), node.start_step) if node.parent else None
        if start is not None and (not len(steps) or steps[0] > node.start_step):
            steps = np.concatenate([[node.start_step], steps])
            values = np.concatenate([[start], values])
        lines[node_id] = (steps, values)
    drawn = sum(len(s) for s, _ in lines.values())
    nonfinite = int((~np.isfinite(series.values)).sum()) if total else 0
    finite = [v[np.isfinite(v)] for _, v in lines.values()]
    finite_all = np.concatenate(finite) if finite else np.array([])
    step_all = np.concatenate([s for s, _ in lines.values()]) if lines else np.array([])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="retune-chart" viewBox="0 0 {width} '
        f'{height}" width="{width}" height="{height}" role="img" data-key="{esc(key)}" '
        f'data-total="{total}" data-points="{drawn}"><title>{esc(key)}</title>'
        f'<rect width="{width}" height="{height}" fill="#fff"/>'
    ]
    if not len(finite_all) or not len(step_all):
        out.append(
            f'<text x="{LEFT}" y="{height // 2}" fill="#6b7385">no finite values</text></svg>'
        )
        return ChartPicture("".join(out), total, drawn, nonfinite)
    lo, hi = float(finite_all.min()), float(finite_all.max())
    pad = (hi - lo) * 0.05 or abs(lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    s0, s1 = int(step_all.min()), int(step_all.max())
    span = max(1, s1 - s0)

    def x(step: float) -> float:
        return LEFT + (step - s0) / span * (width - LEFT - RIGHT)

    def y(value: float) -> float:
        return TOP + (hi - value) / (hi - lo) * (height - TOP - BOTTOM)

    bottom = height - BOTTOM
    for tick in nice_ticks(lo, hi, 5):
        out.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{fmt(y(tick))}" '
                   f'y2="{fmt(y(tick))}" stroke="#eceef2"/><text x="{LEFT - 4}" '
                   f'y="{fmt(y(tick) + 3)}" text-anchor="end" font-size="10" fill="#6b7385">'
                   f"{esc(number(tick))}</text>")  # fmt: skip
    for tick in nice_ticks(s0, s1, 6):
        out.append(f'<line x1="{fmt(x(tick))}" x2="{fmt(x(tick))}" y1="{TOP}" y2="{bottom}" '
                   f'stroke="#eceef2"/><text x="{fmt(x(tick))}" y="{bottom + 14}" '
                   'text-anchor="middle" font-size="10" fill="#6b7385">'
                   f"{int(tick):,}</text>")  # fmt: skip
    out.append(f'<text x="{LEFT}" y="16" font-size="12" font-weight="700" fill="#1d2330">'
               f"{esc(truncate(key, 70))}</text>")  # fmt: skip
    for node_id, (steps, values) in sorted(lines.items()):
        color = PALETTE[lanes.get(node_id, 0) % len(PALETTE)]
        ok = np.isfinite(values)
        runs: list[list[str]] = [[]]
        for step, value, good in zip(steps.tolist(), values.tolist(), ok.tolist(), strict=True):
            if good:
                runs[-1].append(f"{fmt(x(step))},{fmt(y(value))}")
            elif runs[-1]:
                runs.append([])  # NaN / inf: a gap in the line
        for part in runs:
            if len(part) == 1:
                cx, cy = part[0].split(",")
                out.append(f'<circle class="rt-line" data-node="{node_id}" cx="{cx}" cy="{cy}" '
                           f'r="1.5" fill="{color}"/>')  # fmt: skip
            elif part:
                out.append(f'<polyline class="rt-line" data-node="{node_id}" fill="none" '
                           f'stroke="{color}" stroke-width="1.4" points="{" ".join(part)}">'
                           f"<title>n{node_id}</title></polyline>")  # fmt: skip
    radius = "3.2" if len(nodes) <= 40 else "2"
    for node in nodes:
        if node.parent is None:
            continue
        value = _value_at(points.get(node.parent), node.start_step)
        if value is None or not np.isfinite(value):
            continue
        color = PALETTE[lanes.get(node.id, 0) % len(PALETTE)]
        label = f"n{node.id} at step {node.start_step}: {edge_label(node.change_kind, node.diff)}"
        cx = fmt(x(node.start_step))
        out.append(f'<circle class="rt-change" data-node="{node.id}" cx="{cx}" '
                   f'cy="{fmt(y(value))}" r="{radius}" fill="#fff" stroke="{color}" '
                   'stroke-width="1.6">'
                   f"<title>{esc(label)}</title></circle>")  # fmt: skip
    out.append("</svg>")
    return ChartPicture("".join(out), total, drawn, nonfinite)

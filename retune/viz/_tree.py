"""The tuning tree as an SVG picture: steps on x, one lane per branch, diffs on the edges.

One picture serves the dashboard (``GET /api/runs/{run}/tree.svg``), the notebook
(:func:`retune.plot_tree`), ``retune tree RUN --svg FILE`` and ``retune report``. Pure Python,
no plotting library. :func:`tree_svg_of` draws a :class:`~retune.session.RunSnapshot`;
:func:`tree_svg` reads one from a store first.

What the SVG promises to the pages that embed it (the dashboard's script hooks these):

* every node is a ``<g class="rt-node" data-node="ID">`` (also ``data-label="nID"``,
  ``data-lane``, ``data-start``, ``data-end``, ``data-kind``, and ``data-value`` when it has a
  value of the colour metric); the best one also has class ``rt-best``, the one training now
  ``rt-current``;
* every edge is a ``<g class="rt-edge" data-edge="PARENT-CHILD">`` whose ``data-diff`` is the
  change (``lr 0.001 -> 0.0003``), also written in a ``<text class="rt-diff">`` where it fits
  before the next label of its lane (cut short with an ellipsis, or left out when crowded:
  zoom in, or read the edge's ``<title>``); a branch (restore, or a second child) also has
  class ``rt-branch``;
* a collapsed chain is a ``<g class="rt-chain" data-chain="FIRST-LAST" data-count="N">``
  segment with a count badge, followed by ``<g class="rt-chain-members" data-chain=...
  display="none">`` holding its nodes and inner edges (show it to expand the chain);
* each lane has a ``<rect class="rt-lane" data-lane="N">`` swatch at the left, in the colour
  the report's charts draw that lane's curves with;
* the root ``<svg class="retune-tree">`` has a ``viewBox`` (zoom and pan by changing it), and
  its ``<style>`` rules are all scoped under ``.retune-tree``.

Every name (run, metric, tunable, value) is escaped; the output parses as XML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from retune._format import diff_text, number
from retune.errors import InvalidArgument
from retune.session._tree import TreeNode, lower_is_better
from retune.store import LIVE_STATUSES
from retune.viz._layout import Chain, Edge, NodeBox, TreeLayout, layout_tree
from retune.viz._svg import PALETTE, esc, fmt, lerp_color, nice_ticks, truncate

if TYPE_CHECKING:
    from retune.session._snapshot import RunSnapshot
    from retune.store import Store

__all__ = ["AUTO_COLLAPSE", "TreePicture", "default_metric", "tree_picture", "tree_svg",
           "tree_svg_of"]  # fmt: skip

Goal = Literal["min", "max"]

AUTO_COLLAPSE = 120
"""With ``collapse_chains=None``, chains are collapsed when the tree has more nodes than this."""

LANE_H = 34
TOP = 40
BOTTOM = 30
LEFT = 24
RIGHT = 56
LABEL_CHARS = 42
NO_VALUE = "#9aa3b2"

_STYLE = """
.retune-tree { font: 11px system-ui, sans-serif; }
.retune-tree .rt-bg { fill: #fff; }
.retune-tree .rt-grid { stroke: #eceef2; stroke-width: 1; }
.retune-tree .rt-axis { fill: #6b7385; font-size: 10px; }
.retune-tree .rt-legend { fill: #1d2330; }
.retune-tree .rt-muted { fill: #6b7385; }
.retune-tree .rt-seg { stroke-width: 5; stroke-linecap: round; }
.retune-tree .rt-best-mark { stroke: #1d2330; stroke-width: 10; stroke-linecap: round; }
.retune-tree .rt-best .rt-name { font-weight: 700; }
.retune-tree .rt-halo { stroke: #3157d5; stroke-opacity: .28; stroke-width: 14;
  stroke-linecap: round; }
.retune-tree .rt-now { fill: #fff; stroke: #3157d5; stroke-width: 2.5; }
.retune-tree .rt-current .rt-name { fill: #3157d5; font-weight: 700; }
.retune-tree .rt-name { fill: #1d2330; font-size: 10px; }
.retune-tree .rt-link { fill: none; stroke: #8a93a6; stroke-width: 1.5; }
.retune-tree .rt-tick { stroke: #1d2330; stroke-width: 1.5; }
.retune-tree .rt-diff { fill: #3157d5; font-size: 10px; }
.retune-tree .rt-chain-seg { stroke-dasharray: 10 3; }
.retune-tree .rt-badge { fill: #fff; stroke: #8a93a6; }
.retune-tree .rt-count { fill: #1d2330; font-size: 10px; text-anchor: middle; }
.retune-tree .rt-node, .retune-tree .rt-chain { cursor: pointer; }
"""


def default_metric(keys: Sequence[str]) -> str | None:
    """The metric a picture colours by when none is chosen: validation losses first, then
    other losses, then the first name; ``None`` without metrics (``_format``'s preference)."""
    ranked = sorted(keys, key=lambda k: (not k.startswith("val"), "loss" not in k, k))
    return ranked[0] if ranked else None


def last_steps(snapshot: RunSnapshot) -> dict[int, int]:
    """Node id -> the last step it has a point for, over every metric."""
    out: dict[int, int] = {}
    for series in snapshot.series.values():
        if not len(series):
            continue
        ids, inverse = np.unique(series.nodes, return_inverse=True)
        highest = np.full(len(ids), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(highest, inverse, series.steps.astype(np.int64))
        for node_id, step in zip(ids.tolist(), highest.tolist(), strict=True):
            out[node_id] = max(out.get(node_id, step), step)
    return out


def current_node(snapshot: RunSnapshot, nodes: Sequence[TreeNode]) -> int | None:
    """The node a live run is training now (its newest open node); ``None`` for ended runs."""
    if snapshot.status not in LIVE_STATUSES:
        return None
    return max((n.id for n in nodes if n.end_step is None), default=None)


@dataclass(frozen=True)
class TreePicture:
    """A drawn tree: the SVG text and what went into it."""

    svg: str
    layout: TreeLayout
    color_by: str | None
    goal: Goal
    best: int | None
    current: int | None
    values: dict[int, float] = field(default_factory=dict)


def _values(nodes: Sequence[TreeNode], key: str | None) -> dict[int, float]:
    if key is None:
        return {}
    out = {}
    for node in nodes:
        last = node.metrics.get(key, {}).get("last")
        if last is not None and math.isfinite(last):
            out[node.id] = float(last)
    return out


class _Canvas:
    """Step/lane -> pixel mapping."""

    def __init__(self, layout: TreeLayout, width: float) -> None:
        self.layout = layout
        self.width = width
        self.height = TOP + max(1, layout.lanes) * LANE_H + BOTTOM
        span = max(1, layout.max_step - layout.min_step)
        self.scale = (width - LEFT - RIGHT) / span

    def x(self, step: int) -> float:
        return LEFT + (step - self.layout.min_step) * self.scale

    def y(self, lane: int) -> float:
        return TOP + lane * LANE_H + LANE_H * 0.6


def _auto_width(layout: TreeLayout) -> int:
    shown: dict[int, int] = {}
    for box in layout.nodes:
        if box.chain is None:
            shown[box.lane] = shown.get(box.lane, 0) + 1
    for chain in layout.chains:
        shown[chain.lane] = shown.get(chain.lane, 0) + 1
    busiest = max(shown.values(), default=1)
    return int(min(6000, max(720, 90 * busiest + LEFT + RIGHT)))


CHAR_PX = 5.8  # about one character of the 10px labels


def _room(slots: Sequence[tuple[int, float, object]], right: float) -> dict[object, float]:
    """For labels at ``(lane, x, id)``: the pixels each has before the next label on its lane."""
    out: dict[object, float] = {}
    by_lane: dict[int, list[tuple[float, object]]] = {}
    for lane, x, ident in slots:
        by_lane.setdefault(lane, []).append((x, ident))
    for items in by_lane.values():
        items.sort(key=lambda item: item[0])
        for (x, ident), (nxt, _) in zip(items, [*items[1:], (right, None)], strict=True):
            out[ident] = nxt - x - 4
    return out


def _fit(text: str, pixels: float) -> str:
    """``text`` cut to what ``pixels`` hold; empty when not even a few characters fit."""
    chars = min(LABEL_CHARS, int(pixels / CHAR_PX))
    if chars >= len(text):
        return text
    return truncate(text, chars) if chars >= 6 else ""


def _node_title(node: TreeNode, box: NodeBox, key: str | None) -> str:
    end = "…" if box.open else str(box.end)
    parts = [f"{node.label} steps {node.start_step}..{end}", node.change_kind]
    if node.diff:
        parts.append(diff_text(node.diff))
    for name in sorted(node.metrics)[:6]:
        parts.append(f"{name} {number(node.metrics[name].get('last'))}")
    if key is not None and key in node.metrics:
        parts.append(f"(colour: last {key})")
    if node.checkpoints:
        parts.append("checkpoints " + ", ".join(node.checkpoints[:6]))
    return " · ".join(parts)


def _draw_node(
    out: list[str],
    canvas: _Canvas,
    node: TreeNode,
    box: NodeBox,
    *,
    color: str,
    value: float | None,
    best: bool,
    current: bool,
    key: str | None,
    named: bool,
) -> None:
    x1, x2, y = canvas.x(box.start), canvas.x(box.end), canvas.y(box.lane)
    classes = ["rt-node"]
    if box.open:
        classes.append("rt-open")
    if best:
        classes.append("rt-best")
    if current:
        classes.append("rt-current")
    value_attr = "" if value is None else f' data-value="{esc(repr(value))}"'
    out.append(
        f'<g class="{" ".join(classes)}" data-node="{box.id}" data-label="n{box.id}" '
        f'data-lane="{box.lane}" data-start="{box.start}" data-end="{box.end}" '
        f'data-kind="{esc(node.change_kind)}"{value_attr}>'
        f"<title>{esc(_node_title(node, box, key))}</title>"
    )
    if current:
        out.append(f'<line class="rt-halo" x1="{fmt(x1)}" y1="{fmt(y)}" x2="{fmt(x2)}" '
                   f'y2="{fmt(y)}"/>')  # fmt: skip
    if best:
        out.append(f'<line class="rt-best-mark" x1="{fmt(x1)}" y1="{fmt(y)}" '
                   f'x2="{fmt(max(x2, x1 + 0.5))}" y2="{fmt(y)}"/>')  # fmt: skip
    out.append(f'<line class="rt-seg" x1="{fmt(x1)}" y1="{fmt(y)}" x2="{fmt(max(x2, x1 + 0.5))}" '
               f'y2="{fmt(y)}" stroke="{color}"/>')  # fmt: skip
    out.append(f'<circle cx="{fmt(x1)}" cy="{fmt(y)}" r="3.5" fill="{color}"/>')
    if current:
        out.append(f'<circle class="rt-now" cx="{fmt(x2)}" cy="{fmt(y)}" r="5"/>')
    if named or best or current:
        out.append(f'<text class="rt-name" x="{fmt(x1 + 2)}" y="{fmt(y + 16)}">n{box.id}'
                   f"{' (now)' if current else ''}{' (best)' if best else ''}</text>")  # fmt: skip
    out.append("</g>")


def _draw_edge(out: list[str], canvas: _Canvas, edge: Edge, room: float) -> None:
    x = canvas.x(edge.step)
    yp, yc = canvas.y(edge.parent_lane), canvas.y(edge.child_lane)
    classes = "rt-edge rt-branch" if edge.branch else "rt-edge"
    title = f"n{edge.parent} -> n{edge.child} at step {edge.step}: {edge.label}"
    out.append(
        f'<g class="{classes}" data-edge="{edge.parent}-{edge.child}" data-parent="{edge.parent}" '
        f'data-child="{edge.child}" data-step="{edge.step}" data-kind="{esc(edge.kind)}" '
        f'data-diff="{esc(edge.label)}">'
        f"<title>{esc(title)}</title>"
    )
    if edge.branch:
        bend = (yc - yp) * 0.5
        out.append(f'<path class="rt-link" d="M{fmt(x)} {fmt(yp)} C{fmt(x)} {fmt(yp + bend)} '
                   f'{fmt(x)} {fmt(yc - bend)} {fmt(x)} {fmt(yc)}"/>')  # fmt: skip
        out.append(f'<circle cx="{fmt(x)}" cy="{fmt(yp)}" r="2.5" fill="#8a93a6"/>')
    else:
        out.append(f'<line class="rt-tick" x1="{fmt(x)}" y1="{fmt(yc - 6)}" x2="{fmt(x)}" '
                   f'y2="{fmt(yc + 6)}"/>')  # fmt: skip
    shown = _fit(edge.label, room)
    if shown:
        out.append(f'<text class="rt-diff" x="{fmt(x + 3)}" y="{fmt(yc - 8)}">{esc(shown)}</text>')
    out.append("</g>")


def _draw_chain(out: list[str], canvas: _Canvas, chain: Chain, color: str) -> None:
    x1, x2, y = canvas.x(chain.start), canvas.x(chain.end), canvas.y(chain.lane)
    count = len(chain.members)
    mid = (x1 + x2) / 2
    title = (f"n{chain.first}..n{chain.last}: {count} nodes, one after another "
             f"(steps {chain.start}..{chain.end}); expand to see each")  # fmt: skip
    out.append(
        f'<g class="rt-chain" data-chain="{chain.first}-{chain.last}" data-count="{count}" '
        f'data-first="{chain.first}" data-last="{chain.last}" data-lane="{chain.lane}" '
        f'data-start="{chain.start}" data-end="{chain.end}"><title>{esc(title)}</title>'
        f'<line class="rt-seg rt-chain-seg" x1="{fmt(x1)}" y1="{fmt(y)}" x2="{fmt(x2)}" '
        f'y2="{fmt(y)}" stroke="{color}"/>'
        f'<rect class="rt-badge" x="{fmt(mid - 18)}" y="{fmt(y - 8)}" width="36" height="16" '
        f'rx="8"/><text class="rt-count" x="{fmt(mid)}" y="{fmt(y + 4)}">\u00d7{count}</text></g>'
    )


def _legend(
    out: list[str],
    title: str,
    *,
    key: str | None,
    goal: Goal,
    values: Mapping[int, float],
    best: int | None,
    current: int | None,
    prefix: str,
) -> None:
    out.append(f'<text class="rt-legend" x="{LEFT}" y="16" font-weight="700">'
               f"{esc(truncate(title, 80))}</text>")  # fmt: skip
    parts = []
    if key is not None and values:
        lo, hi = min(values.values()), max(values.values())
        good, bad = (lo, hi) if goal == "min" else (hi, lo)
        better = "lower" if goal == "min" else "higher"
        parts.append(f"colour: last {truncate(key, 40)} ({better} is better) "
                     f"{number(good)} … {number(bad)}")  # fmt: skip
    elif key is not None:
        parts.append(f"no values of {truncate(key, 40)} yet")
    if best is not None:
        parts.append(f"bold: best n{best}")
    if current is not None:
        parts.append(f"ring: training now n{current}")
    bar_x = LEFT
    out.append(f'<text class="rt-muted" x="{bar_x + (64 if values else 0)}" y="31">'
               f"{esc(' · '.join(parts))}</text>")  # fmt: skip
    if values:
        out.append(
            f'<defs><linearGradient id="{prefix}-scale"><stop offset="0" stop-color="'
            f'{lerp_color(0)}"/><stop offset=".5" stop-color="{lerp_color(0.5)}"/><stop '
            f'offset="1" stop-color="{lerp_color(1)}"/></linearGradient></defs><rect x="{bar_x}" '
            f'y="23" width="56" height="10" rx="2" fill="url(#{prefix}-scale)"/>'
        )


def _axis(out: list[str], canvas: _Canvas) -> None:
    layout = canvas.layout
    bottom = canvas.height - BOTTOM
    for tick in nice_ticks(layout.min_step, layout.max_step, max(2, int(canvas.width // 120))):
        x = canvas.x(int(tick))
        out.append(f'<line class="rt-grid" x1="{fmt(x)}" y1="{TOP}" x2="{fmt(x)}" '
                   f'y2="{fmt(bottom)}"/><text class="rt-axis" x="{fmt(x)}" y="{fmt(bottom + 14)}" '
                   f'text-anchor="middle">{int(tick):,}</text>')  # fmt: skip
    out.append(f'<text class="rt-axis" x="{fmt(canvas.width - RIGHT + 4)}" y="{fmt(bottom + 14)}">'
               "step</text>")  # fmt: skip


def tree_picture(
    snapshot: RunSnapshot,
    *,
    color_by: str | None = None,
    goal: Goal | None = None,
    width: int | None = None,
    collapse_chains: bool | None = None,
    id_prefix: str = "rt",
) -> TreePicture:
    """Draw ``snapshot``'s tree.

    Args:
        color_by: the metric whose last value in each node colours it (green best, red
            worst, grey without a value); default :func:`default_metric` of the run's keys.
        goal: ``"min"`` or ``"max"``: which end of the metric is best; default from its name
            (``acc``, ``auc``, ``f1``, ``score`` are maximised, anything else minimised).
        width: the picture's width in pixels; default grows with the busiest lane (720 to
            6000). The height is one lane per concurrent branch.
        collapse_chains: fold runs of at least 3 consecutive single-child ``set``/``scale``
            nodes into one segment with a count badge (their nodes stay in the SVG, hidden);
            default: when the tree has more than :data:`AUTO_COLLAPSE` nodes. The best and the
            current node are never folded.
        id_prefix: prefix of the few ``id`` attributes (the colour gradient), for pages that
            show several pictures.

    Raises:
        InvalidArgument: an unknown ``color_by`` metric, a bad ``goal`` or ``width``.
    """
    keys = sorted(snapshot.series)
    if color_by is not None and color_by not in snapshot.series:
        known = ", ".join(repr(k) for k in keys) or "none"
        raise InvalidArgument(f"run {snapshot.name} has no metric {color_by!r} (it has: {known})")
    if goal not in (None, "min", "max"):
        raise InvalidArgument(f"goal must be 'min' or 'max', got {goal!r}")
    if width is not None and not 200 <= width <= 100_000:
        raise InvalidArgument(f"width must be between 200 and 100000 pixels, got {width}")
    key = color_by if color_by is not None else default_metric(keys)
    chosen: Goal = goal if goal is not None else (
        "min" if key is None or lower_is_better(key) else "max"
    )  # fmt: skip
    nodes = snapshot.tree()
    current = current_node(snapshot, nodes)
    values = _values(nodes, key)
    best = None
    if values:
        sign = 1.0 if chosen == "min" else -1.0
        best = min(values, key=lambda n: (sign * values[n], n))  # ties: the earliest node
    collapse = len(nodes) > AUTO_COLLAPSE if collapse_chains is None else collapse_chains
    keep = {n for n in (current, best) if n is not None}
    layout = layout_tree(nodes, last_steps=last_steps(snapshot), now_step=snapshot.run.step,
                         current=current, collapse_chains=collapse, keep=keep)  # fmt: skip
    canvas = _Canvas(layout, width if width is not None else _auto_width(layout))
    lo, hi = (min(values.values()), max(values.values())) if values else (0.0, 0.0)

    def color_of(node_id: int) -> str:
        if node_id not in values:
            return NO_VALUE
        t = 0.0 if hi == lo else (values[node_id] - lo) / (hi - lo)
        return lerp_color(t if chosen == "min" else 1 - t)

    w, h = fmt(canvas.width), fmt(canvas.height)
    title = f"{snapshot.name} ({snapshot.id}), {snapshot.status}: {len(nodes)} nodes"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="retune-tree" viewBox="0 0 {w} {h}" '
        f'width="{w}" height="{h}" role="img" data-run="{esc(snapshot.id)}" '
        f'data-nodes="{len(nodes)}" data-lanes="{layout.lanes}">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style>",
        f'<rect class="rt-bg" width="{w}" height="{h}"/>',
    ]
    _axis(out, canvas)
    _legend(out, f"{snapshot.name} · {len(nodes)} nodes", key=key, goal=chosen, values=values,
            best=best, current=current, prefix=id_prefix)  # fmt: skip
    for lane in range(layout.lanes):  # the lane's colour in the report's charts
        swatch = PALETTE[lane % len(PALETTE)]
        out.append(f'<rect class="rt-lane" data-lane="{lane}" x="4" y="{fmt(canvas.y(lane) - 4)}" '
                   f'width="8" height="8" rx="2" fill="{swatch}"/>')  # fmt: skip
    by_id = {n.id: n for n in nodes}
    members: list[list[str]] = [[] for _ in layout.chains]
    # labels are written where they fit before the next one on their lane: among what is
    # shown for visible things, among everything for the members of a (hidden) chain
    right = canvas.width - 4
    badges = [(c.lane, canvas.x((c.start + c.end) // 2) - 20, ("chain", i))
              for i, c in enumerate(layout.chains)]  # fmt: skip
    shown = [(e.child_lane, canvas.x(e.step), e.child) for e in layout.edges if e.chain is None]
    diff_room = _room([*shown, *badges], right)
    diff_all = _room([(e.child_lane, canvas.x(e.step), e.child) for e in layout.edges], right)
    names = [(b.lane, canvas.x(b.start), b.id) for b in layout.nodes if b.chain is None]
    name_room = _room(names, right)
    name_all = _room([(b.lane, canvas.x(b.start), b.id) for b in layout.nodes], right)
    out.append('<g class="rt-edges">')
    for edge in layout.edges:
        inner = edge.chain is not None
        _draw_edge(members[edge.chain] if edge.chain is not None else out, canvas, edge,
                   (diff_all if inner else diff_room)[edge.child])  # fmt: skip
    out.append('</g><g class="rt-nodes">')
    for box in layout.nodes:
        room = (name_all if box.chain is not None else name_room)[box.id]
        _draw_node(members[box.chain] if box.chain is not None else out, canvas, by_id[box.id],
                   box, color=color_of(box.id), value=values.get(box.id), best=box.id == best,
                   current=box.id == current, key=key,
                   named=room >= CHAR_PX * (len(str(box.id)) + 1))  # fmt: skip
    out.append("</g>")
    for index, chain in enumerate(layout.chains):
        _draw_chain(out, canvas, chain, color_of(chain.last))
        out.append(f'<g class="rt-chain-members" data-chain="{chain.first}-{chain.last}" '
                   f'display="none">{"".join(members[index])}</g>')  # fmt: skip
    out.append("</svg>")
    return TreePicture("".join(out), layout, key, chosen, best, current, values)


def tree_svg_of(snapshot: RunSnapshot, **options: object) -> str:
    """The SVG text of :func:`tree_picture` (same options)."""
    return tree_picture(snapshot, **options).svg  # type: ignore[arg-type]


def tree_svg(
    store: Store,
    run_id: str,
    *,
    color_by: str | None = None,
    goal: Goal | None = None,
    width: int | None = None,
    collapse_chains: bool | None = None,
) -> str:
    """The tree of run ``run_id`` (id, or name for the latest run of that name) in ``store``,
    as SVG text; options as :func:`tree_picture`. Raises ``RunNotFound`` for an unknown run."""
    from retune.session._snapshot import read_snapshot

    snapshot = read_snapshot(store, run_id)
    return tree_picture(snapshot, color_by=color_by, goal=goal, width=width,
                        collapse_chains=collapse_chains).svg  # fmt: skip

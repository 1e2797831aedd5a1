"""Where each node of a tuning tree goes in the picture: steps on x, one lane per branch.

Pure functions of the tree (``retune.session._tree.TreeNode``); nothing here draws or reads a
store, so the layout is tested on its own. Coordinates are steps and lane numbers; the SVG
renderer (:mod:`retune.viz._tree`) maps them to pixels.

A *track* is a node followed by its continuation child, that child's continuation, and so on:
a training line that went on in the same process from where its parent stopped (``set``,
``scale``, ``resume``). A child that starts elsewhere (a ``restore``, or a second child) starts
a new track. Each track takes one lane; a lane is reused once the tracks on it have ended
(lane compaction), so a 500-node run with a few live branches needs a few lanes, not 500.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from retune._format import diff_text
from retune.session._tree import TreeNode

__all__ = ["Chain", "Edge", "NodeBox", "TreeLayout", "edge_label", "layout_tree"]

CONTINUING_KINDS = frozenset({"set", "scale", "resume", "guard", "explore"})
"""Changes that may continue training from where the parent stopped; a child of these kinds
continues its parent's track only when it starts at or after the parent's end (a ``guard`` or
``explore`` node that went back to an earlier checkpoint is a branch, like a ``restore``)."""

MIN_CHAIN = 3
"""The fewest nodes :func:`layout_tree` collapses into one chain segment."""


@dataclass(frozen=True)
class NodeBox:
    """One node placed: a segment from ``start`` to ``end`` (steps) on lane ``lane``.

    ``end`` is the node's ``end_step``, or for an open node the last step it has points for
    (the run's step for the node training now). ``chain`` is the index in
    :attr:`TreeLayout.chains` of the collapsed chain the node is drawn inside, else ``None``.
    """

    id: int
    parent: int | None
    lane: int
    start: int
    end: int
    open: bool
    chain: int | None = None


@dataclass(frozen=True)
class Edge:
    """The change that made ``child``: from ``parent``'s lane at ``step`` to ``child``'s lane.

    ``branch`` is true when the child starts a new track (a restore, or a second child);
    false for a continuation on the same lane. ``label`` is the diff as text (``lr 0.001 ->
    0.0003``), or the kind of change when nothing changed.
    """

    parent: int
    child: int
    step: int
    parent_lane: int
    child_lane: int
    kind: str
    label: str
    branch: bool
    chain: int | None = None


@dataclass(frozen=True)
class Chain:
    """Consecutive single-child continuation nodes drawn as one segment with a count."""

    members: tuple[int, ...]
    lane: int
    start: int
    end: int

    @property
    def first(self) -> int:
        return self.members[0]

    @property
    def last(self) -> int:
        return self.members[-1]


@dataclass(frozen=True)
class TreeLayout:
    """Every node and edge of the tree, placed. ``nodes`` and ``edges`` are in node-id order."""

    nodes: tuple[NodeBox, ...]
    edges: tuple[Edge, ...]
    chains: tuple[Chain, ...]
    lanes: int
    min_step: int
    max_step: int

    def node(self, node_id: int) -> NodeBox:
        for box in self.nodes:
            if box.id == node_id:
                return box
        raise KeyError(node_id)


def edge_label(kind: str, diff: Mapping[str, object]) -> str:
    """What an edge says: the diff (``lr 0.001 -> 0.0003``), prefixed by ``restore`` /
    ``resume`` for those changes; the bare kind when nothing changed."""
    text = diff_text(diff) if diff else ""
    if kind in ("set", "scale", "start"):
        return text or kind
    return f"{kind} {text}".rstrip()


def _ends(
    nodes: Sequence[TreeNode],
    last_steps: Mapping[int, int],
    now_step: int | None,
    current: int | None,
) -> dict[int, int]:
    by_id = {n.id: n for n in nodes}
    ends: dict[int, int] = {}
    for node in nodes:
        if node.end_step is not None:
            ends[node.id] = max(node.start_step, node.end_step)
            continue
        candidates = [node.start_step, last_steps.get(node.id, node.start_step)]
        candidates += [by_id[c].start_step for c in node.children if c in by_id]
        if node.id == current and now_step is not None:
            candidates.append(now_step)
        ends[node.id] = max(candidates)
    return ends


def _continuations(nodes: Sequence[TreeNode], ends: Mapping[int, int]) -> dict[int, int]:
    """parent id -> the child that continues its track (at most one per parent)."""
    by_id = {n.id: n for n in nodes}
    out: dict[int, int] = {}
    for node in nodes:
        for child_id in sorted(node.children):
            child = by_id.get(child_id)
            if child is None:
                continue
            if child.change_kind in CONTINUING_KINDS and child.start_step >= ends[node.id]:
                out[node.id] = child_id
                break
    return out


def _preorder(nodes: Sequence[TreeNode], continuation: Mapping[int, int]) -> list[int]:
    """Node ids depth first, each node's continuation before its branches (iterative: a
    10,000-node chain must not hit the recursion limit)."""
    by_id = {n.id: n for n in nodes}
    order: list[int] = []
    roots = [n.id for n in nodes if n.parent is None or n.parent not in by_id]
    stack = list(reversed(roots))
    while stack:
        node_id = stack.pop()
        order.append(node_id)
        children = [c for c in by_id[node_id].children if c in by_id]
        first = continuation.get(node_id)
        ordered = ([first] if first is not None else []) + sorted(c for c in children if c != first)
        stack.extend(reversed(ordered))
    return order


class _Lane:
    """The step ranges taken on one lane, sorted and disjoint: a free test is one bisection."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def free(self, lo: int, hi: int) -> bool:
        at = bisect.bisect_right(self.starts, hi)  # spans starting at or before hi
        return at == 0 or self.ends[at - 1] < lo

    def take(self, lo: int, hi: int) -> None:
        at = bisect.bisect_right(self.starts, lo)
        self.starts.insert(at, lo)
        self.ends.insert(at, hi)


def layout_tree(
    nodes: Sequence[TreeNode],
    *,
    last_steps: Mapping[int, int] | None = None,
    now_step: int | None = None,
    current: int | None = None,
    collapse_chains: bool = False,
    keep: Collection[int] = (),
) -> TreeLayout:
    """Place every node of ``nodes`` (as :func:`retune.session._tree.build_tree` returns them).

    Args:
        nodes: the tree's nodes, any order; a node whose parent is missing is drawn as a root.
        last_steps: node id -> the last step it has metric points for; gives open nodes a
            length (an open node otherwise ends at its last child's start).
        now_step: the run's current step; the ``current`` node extends to it.
        current: the node training now, if the run is live.
        collapse_chains: draw each run of at least :data:`MIN_CHAIN` consecutive single-child
            continuation nodes as one :class:`Chain` (their boxes and inner edges still exist,
            with ``chain`` set, so a viewer can expand them).
        keep: nodes never folded into a chain (the current node, the best node).

    Returns:
        A :class:`TreeLayout`. Lanes are numbered from 0 (the root's); every track gets the
        lowest lane that is free over its whole step range, with a small gap between tracks.
    """
    last_steps = last_steps or {}
    by_id = {n.id: n for n in nodes}
    if not nodes:
        return TreeLayout((), (), (), 0, 0, 0)
    ends = _ends(nodes, last_steps, now_step, current)
    continuation = _continuations(nodes, ends)
    order = _preorder(nodes, continuation)
    continued = set(continuation.values())

    tracks: list[list[int]] = []  # each a list of node ids, heads in preorder
    for node_id in order:
        if node_id in continued:
            continue
        track = [node_id]
        while track[-1] in continuation:
            track.append(continuation[track[-1]])
        tracks.append(track)

    min_step = min(n.start_step for n in nodes)
    max_step = max(ends.values())
    gap = max(1, (max_step - min_step) // 200)  # tracks on one lane never touch
    lanes: list[_Lane] = []
    lane_of: dict[int, int] = {}
    for track in tracks:
        lo, hi = by_id[track[0]].start_step - gap, ends[track[-1]] + gap
        lane = next((i for i, spans in enumerate(lanes) if spans.free(lo, hi)), len(lanes))
        if lane == len(lanes):
            lanes.append(_Lane())
        lanes[lane].take(lo, hi)
        for node_id in track:
            lane_of[node_id] = lane

    chain_of: dict[int, int] = {}
    chains: list[Chain] = []
    if collapse_chains:
        kept = set(keep)

        def fold(run: list[int]) -> None:
            if len(run) >= MIN_CHAIN:
                chain = Chain(tuple(run), lane_of[run[0]], by_id[run[0]].start_step, ends[run[-1]])
                chain_of.update((m, len(chains)) for m in run)
                chains.append(chain)

        for track in tracks:
            run: list[int] = []
            for node_id in track:
                if node_id in kept:
                    fold(run)
                    run = []
                elif run and len(by_id[run[-1]].children) == 1:
                    run.append(node_id)  # only the last member may have branches
                else:
                    fold(run)
                    run = [node_id]
            fold(run)

    boxes = tuple(
        NodeBox(
            n.id,
            n.parent if n.parent in by_id else None,
            lane_of[n.id],
            n.start_step,
            ends[n.id],
            n.end_step is None,
            chain_of.get(n.id),
        )
        for n in sorted(nodes, key=lambda n: n.id)
    )
    edges = []
    for node in sorted(nodes, key=lambda n: n.id):
        if node.parent is None or node.parent not in by_id:
            continue
        inner = chain_of.get(node.id)
        if inner is not None and chains[inner].first == node.id:
            inner = None  # the edge into a chain stays visible
        edges.append(
            Edge(
                node.parent,
                node.id,
                node.start_step,
                lane_of[node.parent],
                lane_of[node.id],
                node.change_kind,
                edge_label(node.change_kind, node.diff),
                continuation.get(node.parent) != node.id,
                inner,
            )
        )
    return TreeLayout(boxes, tuple(edges), tuple(chains), len(lanes), min_step, max_step)

"""The tree as a picture: every node and edge of a 500-node run in a well-formed SVG, diffs on
the edges, the best node bold, the node training now highlighted, hostile names escaped, and
the layout's lanes (tested on small hand-made trees)."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import retune
from retune.errors import InvalidArgument
from retune.session._snapshot import read_snapshot
from retune.session._tree import TreeNode
from retune.viz import layout_tree, plot_tree, tree_picture
from retune.viz._layout import edge_label
from tests.viz.conftest import BigRun

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on anything not well-formed


def _groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


@pytest.fixture(scope="module")
def snapshot(big_run: BigRun) -> retune.RunSnapshot:
    return read_snapshot(big_run.store, big_run.run_id)


@pytest.mark.parametrize("collapse", [True, False])
def test_every_node_and_edge_of_500_is_in_the_svg(
    big_run: BigRun, snapshot: retune.RunSnapshot, collapse: bool
) -> None:
    root = _parse(tree_picture(snapshot, collapse_chains=collapse).svg)
    nodes = {int(g.get("data-node", "0")) for g in _groups(root, "rt-node")}
    assert len(_groups(root, "rt-node")) == 500
    assert nodes == {n.id for n in big_run.store.list_nodes(big_run.run_id)}
    edges = {g.get("data-edge") for g in _groups(root, "rt-edge")}
    expected = {f"{n.parent}-{n.id}" for n in snapshot.nodes if n.parent is not None}
    assert len(_groups(root, "rt-edge")) == 499 and edges == expected
    chains = _groups(root, "rt-chain")
    if not collapse:
        assert not chains
        return
    assert chains, "a 500-node run has chains of set changes to fold"
    members = {m.get("data-chain"): m for m in _groups(root, "rt-chain-members")}
    for chain in chains:  # each fold holds exactly its count of nodes, hidden until expanded
        hidden = members[chain.get("data-chain")]
        assert hidden.get("display") == "none"
        assert len(_groups(hidden, "rt-node")) == int(chain.get("data-count", "0")) >= 3


def test_edges_carry_their_diff(big_run: BigRun, snapshot: retune.RunSnapshot) -> None:
    root = _parse(tree_picture(snapshot, collapse_chains=False).svg)
    by_id = {n.id: n for n in snapshot.nodes}
    written = 0
    for edge in _groups(root, "rt-edge"):
        child = by_id[int(edge.get("data-child", "0"))]
        label = edge_label(child.change_kind, child.diff)
        # escaped on the way in, the same text on the way out (XML-illegal bytes as U+FFFD)
        assert edge.get("data-diff") == label.replace("\x01", "\ufffd")
        assert "->" in label and big_run.tunable[:2] in label
        text = edge.find(f"{SVG}text")
        if text is not None:  # written where it fits, cut short with an ellipsis otherwise
            written += 1
            shown = text.text or ""
            assert label.replace("\x01", "\ufffd").startswith(shown.removesuffix("…"))
    assert written >= 100, "most edges of a 500-node tree have their diff written on them"
    assert "restore" in {e.get("data-kind") for e in _groups(root, "rt-edge")}


def _best_by_last_value(big_run: BigRun, key: str) -> int:
    """Independently of the renderer: each node's last point of ``key``; the highest wins."""
    series = big_run.store.read_metric(big_run.run_id, key)
    last: dict[int, tuple[int, float]] = {}
    for node, step, value in zip(series.nodes, series.steps, series.values, strict=True):
        if int(node) not in last or step >= last[int(node)][0]:
            last[int(node)] = (int(step), float(value))
    return max(sorted(last), key=lambda n: last[n][1])


def test_best_node_bold_and_current_node_highlighted(
    big_run: BigRun, snapshot: retune.RunSnapshot
) -> None:
    accuracy = big_run.keys[1]  # "val/acc ...": higher is better, from its name
    picture = tree_picture(snapshot, color_by=accuracy)
    root = _parse(picture.svg)
    best = _groups(root, "rt-best")
    assert [int(b.get("data-node", "0")) for b in best] == [_best_by_last_value(big_run, accuracy)]
    assert picture.goal == "max" and best[0].find(f"{SVG}line[@class='rt-best-mark']") is not None
    current = _groups(root, "rt-current")
    open_nodes = [n.id for n in snapshot.nodes if n.end_step is None]
    assert [int(c.get("data-node", "0")) for c in current] == [max(open_nodes)] == [500]
    assert _groups(current[0], "rt-halo") and _groups(current[0], "rt-now")
    # neither is folded away into a chain
    for hidden in _groups(root, "rt-chain-members"):
        assert not _groups(hidden, "rt-best") and not _groups(hidden, "rt-current")
    # the colour scale follows the values: the best node is the scale's green end
    assert best[0].find(f"{SVG}line[@class='rt-seg']").get("stroke") == "#1f8a4c"  # type: ignore[union-attr]
    lowest = tree_picture(snapshot, color_by=accuracy, goal="min")
    assert lowest.best != picture.best


def test_hostile_names_are_escaped(big_run: BigRun, snapshot: retune.RunSnapshot) -> None:
    svg = tree_picture(snapshot, color_by=big_run.keys[1]).svg
    root = _parse(svg)
    assert "<script" not in svg and not [e for e in root.iter() if "script" in e.tag]
    title = root.find(f"{SVG}title")
    assert title is not None and 'big <script>alert("x")</script>&\'"]]>\ufffd' in (
        title.text or ""
    )
    assert root.get("data-run") == big_run.run_id


def test_unknown_colour_metric_is_a_clear_error(snapshot: retune.RunSnapshot) -> None:
    with pytest.raises(InvalidArgument, match="has no metric 'nope'"):
        tree_picture(snapshot, color_by="nope")
    with pytest.raises(InvalidArgument, match="goal"):
        tree_picture(snapshot, goal="best")  # type: ignore[arg-type]


def test_plot_tree_shows_itself_in_a_notebook(big_run: BigRun) -> None:
    figure = retune.plot_tree(big_run.run_id, big_run.store, collapse_chains=True)
    assert len(repr(figure)) < 200 and "500 nodes" in repr(figure)
    assert figure._repr_svg_().startswith("<svg")
    assert figure._repr_html_().count("<svg") == 1
    from_snapshot = plot_tree(read_snapshot(big_run.store, big_run.run_id))
    assert len(re.findall(r'class="rt-node[ "]', from_snapshot.svg)) == 500
    with pytest.raises(InvalidArgument, match="plot_tree takes"):
        plot_tree(42)


def test_import_retune_does_not_load_the_drawing_code() -> None:
    code = "import sys, retune; assert 'retune.viz' not in sys.modules, 'loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the layout on hand-made trees ---------------------------------------------------------
def _node(id: int, parent: int | None, start: int, end: int | None, kind: str = "set") -> TreeNode:
    return TreeNode(id, parent, (), start, end, kind, {}, {"lr": [0.1, 0.01]}, None, 0.0, ())


def _tree(*nodes: TreeNode) -> list[TreeNode]:
    children: dict[int, list[int]] = {n.id: [] for n in nodes}
    for n in nodes:
        if n.parent is not None:
            children[n.parent].append(n.id)
    return [TreeNode(n.id, n.parent, tuple(children[n.id]), n.start_step, n.end_step,
                     n.change_kind, n.values, n.diff, None, 0.0, ()) for n in nodes]  # fmt: skip


def test_a_set_continues_its_lane_and_a_restore_opens_one() -> None:
    layout = layout_tree(_tree(
        _node(1, None, 0, 100, "start"), _node(2, 1, 100, 300), _node(3, 1, 50, 120, "restore"),
    ))  # fmt: skip
    lanes = {b.id: b.lane for b in layout.nodes}
    assert lanes == {1: 0, 2: 0, 3: 1} and layout.lanes == 2
    edges = {(e.parent, e.child): e for e in layout.edges}
    assert not edges[1, 2].branch and edges[1, 3].branch and edges[1, 3].step == 50
    assert edges[1, 2].label == "lr 0.1 -> 0.01" and edges[1, 3].label == "restore lr 0.1 -> 0.01"


def test_lanes_are_reused_once_a_branch_has_ended() -> None:
    # n3 (steps 50..80) has ended long before n4 (400..500) starts: n4 reuses n3's lane
    layout = layout_tree(_tree(
        _node(1, None, 0, 100, "start"), _node(2, 1, 100, 600), _node(3, 1, 50, 80, "restore"),
        _node(4, 2, 400, 500, "restore"), _node(5, 2, 450, 460, "restore"),
    ))  # fmt: skip
    lanes = {b.id: b.lane for b in layout.nodes}
    assert lanes[3] == lanes[4] == 1 and lanes[5] == 2 and layout.lanes == 3


def test_an_open_node_reaches_the_runs_step_and_chains_fold() -> None:
    nodes = _tree(_node(1, None, 0, 10, "start"), *(_node(i, i - 1, 10 * (i - 1), 10 * i)
                  for i in range(2, 9)), _node(9, 8, 80, None))  # fmt: skip
    layout = layout_tree(nodes, now_step=137, current=9, collapse_chains=True, keep={9})
    assert layout.node(9).end == 137 and layout.node(9).open and layout.lanes == 1
    [chain] = layout.chains
    assert chain.members == tuple(range(1, 9)) and (chain.start, chain.end) == (0, 80)
    assert layout.node(9).chain is None  # kept visible
    inner = [e for e in layout.edges if e.chain is not None]
    assert {(e.parent, e.child) for e in inner} == {(i - 1, i) for i in range(2, 9)}
    assert np.all([b.lane == 0 for b in layout.nodes])

"""``branch_mask`` (which points a branch of the tree holds) against its definition, written
out node by node: random trees, points of nodes on and off the path, of nodes the tree does
not have, negative steps, and node ids too sparse for its lookup table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retune.session._tree import branch_mask, path_to
from retune.store import NodeRecord


def _by_definition(path: list[NodeRecord], nodes: np.ndarray, steps: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(steps), dtype=bool)
    for node, child in zip(path, [*path[1:], None], strict=True):
        limit = math.inf if child is None else child.start_step
        mask |= (nodes == node.id) & (steps <= limit)
    return mask


def _tree(rng: np.random.Generator, count: int, spacing: int) -> tuple[NodeRecord, ...]:
    out: list[NodeRecord] = []
    for index in range(count):
        parent = None if index == 0 else out[int(rng.integers(0, index))]
        start = 0 if parent is None else parent.start_step + int(rng.integers(-5, 50))
        out.append(NodeRecord(run_id="r", id=1 + index * spacing,
                              parent=None if parent is None else parent.id,
                              start_step=start, end_step=None, change_kind="set", values={},
                              diff={}, created_by=None, created_at=0.0))  # fmt: skip
    return tuple(out)


@pytest.mark.parametrize("spacing", [1, 3, 10**9])  # dense ids (a run's), sparse, very sparse
@pytest.mark.parametrize("seed", range(12))
def test_branch_mask_keeps_each_path_nodes_points_up_to_where_the_next_starts(
    seed: int, spacing: int
) -> None:
    rng = np.random.default_rng(seed)
    nodes = _tree(rng, int(rng.integers(1, 40)), spacing)
    size = int(rng.integers(0, 3000))
    ids = np.array([n.id for n in nodes] + [0, -7, nodes[-1].id + 1], dtype=np.int64)
    point_nodes = rng.choice(ids, size=size)  # also nodes the tree does not have
    steps = rng.integers(-20, 400, size=size).astype(np.int64)
    for node in nodes:
        path = path_to(nodes, node.id)
        got = branch_mask(path, point_nodes, steps)
        assert got.dtype == np.bool_ and np.array_equal(
            got, _by_definition(path, point_nodes, steps)
        )
    assert not branch_mask([], point_nodes, steps).any()

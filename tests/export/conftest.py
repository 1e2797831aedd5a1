"""Runs for the compare and export tests: one built through the Store API (cheap, every shape
the exports must handle) and one grown by a real training subprocess."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retune.session._tree import branch_mask, path_to
from retune.store import MetricChunk, Store, open_store

TRAINER = Path(__file__).with_name("tree_trainer.py")
ROOT = Path(__file__).parents[2]

TUNABLES: list[dict[str, Any]] = [
    {"name": "lr", "kind": "float", "groups": ["body", "head"]},
    {"name": "weight_decay", "kind": "float", "groups": ["body", "head"]},
    {"name": "betas", "kind": "float", "length": 2, "groups": ["body", "head"]},
    {"name": "clip", "kind": "float", "groups": None},
]


def values(lr: tuple[float, float], wd: float = 0.0, clip: float = 1.0) -> dict[str, Any]:
    return {"lr": list(lr), "weight_decay": [wd, wd], "betas": [[0.9, 0.999]] * 2, "clip": clip}


def _chunk(node: int, key: str, steps: range, fn: Any, t0: float = 1_700_000_000.0) -> MetricChunk:
    s = np.asarray(list(steps), dtype=np.int64)
    return MetricChunk(node, key, s, np.asarray([fn(int(i)) for i in s], dtype=np.float64),
                       t0 + s.astype(np.float64) * 0.5)  # fmt: skip


def build_tree_run(store: Store, name: str = "tree") -> str:
    """n1 (steps 0..30) -> n2 (restore at 10, lr head differs) -> n4 (set at 20: clip);
    n1 -> n3 (restore at 10, weight_decay). n4 stays open while the run is `running`.

    Metrics: loss on every step (a NaN at step 5 and +inf at step 25 of n1), accuracy every
    5 steps, and val/top-1:acc (a name MLflow refuses) on n3 only. Chunks are small, as the
    writer flushes them, and n1's come out of order."""
    run = store.create_run(name, config={"model": "tiny"}, meta={}, tunables=TUNABLES,
                           root_values=values((0.1, 0.1)), created_by="mia")  # fmt: skip
    store.create_node(run.id, parent=1, start_step=10, change_kind="restore",
                      values=values((0.1, 0.01)), diff={"lr[head]": [0.1, 0.01]}, created_by="mia")  # fmt: skip
    store.create_node(run.id, parent=1, start_step=10, change_kind="restore",
                      values=values((0.1, 0.1), wd=1e-4), diff={"weight_decay": [0.0, 1e-4]},
                      created_by="mia", info={"score": 0.5})  # fmt: skip
    store.create_node(run.id, parent=2, start_step=20, change_kind="set",
                      values=values((0.1, 0.01), clip=0.5), diff={"clip": [1.0, 0.5]},
                      created_by="mia")  # fmt: skip
    store.end_node(run.id, 1, 30)
    store.end_node(run.id, 2, 20)
    store.end_node(run.id, 3, 24)

    def loss(node: int) -> Any:
        return lambda s: 1.0 / (s + node)

    store.append_metrics(
        run.id, [_chunk(1, "loss", range(16, 31), lambda s: math.inf if s == 25 else 1.0 / (s + 1))]
    )
    store.append_metrics(
        run.id, [_chunk(1, "loss", range(1, 16), lambda s: math.nan if s == 5 else 1.0 / (s + 1))]
    )
    store.append_metrics(run.id, [_chunk(1, "accuracy", range(5, 31, 5), lambda s: s / 100)])
    for start, stop in ((11, 16), (16, 21)):
        store.append_metrics(run.id, [_chunk(2, "loss", range(start, stop), loss(2))])
    store.append_metrics(run.id, [_chunk(2, "accuracy", range(15, 21, 5), lambda s: s / 50)])
    store.append_metrics(run.id, [_chunk(3, "loss", range(11, 25), loss(3)),
                                  _chunk(3, "val/top-1:acc", range(12, 25, 4), lambda s: s / 30)])  # fmt: skip
    store.append_metrics(run.id, [_chunk(4, "loss", range(21, 28), loss(4))])
    store.submit_command(run.id, "restore", {"target": "c1", "set": {"lr": 0.01}}, source="cli", user="mia",
                         status="pending")  # fmt: skip
    store.submit_command(run.id, "set", {"values": {"lr": -1}}, source="ui", user="mia",
                         status="rejected", reason="lr must be >= 0")  # fmt: skip
    return run.id


def branch_points(store: Store, run_id: str, node: int, key: str) -> list[tuple[int, float]]:
    """The branch ending at ``node`` as (step, value), read the dashboard's way."""
    nodes = tuple(store.list_nodes(run_id))
    data = store.read_metric(run_id, key)
    index = np.flatnonzero(branch_mask(path_to(nodes, node), data.nodes, data.steps))
    index = index[np.argsort(data.steps[index], kind="stable")]
    return list(zip(data.steps[index].tolist(), data.values[index].tolist(), strict=True))


@pytest.fixture(scope="module")
def tree_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str]]:
    """(store, run id) of the Store-API tree; the run is still `running`."""
    url = f"sqlite:///{tmp_path_factory.mktemp('tree') / 'retune.db'}"
    with open_store(url) as store:
        yield store, build_tree_run(store)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The store URL of a real training's tree (run `trained`: n1, n2 lr, n3 weight_decay)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('trained') / 'retune.db'}"
    subprocess.run([sys.executable, str(TRAINER), url, "trained"], cwd=ROOT, check=True,
                   timeout=120)  # fmt: skip
    return url


def retune_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retune", *args], capture_output=True,
                          text=True, timeout=180, check=False)  # fmt: skip

"""Runs with big trees, written straight through the Store API (no training): fast fixtures
for the tree picture and the report."""

from __future__ import annotations

import random

import numpy as np

from retune.store import MetricChunk, Store

HOSTILE = '<script>alert("x")</script>&\'"]]>\x01'
"""A name no picture may trust: markup, quotes, an entity, CDATA end, an XML-illegal byte."""


def build_run(
    store: Store,
    nodes: int = 500,
    *,
    name: str = "big",
    keys: tuple[str, ...] = ("loss", "val/acc"),
    tunable: str = "lr",
    live: bool = True,
    seed: int = 0,
) -> str:
    """A run of ``nodes`` nodes the way training makes them: mostly ``set`` changes on the
    branch being trained (each closes its parent where it starts), about one in six a
    ``restore`` from a step of an earlier node (a new branch); every node has points of each
    key. With ``live`` the run stays ``running`` on its last (open) node; returns its id."""
    rng = random.Random(seed)
    run = store.create_run(name, config={"batch": 32, "note": HOSTILE}, meta={},
                           tunables=[{"name": tunable, "value": 0.1}],
                           root_values={tunable: 0.1}, created_by="test")  # fmt: skip
    step, tip, lr = 0, 1, 0.1
    spans: dict[int, tuple[int, int]] = {}
    chunks: list[MetricChunk] = []

    def points(node: int, lo: int, hi: int) -> None:
        steps = np.arange(lo + 1, hi + 1, 5, dtype=np.int64)
        for k, key in enumerate(keys):
            base = 1.0 / (1 + steps / 400.0) + 0.01 * (node % 7)
            values = base if k == 0 else 1 - base / 2
            chunks.append(MetricChunk(node, key, steps, values.astype(np.float64),
                                      np.full(len(steps), 1.7e9 + node)))  # fmt: skip

    for _ in range(nodes - 1):
        length = rng.randrange(20, 60)
        points(tip, step, step + length)
        step += length
        spans[tip] = (spans.get(tip, (step - length, 0))[0], step)
        store.end_node(run.id, tip, step)
        new_lr = rng.choice([v for v in (0.1, 0.05, 0.03, 0.01, 3e-3, 1e-3, 3e-4) if v != lr])
        if rng.random() < 1 / 6 and len(spans) > 2:
            parent = rng.choice(sorted(spans))
            lo, hi = spans[parent]
            at = rng.randrange(lo, hi + 1)
            node = store.create_node(run.id, parent=parent, start_step=at, change_kind="restore",
                                     values={tunable: new_lr}, diff={tunable: [lr, new_lr]},
                                     created_by="test")  # fmt: skip
            step = at
        else:
            node = store.create_node(run.id, parent=tip, start_step=step, change_kind="set",
                                     values={tunable: new_lr}, diff={tunable: [lr, new_lr]},
                                     created_by="test")  # fmt: skip
        spans[node.id] = (step, step)
        tip, lr = node.id, new_lr
    points(tip, step, step + 40)
    step += 40
    store.append_metrics(run.id, chunks, step=step, heartbeat_at=None)
    store.update_run(run.id, step=step, status="running" if live else "finished")
    return run.id

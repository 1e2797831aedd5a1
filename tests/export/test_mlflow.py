"""The MLflow export, read back with MlflowClient from a real SQLite tracking store.

One module-scoped sequence (MLflow is slow to import and to create its database): export the
tree while n4 still trains, export again (nothing duplicated), then train n4 further, close it
and export a third time (only the new points are appended, n4's run is finished).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retune.export import export
from retune.export._mlflow import step_tag
from retune.store import MetricChunk, Store
from tests.export.conftest import build_tree_run

pytest.importorskip("mlflow")


def _points(client: Any, run_id: str, key: str) -> list[tuple[int, float, int]]:
    history = client.get_metric_history(run_id, key)
    return sorted((m.step, m.value, m.timestamp) for m in history)


def _same(a: float, b: float) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):  # MLflow stores +/-inf as the largest finite double
        return abs(a) >= 1.7e308 and (a > 0) == (b > 0)
    return a == b


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    from retune.store import open_store

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    store = open_store(f"sqlite:///{folder / 'retune.db'}")
    run_id = build_tree_run(store)
    first = export(store, run_id, "mlflow", tracking_uri=uri, experiment="tuning")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tuning")
    assert experiment is not None
    runs_after_first = client.search_runs([experiment.experiment_id])
    open_status = {r.data.tags["retune.node"]: r.info.status for r in runs_after_first}
    second = export(store, run_id, "mlflow", tracking_uri=uri, experiment="tuning")
    # n4 trains on, closes, the run finishes: the next export appends only the new points
    steps = np.arange(28, 33, dtype=np.int64)
    store.append_metrics(run_id, [MetricChunk(4, "loss", steps, 1.0 / (steps + 4.0),
                                              1_700_000_000.0 + steps * 0.5)])  # fmt: skip
    store.end_node(run_id, 4, 32)
    store.update_run(run_id, status="finished")
    third = export(store, run_id, "mlflow", tracking_uri=uri, experiment="tuning")
    yield {"store": store, "run_id": run_id, "client": client, "uri": uri,
           "experiment": experiment, "summaries": (first, second, third),
           "open_status": open_status}  # fmt: skip
    store.close()


def _by_node(exported: dict[str, Any]) -> dict[str, Any]:
    client = exported["client"]
    runs = client.search_runs([exported["experiment"].experiment_id], max_results=1000)
    by_node: dict[str, Any] = {}
    for run in runs:
        label = run.data.tags["retune.node"]
        assert label not in by_node, f"{label} exported twice"
        by_node[label] = run
    return by_node


def test_one_mlflow_run_per_node_linked_to_its_parent(exported: dict[str, Any]) -> None:
    store: Store = exported["store"]
    by_node = _by_node(exported)
    assert sorted(by_node) == ["n1", "n2", "n3", "n4"]
    for node in store.list_nodes(exported["run_id"]):
        tags = by_node[node.label].data.tags
        assert tags["retune.run_id"] == exported["run_id"] and tags["retune.run_name"] == "tree"
        assert tags["retune.change_kind"] == node.change_kind
        assert tags["retune.start_step"] == str(node.start_step)
        assert tags["retune.end_step"] == str(node.end_step)
        if node.parent is None:
            assert "mlflow.parentRunId" not in tags
        else:
            parent = by_node[f"n{node.parent}"].info.run_id
            assert tags["mlflow.parentRunId"] == parent
            assert tags["retune.parent"] == f"n{node.parent}"
    assert by_node["n3"].data.tags["retune.diff"] == "weight_decay 0 -> 0.0001"
    assert by_node["n3"].data.tags["retune.info"] == '{"score": 0.5}'
    assert by_node["n4"].info.run_name == "tree n4"


def test_params_are_each_nodes_hyperparameters(exported: dict[str, Any]) -> None:
    by_node = _by_node(exported)
    assert by_node["n1"].data.params == {
        "lr.body": "0.1", "lr.head": "0.1", "weight_decay": "0.0",
        "betas": "[0.9, 0.999]", "clip": "1.0",
    }  # fmt: skip
    assert by_node["n2"].data.params["lr.head"] == "0.01"
    assert by_node["n3"].data.params["weight_decay"] == "0.0001"
    assert by_node["n4"].data.params["clip"] == "0.5"


def test_every_point_with_its_step_and_time_exactly_once(exported: dict[str, Any]) -> None:
    store: Store = exported["store"]
    client = exported["client"]
    by_node = _by_node(exported)
    run_id = exported["run_id"]
    expected_total = 0
    for key in store.metric_keys(run_id):
        data = store.read_metric(run_id, key)
        for node in store.list_nodes(run_id):
            mine = data.nodes == node.id
            want = list(zip(data.steps[mine].tolist(), data.values[mine].tolist(),
                            (data.times[mine] * 1000).astype(np.int64).tolist(), strict=True))  # fmt: skip
            name = "val/top-1_acc" if key == "val/top-1:acc" else key
            got = _points(client, by_node[node.label].info.run_id, name)
            assert [(s, t) for s, _, t in got] == [(s, t) for s, _, t in want], (key, node.label)
            assert all(_same(g[1], w[1]) for g, w in zip(got, want, strict=True))
            expected_total += len(want)
    assert expected_total == 30 + 6 + 10 + 2 + 14 + 4 + 12  # loss, accuracy, val, n4's 12
    tags = by_node["n3"].data.tags
    assert tags[step_tag("val/top-1:acc")] == "24"
    assert "val/top-1:acc" in tags.values()  # the original name of a renamed key


def test_exporting_again_duplicates_nothing_and_appends_only_new_points(
    exported: dict[str, Any],
) -> None:
    first, second, third = exported["summaries"]
    assert (first.created, first.points, first.skipped_points) == (4, 73, 0)
    assert (second.created, second.points, second.skipped_points) == (0, 0, 73)
    assert (third.created, third.points, third.skipped_points) == (0, 5, 73)
    assert exported["open_status"]["n4"] == "RUNNING"  # still training at the first export
    assert exported["open_status"]["n1"] == "FINISHED"
    by_node = _by_node(exported)
    assert {label: run.info.status for label, run in by_node.items()} == dict.fromkeys(
        ["n1", "n2", "n3", "n4"], "FINISHED"
    )
    assert by_node["n4"].data.tags["retune.end_step"] == "32"
    loss = _points(exported["client"], by_node["n4"].info.run_id, "loss")
    assert [s for s, _, _ in loss] == list(range(21, 33))


def test_bad_destinations_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    from retune.errors import InvalidArgument
    from retune.store import open_store

    with open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        run_id = build_tree_run(store)
        with pytest.raises(InvalidArgument, match="not a folder"):
            export(store, run_id, "mlflow", dest=str(tmp_path))
        with pytest.raises(InvalidArgument, match="experiment name is empty"):
            export(store, run_id, "mlflow", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                   experiment=" ")  # fmt: skip
    assert not (tmp_path / "m.db").exists()


def test_a_change_without_new_values_is_not_tagged_as_the_root(tmp_path: Path) -> None:
    """A resume, or a restore that sets nothing, has no diff but a parent: only n1 is the
    root (both were tagged ``(root)`` before)."""
    from mlflow.tracking import MlflowClient

    from retune.store import open_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open_store(f"sqlite:///{tmp_path / 'retune.db'}") as store:
        run = store.create_run("plain", config={}, meta={}, tunables=[])
        for parent, kind in ((None, "start"), (1, "restore"), (2, "resume")):
            store.create_node(run.id, parent=parent, start_step=0, change_kind=kind,
                              values={}, diff={}, created_by="u")  # fmt: skip
        export(store, run.id, "mlflow", tracking_uri=uri, experiment="plain")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("plain")
    assert experiment is not None
    tags = {
        r.data.tags["retune.node"]: r.data.tags["retune.diff"]
        for r in client.search_runs([experiment.experiment_id])
    }
    assert tags == {"n1": "(root)", "n2": "(none)", "n3": "(none)"}

"""CSV and Parquet exports, read back with pandas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retune.cli import main
from retune.errors import MissingExtra
from retune.export import require
from retune.store import Store, open_store
from tests.export.conftest import build_tree_run, retune_cli


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str, Path]:
    folder = tmp_path_factory.mktemp("tables")
    url = f"sqlite:///{folder / 'retune.db'}"
    store = open_store(url)
    run_id = build_tree_run(store)
    for target in ("csv", "parquet"):
        out = retune_cli("export", run_id, "--to", target, str(folder / target), "--store", url)
        assert out.returncode == 0, out.stderr
        assert "4 nodes, 73 points" in out.stdout
    return store, run_id, folder


def _read(folder: Path, target: str, name: str) -> pd.DataFrame:
    if target == "csv":
        return pd.read_csv(folder / target / f"{name}.csv")
    return pd.read_parquet(folder / target / f"{name}.parquet")


@pytest.mark.parametrize("target", ["csv", "parquet"])
def test_metrics_table_holds_every_point(tables: tuple[Store, str, Path], target: str) -> None:
    store, run_id, folder = tables
    metrics = _read(folder, target, "metrics")
    assert list(metrics.columns) == ["run_id", "node", "key", "step", "value", "time"]
    assert len(metrics) == 73 and set(metrics["run_id"].astype(str)) == {run_id}
    for key in store.metric_keys(run_id):
        data = store.read_metric(run_id, key)
        mine = metrics[metrics["key"].astype(str) == key].sort_values(
            ["node", "step"], kind="stable"
        )
        assert mine["node"].tolist() == data.nodes.tolist()
        assert mine["step"].tolist() == data.steps.tolist()
        np.testing.assert_array_equal(mine["value"].to_numpy(), data.values)  # NaN, inf kept
        np.testing.assert_array_equal(mine["time"].to_numpy(), data.times)
    loss = metrics[(metrics["key"] == "loss") & (metrics["node"] == 1)].set_index("step")
    assert math.isnan(loss.loc[5, "value"]) and loss.loc[25, "value"] == math.inf


@pytest.mark.parametrize("target", ["csv", "parquet"])
def test_nodes_and_commands_tables(tables: tuple[Store, str, Path], target: str) -> None:
    _store, _run_id, folder = tables
    nodes = _read(folder, target, "nodes").set_index("label")
    assert nodes.index.tolist() == ["n1", "n2", "n3", "n4"]
    assert nodes.loc["n4", "parent"] == 2 and pd.isna(nodes.loc["n4", "end_step"])
    assert nodes.loc["n2", "hp.lr[head]"] == 0.01 and nodes.loc["n3", "hp.weight_decay"] == 1e-4
    assert json.loads(nodes.loc["n4", "diff"]) == {"clip": [1.0, 0.5]}
    assert json.loads(nodes.loc["n3", "info"]) == {"score": 0.5}
    assert json.loads(nodes.loc["n1", "hp.betas"]) == [0.9, 0.999]
    commands = _read(folder, target, "commands")
    assert commands["kind"].tolist() == ["restore", "set"]
    assert commands["status"].tolist() == ["pending", "rejected"]
    assert commands["reason"].tolist()[1] == "lr must be >= 0"
    assert json.loads(commands["payload"].tolist()[1]) == {"values": {"lr": -1}}


def test_re_export_replaces_the_tables_and_bad_destinations_are_refused(
    tables: tuple[Store, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_id, folder = tables
    url = store.url
    assert main(["export", run_id, "--to", "csv", str(folder / "csv"), "--store", url]) == 0
    assert len(pd.read_csv(folder / "csv" / "metrics.csv")) == 73  # replaced, not appended
    assert main(["export", "--to", "csv", str(folder / "csv"), run_id, "--store", url]) == 0
    assert len(pd.read_csv(folder / "csv" / "metrics.csv")) == 73  # the run after --to works too
    assert sorted(p.name for p in (folder / "csv").iterdir()) == [
        "commands.csv",
        "metrics.csv",
        "nodes.csv",
    ]
    capsys.readouterr()
    (folder / "file").write_text("x")
    for args, message in [
        (["--to", "csv"], "needs a folder"),
        (["--to", "mlflow", str(folder / "m")], "takes no folder"),
        (["--to", "csv", str(folder / "file")], "not a folder"),
        (["--to", "hdf5", str(folder / "h")], "--to takes a target"),
        (["--to", "csv", str(folder / "c2"), "--experiment", "e"], "are for --to mlflow"),
        (["--to", "csv", str(folder / "c3"), "a", "b"], "--to takes a target"),
    ]:
        assert main(["export", run_id, *args, "--store", url]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    assert main(["export", "--to", "csv", "--store", url]) == 2
    assert "name the run to export" in capsys.readouterr().err
    for name in ("m", "h", "c2", "c3"):
        assert not (folder / name).exists()


def test_a_missing_package_names_the_extra() -> None:
    with pytest.raises(MissingExtra, match=r"pip install 'retune\[parquet\]'"):
        require("pyarrow_not_installed_here", "parquet")

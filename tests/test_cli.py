"""The `retune` command line on real stores: output, --json, --csv, and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import retune
from retune.cli import main


@pytest.fixture
def recorded(store_url: str) -> str:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with retune.init(
        "cli-run", model=model, optimizer=opt, config={"bs": 8}, store=store_url
    ) as run:
        for i in range(1, 11):
            run.step(loss=1.0 / i, acc=i / 10)
        run.step(loss=math.nan)
        run.log(val_acc=0.9)
    return store_url


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_runs_lists_name_id_status_steps_and_metrics(recorded: str, capsys) -> None:
    code, out, _ = _run(capsys, "runs", "--store", recorded)
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:6] == ["NAME", "ID", "STATUS", "STEPS", "STARTED", "DURATION"]
    assert row.startswith("cli-run") and "finished" in row and " 11 " in row
    assert "loss=nan" in row and "val_acc=0.9" in row


def test_runs_json_and_filters(recorded: str, capsys) -> None:
    _code, out, _ = _run(capsys, "runs", "--store", recorded, "--json")
    (entry,) = json.loads(out)
    assert entry["name"] == "cli-run" and entry["step"] == 11 and entry["live"] is False
    assert entry["last_metrics"]["loss"] == "NaN"
    _, out, _ = _run(capsys, "runs", "--store", recorded, "--status", "crashed")
    assert out.startswith("no runs")


def test_show_has_config_hyperparameters_and_last_metrics(recorded: str, capsys) -> None:
    code, out, _ = _run(capsys, "show", "cli-run", "--store", recorded)
    assert code == 0
    assert "optimizer  torch.optim.sgd.SGD" in out
    assert "momentum=0.9" in out and "lr=0.1" in out
    assert "bs = 8" in out and "val_acc = 0.9  (step 11)" in out
    assert "model      torch.nn.modules.linear.Linear  4 parameters" in out
    assert "n1  steps 0..11  start" in out
    _, out, _ = _run(capsys, "show", "cli-run", "--store", recorded, "--json")
    data = json.loads(out)
    assert data["run"]["config"] == {"bs": 8} and data["nodes"][0]["end_step"] == 11


def test_metrics_table_csv_json_and_downsampling(recorded: str, capsys) -> None:
    code, out, _ = _run(capsys, "metrics", "cli-run", "loss", "--store", recorded, "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 12)]
    assert rows[-1]["value"] == "nan" and float(rows[1]["value"]) == 0.5
    _, out, _ = _run(capsys, "metrics", "cli-run", "loss", "--store", recorded, "--json",
                     "--start", "2", "--end", "4")  # fmt: skip
    assert [p["step"] for p in json.loads(out)] == [2, 3, 4]
    _, out, _ = _run(capsys, "metrics", "cli-run", "acc", "--store", recorded, "--max-points", "4")
    assert len(out.splitlines()) <= 5


def test_get_and_changes(recorded: str, capsys) -> None:
    code, out, _ = _run(capsys, "get", "cli-run", "--store", recorded)
    assert code == 0 and "momentum" in out and "[0, 1)" in out
    _, out, _ = _run(capsys, "get", "cli-run", "--store", recorded, "--json")
    assert json.loads(out)["lr"] == [0.1]
    _, out, _ = _run(capsys, "changes", "cli-run", "--store", recorded)
    assert out.startswith("no commands")


def test_db_upgrade(tmp_path: Path, capsys) -> None:
    url = str(tmp_path / "fresh.db")
    code, out, _ = _run(capsys, "db", "upgrade", "--store", url)
    assert code == 0 and out.startswith("upgraded store schema empty ->")
    code, out, _ = _run(capsys, "db", "upgrade", "--store", url)
    assert code == 0 and out.startswith("store is up to date")


def _garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    return str(path)


def _newer(tmp_path: Path) -> str:
    path = tmp_path / "newer.db"
    retune.store.open_store(str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v99.0.0'")
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda p, s: ["show", "nope", "--store", s], "no run named or with id 'nope'"),
        (lambda p, s: ["runs", "--store", "foo://x"], "unsupported store URL"),
        (lambda p, s: ["runs", "--store", str(p)], "cannot be used"),
        (lambda p, s: ["runs", "--store", _garbage(p)], "cannot be used"),
        (lambda p, s: ["runs", "--store", _newer(p)], "written by a newer Retune"),
        (lambda p, s: ["metrics", "cli-run", "nope", "--store", s], "has no metric 'nope'"),
        (lambda p, s: ["metrics", "cli-run", "loss", "--max-points", "1", "--store", s],
         "max_points must be at least 3"),
        (lambda p, s: ["set", "cli-run", "lr=0.1", "--store", s], "is finished"),
        (lambda p, s: ["set", "cli-run", "lr", "--store", s], "expected name=value"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_exit_2(
    recorded: str, tmp_path: Path, capsys, args, message
) -> None:
    code, _out, err = _run(capsys, *args(tmp_path, recorded))
    assert code == 2
    assert err.startswith("retune: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_installed_command_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retune", "show", "missing", "--store", str(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == f"retune: error: no run named or with id 'missing' in sqlite:///{tmp_path / 'x.db'}\n"
    )

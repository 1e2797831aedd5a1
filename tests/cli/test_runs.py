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


def test_show_reads_a_keras_run_s_optimizer_summary(store_url: str, capsys) -> None:
    """Keras records its optimizer as ``{class, config}`` (no torch param groups): ``show``
    failed with a KeyError traceback on every Keras run."""
    meta = {
        "model": {"class": "keras.src.models.sequential.Sequential", "parameters": 1201},
        "optimizer": {
            "class": "keras.src.optimizers.adam.Adam",
            "config": {"name": "adam", "learning_rate": 0.001, "beta_1": 0.9, "amsgrad": False,
                       "weight_decay": None, "ema_momentum": 0.99,
                       "loss_scale": {"class_name": "x"}},
        },
    }  # fmt: skip
    with retune.init("keras-run", store=store_url, meta=meta) as run:
        run.step(loss=1.0)
    code, out, err = _run(capsys, "show", "keras-run", "--store", store_url)
    assert code == 0, err
    assert "model      keras.src.models.sequential.Sequential  1,201 parameters" in out
    assert "optimizer  keras.src.optimizers.adam.Adam" in out
    assert "  amsgrad=False  beta_1=0.9  ema_momentum=0.99  learning_rate=0.001" in out
    assert "weight_decay=None" in out and "loss_scale" not in out


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
    (nesterov,) = [line for line in out.splitlines() if line.startswith("nesterov")]
    assert nesterov.endswith("true or false")  # not "any finite"
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


def test_the_installed_command_exits_2_without_a_traceback(recorded: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retune", "show", "missing", "--store", recorded],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"retune: error: no run named or with id 'missing' in {recorded}\n"


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(
    "command",
    [["runs"], ["show", "r"], ["metrics", "r", "loss"], ["tree", "r"], ["get", "r"],
     ["changes", "r"], ["gc"], ["set", "r", "lr=0.1"], ["restore", "r", "c1"]],
)  # fmt: skip
def test_a_mistyped_store_path_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    before = _files(tmp_path)
    typo = tmp_path / "typo" / "retune.db"
    done = subprocess.run([sys.executable, "-m", "retune", *command, "--store", str(typo)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("retune: error: ") and done.stderr.count("\n") == 1
    assert str(typo) in done.stderr and "Traceback" not in done.stderr
    assert _files(tmp_path) == before  # no folder, no empty database


def _branched(store: str) -> None:
    """n1 steps 1..30 with checkpoints every 10; at 25 back to n1@20 (n2 from step 20 to 30)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("branched", model=model, optimizer=opt, store=store,
                     checkpoint_every_n_steps=10) as run:  # fmt: skip
        restored = False
        while run.global_step < 30:
            run.step(loss=float(run.global_step + 1) + (100.0 if restored else 0.0))
            if run.global_step == 25 and not restored:
                run.restore("n1@20")
                restored = True


def test_metrics_csv_has_a_node_column_and_branch_gives_one_point_per_step(
    store_url: str, capsys
) -> None:
    _branched(store_url)
    code, out, _ = _run(capsys, "metrics", "branched", "loss", "--store", store_url, "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["step", "value", "time", "node"]
    assert {r["node"] for r in rows} == {"n1", "n2"}
    assert [r["step"] for r in rows if r["node"] == "n1"] == [str(s) for s in range(1, 26)]
    code, out, _ = _run(capsys, "metrics", "branched", "loss", "--store", store_url, "--csv",
                        "--branch", "n2")  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))  # the branch's own curve
    assert [r["node"] for r in rows] == ["n1"] * 20 + ["n2"] * 10
    assert float(rows[19]["value"]) == 20.0 and float(rows[20]["value"]) > 100
    _, out, _ = _run(capsys, "metrics", "branched", "loss", "--store", store_url, "--json",
                     "--branch", "n1", "--start", "24")  # fmt: skip
    assert [(p["step"], p["node"]) for p in json.loads(out)] == [(24, "n1"), (25, "n1")]
    code, _, err = _run(capsys, "metrics", "branched", "loss", "--store", store_url,
                        "--branch", "n9")  # fmt: skip
    assert code == 2 and "n9" in err and err.count("\n") == 1
    for bad in ("n²", "n\u0663", "x", "n1" + "0" * 400):
        code, _, err = _run(capsys, "metrics", "branched", "loss", "--store", store_url,
                            "--branch", bad)  # fmt: skip
        assert code == 2 and err.startswith("retune: error: ") and err.count("\n") == 1, bad


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--start", "٣", "ASCII digits"), ("--end", "²", "ASCII digits"),
     ("--start", "1" + "0" * 400, "too large"), ("--max-points", "1_0", "ASCII digits")],
)  # fmt: skip
def test_step_numbers_are_ascii_64_bit_integers(
    recorded: str, flag: str, value: str, message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retune", "metrics", "cli-run", "loss", flag, value,
         "--store", recorded], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr

"""`retune demo`: a real CNN on the bundled digits data, with Retune attached."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import retune
from retune.cli import main


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retune", *args], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


def test_a_short_demo_records_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "demo.db")
    code = main(
        ["demo", "--epochs", "2", "--step-delay", "0", "--no-ui", "--exit", "--store", store]
    )
    out = capsys.readouterr().out
    assert code == 1  # two epochs are not enough for 95%: the demo says so instead of hiding it
    assert "retune: warning: test accuracy is not above 95%" in out
    assert "retune show digits-cnn" in out and "the tuning tree of digits-cnn" in out
    snap = retune.load("digits-cnn", store=store)
    assert snap.status == "finished"
    assert len(snap.metric("loss")) == 2 * 23 and len(snap.metric("val_acc")) == 2
    assert {t["name"] for t in snap.run.tunables} >= {"lr", "weight_decay", "clip_norm", "dropout"}
    assert [c.reason for c in snap.checkpoints] == ["schedule", "schedule"]


@pytest.mark.slow
def test_the_full_demo_beats_95_percent_and_shows_in_the_cli(tmp_path: Path) -> None:
    store = str(tmp_path / "full.db")
    done = _cli("demo", "--step-delay", "0", "--no-ui", "--exit", "--store", store)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.95
    runs = _cli("runs", "--store", store)
    assert "digits-cnn" in runs.stdout and "finished" in runs.stdout
    show = _cli("show", "digits-cnn", "--store", store)
    assert "torch.optim.adamw.AdamW" in show.stdout and "val_acc" in show.stdout


@pytest.mark.slow
def test_the_scripted_demo_makes_a_tree_with_a_set_a_restore_and_a_resume(tmp_path: Path) -> None:
    store = str(tmp_path / "scripted.db")
    done = _cli("demo", "--scripted", "--epochs", "6", "--step-delay", "0.005", "--no-ui", "--exit",
                "--store", store)  # fmt: skip
    assert "retune demo: set lr=5e-4" in done.stdout and "resuming digits-cnn" in done.stdout
    tree = retune.load("digits-cnn", store=store).tree()
    assert [n.change_kind for n in tree] == ["start", "set", "restore", "resume"]
    assert [n.parent for n in tree] == [None, 1, 1, 3]
    assert tree[2].diff == {"weight_decay": [0.0001, 0.001]}
    steps_per_epoch = 23
    assert tree[2].end_step == 6 * steps_per_epoch  # the restored branch trains to the end
    assert (tree[3].start_step, tree[3].end_step) == (6 * 23, 8 * steps_per_epoch)

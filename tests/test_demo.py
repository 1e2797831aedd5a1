"""`retune demo`: a real CNN on the bundled digits data, with Retune attached."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import retune
from retune.errors import RetuneError
from retune.store import open_store


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retune", *args], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


def test_a_short_demo_learns_and_records_a_run(tmp_path: Path) -> None:
    store = str(tmp_path / "demo.db")
    done = _cli("demo", "--epochs", "2", "--step-delay", "0", "--no-ui", "--exit", "--store", store)
    out = done.stdout
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.5  # two epochs already learn: 5x chance (10 classes), not a fluke
    # the exit code says whether the 95% bar was reached, and the warning says so when not
    assert done.returncode == (0 if accuracy > 0.95 else 1), done.stderr[-2000:]
    assert ("retune: warning: test accuracy is not above 95%" in out) == (accuracy <= 0.95)
    assert "retune show digits-cnn" in out and out.count("the tuning tree of digits-cnn") == 1
    # stdout is not a terminal here: one plain line per epoch, no carriage-return updates
    assert "\r" not in out and "\r" not in done.stderr
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == [
        "1/2",
        "2/2",
    ]
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
    assert done.stdout.count("the tuning tree of digits-cnn") == 1  # printed once, at the end
    assert done.stdout.count("look at the run:") == 1
    tree = retune.load("digits-cnn", store=store).tree()
    assert [n.change_kind for n in tree] == ["start", "set", "restore", "resume"]
    assert [n.parent for n in tree] == [None, 1, 1, 3]
    assert tree[2].diff == {"weight_decay": [0.0001, 0.001]}
    steps_per_epoch = 23
    assert tree[2].end_step == 6 * steps_per_epoch  # the restored branch trains to the end
    assert (tree[3].start_step, tree[3].end_step) == (6 * 23, 8 * steps_per_epoch)


def _started(path: Path) -> bool:
    if not path.exists():
        return False  # the demo creates the store: never race it
    try:
        with open_store(str(path)) as store:
            return bool(store.list_runs(name="digits-cnn", statuses=["running"]))
    except RetuneError:  # its schema is being written
        return False


@pytest.mark.slow
def test_the_scripted_demo_stops_when_someone_else_steers(tmp_path: Path) -> None:
    store = str(tmp_path / "steered.db")
    demo = subprocess.Popen(
        [sys.executable, "-m", "retune", "demo", "--scripted", "--epochs", "4", "--step-delay",
         "0.05", "--no-ui", "--exit", "--store", store],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not _started(tmp_path / "steered.db"):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.05)
        ctl = retune.connect("digits-cnn", store=store, source="cli", user="mia")
        ctl.set(clip_norm=4.0, wait=True, timeout=120)  # a person steers from a terminal
        out, err = demo.communicate(timeout=600)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "retune demo: someone else is steering (set from mia); the script stops here" in out
    assert "resuming digits-cnn" not in out and "restore n1" not in out, out
    tree = retune.load("digits-cnn", store=store).tree()
    assert "resume" not in [n.change_kind for n in tree] and "restore" not in [
        n.change_kind for n in tree
    ]
    assert out.count("the tuning tree of digits-cnn") == 1

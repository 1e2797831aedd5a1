"""Several processes on one SQLite store: nothing lost, nothing locked, SIGKILL-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import retune

WRITER = """
import sys, retune
name, steps, store = sys.argv[1], int(sys.argv[2]), sys.argv[3]
run = retune.init(name, store=store, flush_interval=0.05)
for i in range(steps):
    run.step(loss=float(i), acc=i / steps)
    if i % 50 == 0:
        run.flush()
run.finish()
print("done", run.id)
"""

KILLED = """
import sys, time, retune
store, marker = sys.argv[1], sys.argv[2]
run = retune.init("victim", store=store, flush_interval=3600)
for i in range(1, 1001):
    run.step(loss=float(i))
run.flush()
open(marker, "w").write(run.id)
for i in range(1001, 10_000_000):
    run.step(loss=float(i))
    if i % 1000 == 0:
        run.flush()
"""


def test_four_processes_write_one_store_at_once(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    retune.store.open_store(store).close()  # create the schema once, as `retune db upgrade`
    steps = 2000
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"w{i}", str(steps), store],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err
        assert out.startswith("done")
    for i in range(4):
        snapshot = retune.load(f"w{i}", store=store)
        assert snapshot.status == "finished"
        assert snapshot.metric("loss").steps.tolist() == list(range(1, steps + 1))
        assert snapshot.metric("loss").values.tolist() == [float(s) for s in range(steps)]


def test_four_processes_create_a_fresh_store_together(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"f{i}", "50", store],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    assert len(retune.store.open_store(store).list_runs()) == 4


def test_sigkill_leaves_a_store_with_everything_flushed(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'killed.db'}"
    marker = tmp_path / "flushed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, store, str(marker)])
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "writer died before flushing"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # let it be in the middle of more writes
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = marker.read_text()
    snapshot = retune.load(run_id, store=store)
    steps = snapshot.metric("loss").steps
    assert steps[:1000].tolist() == list(range(1, 1001))
    # whatever got in after that is a consistent prefix: no holes, values match steps
    assert steps.tolist() == list(range(1, len(steps) + 1))
    assert snapshot.metric("loss").values.tolist() == [float(s) for s in steps]
    assert snapshot.status == "running"  # nobody lived to mark it; the heartbeat tells

"""SQLite: a metrics commit is durable without folding the write-ahead log; the fold comes later.

SQLite folds (checkpoints) its log into the database file inside the commit that takes the
log past 1,000 pages, which made a large metrics commit about three times slower. The
metric writer's commits leave that to :meth:`Store.maintain`, which the writer's thread runs
between flushes. These tests pin both halves: the commit does not fold, the points are durable
anyway (a SIGKILL before any fold loses nothing), and the fold does happen.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import retune
from retune.store import MetricChunk, MetricSeries, Store, open_store
from retune.store._sql import FOLD_AFTER_BYTES, SqlStore
from tests.store.test_conformance import _run_with_root

POINTS = 400_000
"""Values and times, 8 bytes each, per point (consecutive steps are not stored): 6.4 MB, past
SQLite's 1,000-page (4 MB) fold mark."""

BIG = POINTS * 8 * 2


def _chunk() -> MetricChunk:
    steps = np.arange(1, POINTS + 1, dtype=np.int64)
    return MetricChunk(1, "loss", steps, np.sqrt(steps.astype(np.float64)), steps * 1e-3)


def _run(store: Store) -> str:
    return _run_with_root(store, "fold")


def _all_points(series: MetricSeries) -> None:
    """``series`` holds every point of :func:`_chunk`, bit for bit."""
    expected = _chunk()
    assert np.array_equal(series.steps, expected.steps)
    assert np.array_equal(series.values, expected.values)
    assert np.array_equal(series.times, expected.times)


def test_a_metrics_commit_leaves_the_fold_to_maintain(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with open_store(str(path)) as store:
        run_id = _run(store)
        store.append_metrics(run_id, [_chunk()], step=POINTS)
        assert path.stat().st_size < BIG  # the points are in the log only
        assert Path(f"{path}-wal").stat().st_size > BIG
        store.maintain()
        assert path.stat().st_size > BIG  # folded into the database file
        _all_points(store.read_metric(run_id, "loss"))


def test_small_batches_are_not_folded_one_by_one(tmp_path: Path) -> None:
    """An idle run's heartbeat batches would otherwise sync the database file every second:
    the fold waits until about 4 MB of metrics are in the log, as SQLite's own mark does."""
    path = tmp_path / "r.db"
    with open_store(str(path)) as store:
        run_id = _run(store)
        size = path.stat().st_size
        for step in range(1, 21):
            steps = np.array([step], dtype=np.int64)
            store.append_metrics(run_id, [MetricChunk(1, "loss", steps, steps * 1.0, steps * 1.0)])
            store.maintain()
        assert path.stat().st_size == size  # nothing folded
        store.append_metrics(run_id, [_chunk()])
        store.maintain()
        assert path.stat().st_size > BIG


def test_a_fold_a_reader_cut_short_is_finished_later(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with open_store(str(path)) as store:
        run_id = _run(store)
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM runs").fetchone()  # holds its snapshot
        store.append_metrics(run_id, [_chunk()])
        store.maintain()  # cannot fold past the reader's snapshot
        assert path.stat().st_size < BIG
        reader.execute("COMMIT")
        reader.close()
        store.maintain()  # the rest, now
        assert path.stat().st_size > BIG


def test_maintain_after_close_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = open_store(str(path))
    store.append_metrics(_run(store), [_chunk()])
    store.close()
    size = path.stat().st_size
    assert not Path(f"{path}-wal").exists()  # the last close folded and removed the log
    store.maintain()  # no error, and no connection opened again to fold
    assert path.stat().st_size == size
    assert not Path(f"{path}-wal").exists()  # a reopened WAL connection would create it


KILLED = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from tests.store.test_wal_fold import _chunk, _run
from retune.store import open_store
store = open_store(sys.argv[1])
run_id = _run(store)
store.append_metrics(run_id, [_chunk()], step=1)
print(run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # acknowledged, never folded, never closed
"""


def test_points_in_an_unfolded_log_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    root = str(Path(__file__).parents[2])
    child = subprocess.run(
        [sys.executable, "-c", KILLED, str(path), root], capture_output=True, text=True, check=False
    )
    assert child.returncode == -9, child.stderr
    run_id = child.stdout.strip()
    assert path.stat().st_size < BIG  # the child died with its points in the log only
    with open_store(str(path), create=False) as store:
        _all_points(store.read_metric(run_id, "loss"))


def test_a_run_s_writer_thread_folds_after_its_flushes(tmp_path: Path) -> None:
    """6.4 MB of metrics arrive in two or three flushes: the writer thread folds once 4 MB are
    in the log (what it has folded is what the store no longer counts), and what arrives
    after that fold waits for the next 4 MB, or the close, as with SQLite's own mark."""
    path = tmp_path / "r.db"
    run = retune.init("fold", store=f"sqlite:///{path}", flush_interval=3600)
    store = run.store
    assert isinstance(store, SqlStore)
    for i in range(POINTS // 2):
        run.step(loss=float(i), acc=0.5)  # 2 keys x 200,000 points x 2 arrays: 6.4 MB
    run.flush()
    deadline = time.monotonic() + 60
    while store._unfolded >= FOLD_AFTER_BYTES:
        assert time.monotonic() < deadline, "the writer thread never folded the log"
        time.sleep(0.05)
    assert path.stat().st_size > FOLD_AFTER_BYTES  # folded into the database file
    run.finish()
    with open_store(str(path), create=False) as reopened:  # the rest, folded at the close
        assert len(reopened.read_metric(run.id, "loss")) == POINTS // 2


FOLDER = """
import sys
sys.path.insert(0, sys.argv[2])
import numpy as np
import retune.store._sql as sql
from retune.store import MetricChunk, open_store
from tests.store.test_conformance import _run_with_root
sql.FOLD_AFTER_BYTES = 1 << 16  # fold after every batch: most of the time goes to folds
store = open_store(sys.argv[1])
run_id = _run_with_root(store, sys.argv[3])
print("run", run_id, flush=True)
for batch in range(10_000):
    steps = np.arange(batch * 5_000 + 1, (batch + 1) * 5_000 + 1, dtype=np.int64)
    store.append_metrics(run_id, [MetricChunk(1, "loss", steps, steps * 0.5, steps * 1e-3)])
    print("acknowledged", batch, flush=True)
    store.maintain()
"""
"""Appends batches of 5,000 points to a run of its own, folding the log after each, and
prints each batch once ``append_metrics`` returned; runs until killed."""


def _start_folder(path: Path, name: str) -> tuple[subprocess.Popen[str], str]:
    root = str(Path(__file__).parents[2])
    child = subprocess.Popen(
        [sys.executable, "-c", FOLDER, str(path), root, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    word, run_id = child.stdout.readline().split()
    assert word == "run", child.stderr.read() if child.stderr else ""
    return child, run_id


def _kill_after(child: subprocess.Popen[str], batches: int) -> int:
    """SIGKILL ``child`` once it acknowledged ``batches`` batches (it is then folding or
    appending); returns how many it acknowledged in all."""
    assert child.stdout is not None
    acknowledged = 0
    for line in child.stdout:
        acknowledged = int(line.split()[1]) + 1
        if acknowledged >= batches:
            child.kill()
            break
    child.wait(timeout=60)
    acknowledged += sum(1 for line in child.stdout if line.startswith("acknowledged"))
    return acknowledged


def _holds_every_acknowledged_point(path: Path, runs: dict[str, int]) -> None:
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with open_store(str(path), create=False) as store:
        for run_id, batches in runs.items():
            series = store.read_metric(run_id, "loss")
            assert len(series) >= batches * 5_000  # a batch in flight at the kill may be in
            assert np.array_equal(series.steps, np.arange(1, len(series) + 1))
            assert np.array_equal(series.values, series.steps * 0.5)


def test_sigkill_in_the_middle_of_folds_loses_no_acknowledged_point(tmp_path: Path) -> None:
    """Eight processes in turn append to one store and fold after every batch; each is
    killed right after it acknowledged a few batches, as it starts to fold (here a fold
    takes about as long as an append, ~1 ms). Every acknowledged point of every run is
    there afterwards, and the database is intact."""
    path = tmp_path / "r.db"
    runs: dict[str, int] = {}
    for attempt in range(8):
        child, run_id = _start_folder(path, f"killed-{attempt}")
        runs[run_id] = _kill_after(child, 2 + attempt % 4)
        _holds_every_acknowledged_point(path, runs)


def test_two_processes_folding_one_log_at_once_lose_nothing(tmp_path: Path) -> None:
    """Two writers of one SQLite store fold its log concurrently (one of two folds at a time
    finds the other running and retries later); both are killed, and every point either
    acknowledged is there."""
    path = tmp_path / "r.db"
    (first, first_run), (second, second_run) = (
        _start_folder(path, name) for name in ("first", "second")
    )
    runs = {first_run: _kill_after(first, 30), second_run: _kill_after(second, 30)}
    _holds_every_acknowledged_point(path, runs)

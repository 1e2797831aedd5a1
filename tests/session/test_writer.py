"""The metric writer: bad points refused at the call, poison points isolated, nothing lost
when a flush is interrupted or the disk is full. Real SQLite throughout."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import retune
from retune.errors import InvalidArgument
from retune.store import MetricChunk, open_store
from retune.store._sql import SqlStore

BAD_POINTS: dict[str, dict[Any, Any]] = {
    "tuple-name": {(1, 2): 0.5},
    "surrogate-name": {"\ud800": 1.0},
    "int-beyond-float": {"huge": 10**400},
    "empty-name": {"": 1.0},
    "int-name": {1: 1.0},
    "name-too-long": {"x" * 256: 1.0},
    "nul-in-name": {"nul\x00": 1.0},
    "known-name-bad-value": {"loss": 10**400},  # a known name's value is still checked
    "string-value": {"loss": "1.0"},
}


@pytest.mark.parametrize("bad", BAD_POINTS.values(), ids=BAD_POINTS.keys())
def test_bad_names_and_values_are_refused_at_step_and_log_and_block_nothing(
    store_url: str, bad: dict[Any, Any]
) -> None:
    """Issue 8 item 8 (and 16: ``run.log(big=10**400)``)."""
    with retune.init("poisoned", store=store_url, flush_interval=3600) as run:
        run.step(loss=0.0)  # "loss" is now a known, validated name
        with pytest.raises(InvalidArgument) as refused:
            run.step(bad)
        assert "\n" not in str(refused.value)
        with pytest.raises(InvalidArgument):
            run.log(bad)
        assert run.global_step == 1  # the refused step did not count
        for i in range(1, 21):
            run.step(loss=float(i))
    snap = retune.load("poisoned", store=store_url)
    assert snap.status == "finished"
    assert snap.metric("loss").steps.tolist() == list(range(1, 22))


def test_log_refuses_an_int_beyond_float_range_with_a_clear_error(store_url: str) -> None:
    with retune.init("big", store=store_url) as run:
        with pytest.raises(InvalidArgument, match="too large"):
            run.log(big=10**400)
        run.log(fine=10**20)  # within float range: kept as a float
    assert retune.load("big", store=store_url).metric("fine").values.tolist() == [1e20]


def _refuse_key(db: Path, key: str) -> None:
    """A real store refusal: a trigger that aborts every insert of metric ``key``."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse_{key} BEFORE INSERT ON metric_chunks "
            f"WHEN NEW.key = '{key}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )


def test_a_point_the_store_refuses_never_blocks_the_others(tmp_path: Path) -> None:
    db = tmp_path / "refuse.db"
    store = f"sqlite:///{db}"
    run = retune.init("refused", store=store, flush_interval=3600)
    _refuse_key(db, "poison")
    for i in range(30):
        run.step(loss=float(i), poison=float(i))
        if i % 10 == 9:
            run.flush()  # each flush writes loss; poison is refused alone, then dropped
    run.finish()
    snap = retune.load("refused", store=store)
    assert snap.status == "finished"
    assert snap.metric("loss").steps.tolist() == list(range(1, 31))
    assert "poison" not in snap.keys
    dropped = [e for e in open_store(store).list_events(run.id) if e.kind == "metrics_dropped"]
    assert dropped and sum(e.payload["points"] for e in dropped) == 30
    assert {e.payload["key"] for e in dropped} == {"poison"}


class _InterruptedOnce(SqlStore):
    """A real SQLite store whose first metric write is interrupted by Ctrl-C."""

    interrupted = False

    def append_metrics(self, run_id: str, chunks: Iterable[MetricChunk], **kw: Any) -> None:
        chunks = list(chunks)
        if chunks and not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        super().append_metrics(run_id, chunks, **kw)


def test_ctrl_c_during_a_flush_puts_the_points_back(store_url: str) -> None:
    store = _InterruptedOnce(store_url)
    run = retune.init("ctrl-c-flush", store=store, flush_interval=3600)
    for i in range(100):
        run.step(loss=float(i))
    with pytest.raises(KeyboardInterrupt):
        run.flush()
    run.finish()
    loss = retune.load("ctrl-c-flush", store=store_url).metric("loss")
    assert loss.steps.tolist() == list(range(1, 101))  # every point, once


@pytest.mark.parametrize("path", ["same names as the last call", "names seen before"])
def test_ctrl_c_between_a_calls_appends_leaves_no_half_point(
    store_url: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A KeyboardInterrupt after a call's values went in but before its step did (the wall
    clock read between them) records nothing of that call: every later point keeps its own
    step and value (a notebook goes on with the same run after an interrupt)."""
    import threading

    from retune.session import _run

    run = retune.init("ctrl-c-append", store=store_url, flush_interval=3600)
    run.step(a=1.0, b=10.0)
    if path == "names seen before":
        run.step(c=0.0)  # the next call is not the last call's names: the slower path
    clock = _run._now  # the wall clock every point is stamped with
    interrupted = {"once": False}

    def interrupting_clock() -> float:
        if threading.current_thread() is threading.main_thread() and not interrupted["once"]:
            interrupted["once"] = True
            raise KeyboardInterrupt
        return clock()

    monkeypatch.setattr(_run, "_now", interrupting_clock)
    with pytest.raises(KeyboardInterrupt):
        run.step(a=2.0, b=20.0)
    monkeypatch.setattr(_run, "_now", clock)
    first = run.global_step + 1
    run.step(a=3.0, b=30.0)
    run.step(a=4.0, b=40.0)
    run.finish()
    a, b = (retune.load("ctrl-c-append", store=store_url).metric(k) for k in "ab")
    assert a.steps.tolist() == b.steps.tolist() == [1, first, first + 1]
    assert a.values.tolist() == [1.0, 3.0, 4.0] and b.values.tolist() == [10.0, 30.0, 40.0]


_FULL_DISK_SCRIPT = """
import os, sys, retune
folder = sys.argv[1]
run = retune.init("full", store=f"sqlite:///{folder}/r.db", flush_interval=3600)
for i in range(100):
    run.step(loss=float(i))
run.flush()
fd = os.open(f"{folder}/filler", os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    pass
os.close(fd)
for i in range(3000):
    run.step(loss=float(i), acc=float(i), a=1.0, b=2.0)
try:
    run.finish()
except retune.errors.StoreError as e:
    print("finish failed:", e, flush=True)
os.remove(f"{folder}/filler")  # space allows again before the process exits
"""


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 600 KiB filesystem (tmpfs) that the test can fill up."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_at_finish_ends_the_run_crashed_not_running(tiny_disk: Path) -> None:
    """Issue 8 item 18: the run must not stay ``running`` forever."""
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(tiny_disk)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "finish failed:" in done.stdout and "disk is full" in done.stdout
    snap = retune.load("full", store=f"sqlite:///{tiny_disk}/r.db")
    assert snap.status == "crashed"
    assert snap.run.error is not None and "could not be written" in snap.run.error
    assert len(snap.metric("loss")) == 3100  # the held points were written once space allowed


def test_a_long_flush_interval_still_keeps_the_heartbeat_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live run must never look stale (and so resumable by another process)."""
    import time

    from retune.session import _writer

    monkeypatch.setattr(_writer, "STALE_AFTER", 0.3)  # heartbeats at least every 0.1 s
    store = str(tmp_path / "h.db")
    with retune.init("beat", store=store, flush_interval=1000.0) as run:
        first = open_store(store).get_run(run.id).heartbeat_at
        deadline = time.monotonic() + 20
        while open_store(store).get_run(run.id).heartbeat_at == first:
            assert time.monotonic() < deadline, "no heartbeat while flush_interval is long"
            time.sleep(0.05)


class _RecordingStore(SqlStore):
    """A real SQLite store that records the progress every metric write carries."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.progress: list[tuple[int | None, float | None]] = []

    def append_metrics(self, run_id: str, chunks: Iterable[MetricChunk], **kw: Any) -> None:
        self.progress.append((kw.get("step"), kw.get("heartbeat_at")))
        super().append_metrics(run_id, chunks, **kw)


def test_a_writer_without_progress_adds_points_and_never_the_run_step_or_heartbeat(
    tmp_path: Path,
) -> None:
    """The writer of a distributed rank other than 0: its points are stored, but the run's
    step and heartbeat stay rank 0's (they were rank 1's too, and could go back)."""
    from retune.session._writer import MetricWriter

    url = f"sqlite:///{tmp_path / 'w.db'}"
    run = retune.init("owner", store=url, flush_interval=3600)
    run.step(loss=1.0)
    run.flush()
    store = _RecordingStore(url)
    before = store.get_run(run.id)
    writer = MetricWriter(store, run.id, flush_interval=3600, progress=None)
    group = writer.columns(run.node).group(("rank1/loss",))
    group.values.append(0.5)  # as Run.step appends: values, time, then the step
    group.times.append(time.time())
    group.steps.append(1)
    assert writer.flush() == 1
    assert writer.flush() == 0  # nothing buffered: nothing written at all
    writer.close()
    assert store.progress == [(None, None)]
    after = store.get_run(run.id)
    assert (after.step, after.heartbeat_at) == (before.step, before.heartbeat_at)
    assert store.read_metric(run.id, "rank1/loss").values.tolist() == [0.5]
    store.close()
    run.finish()

"""CLI test helpers: the real ``retune`` command in a subprocess, and a live training run."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retune.store import open_store

TRAINER = Path(__file__).with_name("live_trainer.py")
ROOT = Path(__file__).parents[2]


def retune_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m retune ARGS`` and return what it did (never raises on exit codes)."""
    return subprocess.run([sys.executable, "-m", "retune", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def poll(condition: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def trained_to(proc: subprocess.Popen[bytes], url: str, name: str, step: int) -> Callable[[], bool]:
    """A :func:`poll` condition: run ``name`` (trained by ``proc`` into the SQLite store at
    ``url``) reported ``step``; fails at once if the trainer exited."""

    def reached() -> bool:
        assert proc.poll() is None, "the trainer exited early"
        if not Path(url.removeprefix("sqlite:///")).exists():
            return False  # the trainer creates the store: never race it
        try:
            with open_store(url, create=False) as store:
                runs = store.list_runs(name=name)
                return bool(runs) and runs[0].step >= step
        except Exception:  # the store is being created
            return False

    return reached


@pytest.fixture
def live_run(store_url: str) -> Iterator[tuple[str, str]]:
    """A training process running until stopped: yields (run name, store URL) once the run
    is running with at least two checkpoints."""
    proc = subprocess.Popen([sys.executable, str(TRAINER), store_url, "live", "100000", "0.01"],
                            cwd=ROOT)  # fmt: skip
    try:

        def ready() -> bool:
            assert proc.poll() is None, "the trainer exited early"
            if not Path(store_url.removeprefix("sqlite:///")).exists():
                return False  # the trainer creates the store: never race it
            try:
                with open_store(store_url) as store:
                    runs = store.list_runs(name="live")
                    return bool(runs) and len(store.list_checkpoints(runs[0].id)) >= 2
            except Exception:  # the store is being created
                return False

        poll(ready, "the live run's first checkpoints")
        yield "live", store_url
    finally:
        if proc.poll() is None:
            retune_cli("stop", "live", "--store", store_url, "--timeout", "30")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

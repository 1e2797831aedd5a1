"""Shared fixtures: every test gets its own store folder and no RETUNE_* leaking in."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# make test is deterministic: property tests replay the same examples every run (a fuzzer
# that finds a new bug must not turn CI red at random). HYPOTHESIS_PROFILE=explore draws new
# examples, as make soak does.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("RETUNE_STORE", raising=False)
    monkeypatch.delenv("RETUNE_OBJECTS", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'retune.db'}"


def _descendants() -> dict[int, str]:
    """This process's live descendants (Linux ``/proc``): pid -> command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    found, frontier = {}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                found[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                frontier.append(pid)
    return found


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """After a test module and its fixtures are done, no process it started may live on: a
    trainer left running by a test that failed or timed out would spin a core for the rest of
    the session and slow every later test. Leftovers are killed and named in a warning.
    (multiprocessing's own helpers, which live as long as this process, are left alone.)"""
    if not Path("/proc/self/stat").exists():
        yield
        return
    before = set(_descendants())
    yield
    leftover = {
        pid: command
        for pid, command in _descendants().items()
        if pid not in before and "multiprocessing" not in command
    }
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in leftover:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # our child: reap it (a grandchild is reaped by init)
    if leftover:
        warnings.warn(
            "killed processes a test module left running: "
            + "; ".join(f"{pid}: {command[:200]}" for pid, command in leftover.items()),
            stacklevel=1,
        )

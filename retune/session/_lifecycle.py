"""Ending runs that the script did not end: normal interpreter exit and uncaught exceptions.

Registered once, the first time a run starts. At exit every run still open is finished:
``crashed`` (with the traceback) when an uncaught exception ended the script, ``stopped`` after
Ctrl-C or SIGTERM (a SIGTERM handler is installed when the program has none), else
``finished``. Buffered metrics are flushed in every case; only SIGKILL loses the last second.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
import traceback
from types import TracebackType
from typing import Protocol

from retune.errors import StopTraining

__all__ = ["track"]


class _Endable(Protocol):
    def _end_from_lifecycle(self, status: str, error: str | None) -> None: ...


_open_runs: set[_Endable] = set()
_lock = threading.Lock()
_installed = False
_uncaught: list[str] = []
_terminated: list[int] = []


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, StopTraining):
        print(f"retune: {exc}", file=sys.stderr)
        return
    _uncaught.append("".join(traceback.format_exception(exc_type, exc, tb)))
    _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook


def _on_sigterm(signum: int, _frame: object) -> None:
    """A scheduler (Slurm, Kubernetes, ``kill``) asks the process to end: end it cleanly."""
    _terminated.append(signum)
    raise SystemExit(128 + signum)


def _at_exit() -> None:
    error = _uncaught[-1] if _uncaught else None
    if _terminated:
        status, error = "stopped", "terminated by SIGTERM"
    elif error is not None and error.rstrip().endswith("KeyboardInterrupt"):
        status = "stopped"
    else:
        status = "crashed" if error else "finished"
    for run in list(_open_runs):
        run._end_from_lifecycle(status, error)


def track(run: _Endable) -> None:
    """Make sure ``run`` is ended when the interpreter exits, whatever happens."""
    global _installed, _previous_excepthook
    with _lock:
        if not _installed:
            _previous_excepthook = sys.excepthook
            sys.excepthook = _excepthook
            atexit.register(_at_exit)
            _install_sigterm()
            _installed = True
        _open_runs.add(run)


def _install_sigterm() -> None:
    """Handle SIGTERM like Ctrl-C, unless the program set its own handler (or is not main)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def untrack(run: _Endable) -> None:
    with _lock:
        _open_runs.discard(run)

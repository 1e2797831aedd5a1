"""Ending runs that the script did not end: exit, uncaught exceptions, signals, dead threads.

Registered once, the first time a run starts. At exit every run still open is finished:
``crashed`` (with the traceback) when an uncaught exception ended the script, ``stopped`` after
Ctrl-C or SIGTERM, else ``finished``. Buffered metrics are flushed in every case; only SIGKILL
loses the last second.

Signals (handlers are installed only where the program kept Python's defaults, and only from
the main thread): the first SIGTERM or Ctrl-C does not interrupt the training code in the
middle of a step. It asks every open run trained on the main thread to stop at its next step
boundary; there the run takes a ``stop`` checkpoint (so ``retune resume`` continues exactly
there) and raises ``SystemExit(143)`` for SIGTERM or ``KeyboardInterrupt`` for Ctrl-C. If no
boundary comes within :data:`GRACE_SECONDS`, or the signal comes again, it interrupts at once
(no stop checkpoint then). With no such run open, signals act as they always do.

While a run records its end (:func:`ending`: the last metrics and its status), a first
SIGTERM or Ctrl-C waits until that is written, then acts as above; a second one interrupts at
once. (A launcher such as torchrun terminates the other ranks the moment one dies: a rank
recording the crash must not be cut off in the middle of it.)

A thread that dies of an exception (``threading.excepthook``) ends the runs it was training
as ``crashed`` with its traceback.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Protocol

from retune.errors import StopTraining

__all__ = [
    "GRACE_SECONDS",
    "cancel_grace",
    "ending",
    "retry_at_exit",
    "terminated",
    "track",
    "untrack",
]

GRACE_SECONDS = 10.0
"""How long a first SIGTERM / Ctrl-C waits for a step boundary before it interrupts at once."""


class _Endable(Protocol):
    def _end_from_lifecycle(self, status: str, error: str | None) -> None: ...

    def _stop_at_boundary(self, signum: int) -> bool:
        """Ask the run to stop at its next step boundary; False unless it trains on the
        main thread (and so can honour it)."""
        ...

    @property
    def training_thread(self) -> threading.Thread | None: ...


_open_runs: set[_Endable] = set()
_lock = threading.RLock()  # re-entrant: the signal handler runs on the main thread
_installed = False
_uncaught: list[str] = []
_terminated: list[int] = []
_signalled: list[int] = []
_grace: list[threading.Timer] = []
_retries: list[Callable[[], None]] = []
_ending: list[object] = []  # one entry per run recording its end now
_held: list[int] = []  # the signal that came meanwhile


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, StopTraining):
        print(f"retune: {exc}", file=sys.stderr)
        return
    _uncaught.append("".join(traceback.format_exception(exc_type, exc, tb)))
    _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook
_previous_thread_excepthook = threading.excepthook


def _thread_excepthook(args: Any) -> None:
    """A thread died: the runs it trained end ``crashed`` now, with its traceback."""
    if args.exc_type is not None and issubclass(args.exc_type, StopTraining):
        print(f"retune: {args.exc_value}", file=sys.stderr)
        return
    if args.exc_type is not SystemExit and args.thread is not None:
        error = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        with _lock:
            mine = [run for run in _open_runs if run.training_thread is args.thread]
        for run in mine:
            run._end_from_lifecycle("crashed", error)
    _previous_thread_excepthook(args)


def terminated() -> bool:
    """True once this process received SIGTERM."""
    return bool(_terminated)


def _on_signal(signum: int, _frame: object) -> None:
    """SIGTERM (a scheduler, ``kill``) or Ctrl-C: stop cleanly at the next step boundary."""
    with _lock:
        if _ending:  # a run is recording its end: the first signal acts once it is written
            if not _held:
                _held.append(signum)
                return
            _held.clear()  # the second interrupts at once, and nothing is delivered again
    if signum == signal.SIGTERM:
        _terminated.append(signum)
    first = not _signalled
    _signalled.append(signum)
    with _lock:
        runs = list(_open_runs)
    deferred = [run for run in runs if run._stop_at_boundary(signum)]
    if first and deferred:
        print(
            f"retune: {signal.Signals(signum).name}: stopping at the next step boundary "
            "(checkpointed); send it again to stop at once",
            file=sys.stderr,
            flush=True,
        )
        timer = threading.Timer(GRACE_SECONDS, _signal_main_thread, (signum,))
        timer.daemon = True
        timer.start()
        _grace.append(timer)
        return
    cancel_grace()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextmanager
def ending() -> Iterator[None]:
    """Around the writes that record a run's end: a first SIGTERM or Ctrl-C that arrives
    meanwhile is held, and delivered again once the last such section is left. Only on the
    main thread, where signals interrupt: a run ending on another thread is not cut off by
    one (and holding it would only delay the main thread's own interruption)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    token = object()
    with _lock:
        _ending.append(token)
    try:
        yield
    finally:
        with _lock:
            _ending.remove(token)
            held = _held[:1] if not _ending else []
            if held:
                _held.clear()
        if held:
            signal.raise_signal(held[0])  # its handler runs again, now that the end is written


def _signal_main_thread(signum: int) -> None:
    """The grace period is over: deliver the signal again, to the main thread itself (so a
    blocking call there, a sleep or a read, is interrupted and the handler runs at once)."""
    signal.pthread_kill(threading.main_thread().ident or 0, signum)


def cancel_grace() -> None:
    """A run acted on the signal at its boundary: no forced interruption is needed any more.
    The next signal is treated as a first one again."""
    while _grace:
        _grace.pop().cancel()
    _signalled.clear()


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
    while _retries:
        _retries.pop(0)()


def retry_at_exit(attempt: Callable[[], None]) -> None:
    """Run ``attempt`` once more at interpreter exit (ending a run the store refused to mark
    ended, once space may allow). ``attempt`` must not raise."""
    with _lock:
        _retries.append(attempt)


def track(run: _Endable) -> None:
    """Make sure ``run`` is ended when the interpreter exits, whatever happens."""
    global _installed, _previous_excepthook, _previous_thread_excepthook
    with _lock:
        if not _installed:
            _previous_excepthook = sys.excepthook
            sys.excepthook = _excepthook
            _previous_thread_excepthook = threading.excepthook
            threading.excepthook = _thread_excepthook
            atexit.register(_at_exit)
            _install_signals()
            _installed = True
        _open_runs.add(run)


def _install_signals() -> None:
    """Handle SIGTERM and Ctrl-C (see the module doc), unless the program set its own
    handlers (or this is not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)


def untrack(run: _Endable) -> None:
    with _lock:
        _open_runs.discard(run)

"""Kernel interrupts stop the background jobs cleanly.

The interrupt button (or ``jupyter_client``'s ``interrupt_kernel``) sends SIGINT to the kernel.
Python delivers signals to the main thread only, and ipykernel swaps the SIGINT handler around
every message it handles: ``default_int_handler`` while a cell runs (so the cell gets a
``KeyboardInterrupt``), and back to the handler it saved (``SIG_IGN`` when the kernel is
idle). A job's thread therefore never sees the interrupt on its own.

While the kernel is an IPython kernel, this module keeps a handler in both places:

* during every cell (armed from IPython's ``pre_run_cell`` event, which runs after ipykernel
  installed its handler): stop every running job, then call the handler it replaced (the
  cell still gets its ``KeyboardInterrupt``);
* while idle (the handler ipykernel restores after each message, ``saved_sigint_handler``):
  stop every running job, then do what the replaced handler did (nothing, for ``SIG_IGN``).

"Stop" is a flag (``run.request_stop()``) the training thread checks at its next step
boundary, where it checkpoints and ends the run ``stopped``. Outside a kernel nothing is
installed: a script's Ctrl-C reaches its main thread as usual.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Protocol

__all__ = ["install", "unwatch", "watch"]


class _Stoppable(Protocol):
    def _interrupt(self) -> None: ...


_jobs: set[_Stoppable] = set()
_lock = threading.Lock()
_installed = False
_cell_previous: list[Any] = [signal.default_int_handler]
_idle_previous: list[Any] = [signal.SIG_IGN]


def watch(job: _Stoppable) -> None:
    """Stop ``job`` on the next kernel interrupt (installs the handlers once, if possible)."""
    with _lock:
        _jobs.add(job)
    install()


def unwatch(job: _Stoppable) -> None:
    with _lock:
        _jobs.discard(job)


def _stop_jobs() -> None:
    with _lock:
        jobs = list(_jobs)
    for job in jobs:
        job._interrupt()


def _chain(previous: Any, signum: int, frame: FrameType | None) -> None:
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        raise KeyboardInterrupt
    # SIG_IGN (or None: a handler not set from Python): nothing more to do


def _in_cell(signum: int, frame: FrameType | None) -> None:
    _stop_jobs()
    _chain(_cell_previous[0], signum, frame)


def _idle(signum: int, frame: FrameType | None) -> None:
    _stop_jobs()
    _chain(_idle_previous[0], signum, frame)


def _kernel() -> Any:
    import sys

    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return None
    shell = ipython.get_ipython()
    return getattr(shell, "kernel", None)


def _arm(*_: Any) -> None:
    """Put the handlers in place (main thread, inside a cell)."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGINT)
    if current is not _in_cell:
        _cell_previous[0] = current
        signal.signal(signal.SIGINT, _in_cell)
    kernel = _kernel()
    if kernel is not None and hasattr(kernel, "saved_sigint_handler"):
        saved = kernel.saved_sigint_handler
        if saved is not _idle:
            _idle_previous[0] = saved
            kernel.saved_sigint_handler = _idle


def install() -> bool:
    """Arm the handlers now and before every cell; False outside an IPython kernel (or off
    the main thread), where nothing is changed."""
    global _installed
    kernel = _kernel()
    if kernel is None or threading.current_thread() is not threading.main_thread():
        return False
    if not _installed:
        import IPython

        IPython.get_ipython().events.register("pre_run_cell", _arm)
        _installed = True
    _arm()
    return True

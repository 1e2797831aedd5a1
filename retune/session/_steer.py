"""Commands sent from the run handle itself: ``run.set()``, ``run.scale()``, ``run.restore()``.

Every such call takes the one command path the CLI and the dashboard take: ``submit`` checks
it against the run's declared tunables (the first validation) and records it; the training
thread claims it, validates it against the live optimizer and applies it at a step boundary
(the second validation), as a new node. Where it is applied depends on the calling thread:

* the training thread itself, or no training thread (training has not started, or its thread
  is gone): applied at once, here, between two steps;
* any other thread (a notebook cell while a :class:`retune.notebook.Job` trains in the
  background): queued; the training thread applies it at its next step boundary and this
  call waits for the outcome.

Either way the caller gets the resolved command (``applied``, with the step it took effect
at) or ``CommandRejected`` with the reason. The audit source is ``notebook`` inside a Jupyter
kernel and ``python`` elsewhere.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from retune.errors import CommandRejected, CommandTimeout, RetuneError, RunNotLive
from retune.session._control import Applier
from retune.session._protocols import TrainingSession
from retune.store import CommandRecord

__all__ = ["command_source", "send"]


class Steered(TrainingSession, Protocol):
    """What sending a command from the run handle needs of the run."""

    training_thread: threading.Thread | None
    _applier: Applier

    @property
    def name(self) -> str: ...

    @property
    def ended(self) -> bool: ...


def command_source() -> str:
    """``notebook`` when this process is a Jupyter kernel (IPython with a kernel attached),
    else ``python``. Looks only at modules already imported: imports nothing."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return "python"
    try:
        shell = ipython.get_ipython()
    except Exception:  # a half-initialised IPython: not a kernel we can tell
        return "python"
    return "notebook" if getattr(shell, "kernel", None) is not None else "python"


def _applies_here(run: Steered) -> bool:
    trainer = run.training_thread
    return trainer is None or trainer is threading.current_thread() or not trainer.is_alive()


def send(run: Steered, kind: str, payload: Mapping[str, Any], *, timeout: float) -> CommandRecord:
    """Submit ``kind`` for ``run`` and return it resolved (see the module doc).

    Raises ``RunNotLive`` for a run that has ended, ``CommandRejected`` (nothing changed)
    when either validation refuses it, ``CommandTimeout`` when the training thread did not
    reach a step boundary within ``timeout`` seconds (the command stays queued).
    """
    from retune.control._commands import submit

    if run.ended:
        raise RunNotLive(f"run {run.name} ({run.id}) has ended; commands need a live run")
    command = submit(run.store, run.id, kind, payload, source=command_source())
    if _applies_here(run):
        return run._applier.apply_now(run, command)
    return _wait(run, command, timeout)


def _wait(run: Steered, command: CommandRecord, timeout: float) -> CommandRecord:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            current = run.store.get_command(command.id)
        except RetuneError as e:
            if run.ended:
                raise RunNotLive(
                    f"run {run.name} ({run.id}) ended before command {command.id} was applied"
                ) from e
            raise
        if current.status == "applied":
            return current
        if current.status == "rejected":
            raise CommandRejected(current.reason or "rejected", command_id=current.id)
        if current.status == "pending" and _applies_here(run):
            # the training thread ended meanwhile without taking it: nothing else will
            return run._applier.apply_now(run, current)
        if time.monotonic() >= deadline:
            why = (
                "the training thread took it and is still applying it (a change waits for its "
                "checkpoint to be written)"
                if current.status == "applying"
                else "the training thread has not reached a step boundary (it stays queued)"
            )
            raise CommandTimeout(
                f"command {command.id} ({command.kind}) was not resolved within {timeout:g}s: {why}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)

"""Who is alive: the one home of the heartbeat rule and of "who am I".

A training process writes its run's heartbeat at every flush (every ``flush_interval``
seconds, default 1 s, also while paused). A run whose status is live (``running`` /
``paused``) but whose heartbeat is older than :data:`STALE_AFTER` seconds has lost its
process (killed, frozen, machine gone): readers show it as ``stale`` and a new process may
attach to it (``resume``). Sooner, when the owner recorded its host and pid and that host is
this one: a pid that no longer exists here is a process that is gone (a SIGKILLed trainer can
be resumed at once). Host names must then be unique among the machines sharing a store, as
they are for cluster nodes and containers.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from typing import Any

from retune.store._records import LIVE_STATUSES, RunRecord

__all__ = [
    "STALE_AFTER",
    "current_user",
    "in_use_message",
    "is_live",
    "is_stale",
    "process_identity",
]

STALE_AFTER = 30.0
"""Seconds without a heartbeat after which a live run's process is considered gone."""

INTERRUPTED_WHILE_APPLYING = (
    "the training process ended while applying this command, before recording its outcome "
    "(a change whose checkpoint was still being written, or an exploration)"
)
"""Why a command found ``applying`` when another process attaches to the run is rejected."""


def current_user() -> str | None:
    """The OS user name, or ``None`` when the platform cannot tell."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def process_identity() -> dict[str, Any]:
    """This process as a run records its owner: ``{"host", "pid", "user"}``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": current_user()}


def is_live(run: RunRecord, now: float | None = None) -> bool:
    """True when the run is ``running``/``paused``, its heartbeat is fresh and its owner is
    not known to be gone (see the module docstring)."""
    if run.status not in LIVE_STATUSES or run.heartbeat_at is None:
        return False
    if (time.time() if now is None else now) - run.heartbeat_at > STALE_AFTER:
        return False
    return not _owner_gone(run)


def _owner_gone(run: RunRecord) -> bool:
    """True only when the run's recorded process was on this host and its pid is free."""
    owner = run.meta.get("process") or run.meta.get("invocation") or {}
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return True
    except OSError:  # exists but is not ours (PermissionError), or cannot tell
        return False
    return False


def in_use_message(run: RunRecord, now: float | None = None) -> str:
    """Why a live run (:func:`is_live`) cannot be attached by another process: where it runs,
    and what to do."""
    process = run.meta.get("process") or run.meta.get("invocation") or {}
    where = f"process {process.get('pid', '?')} on host {process.get('host', '?')}"
    now = time.time() if now is None else now
    age = now - (run.heartbeat_at or now)
    return (
        f"run {run.name} ({run.id}) is {run.status} in {where} (heartbeat {age:.0f}s ago);"
        f" stop it first (`retune stop {run.id}`), or wait until its heartbeat is"
        f" {STALE_AFTER:g}s old if that process is gone"
    )


def is_stale(run: RunRecord, now: float | None = None) -> bool:
    """True when the run says it is live but its heartbeat stopped ``STALE_AFTER`` ago."""
    return run.status in LIVE_STATUSES and not is_live(run, now)

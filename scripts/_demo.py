"""What the picture scripts share: starting the demo trainer, waiting until it trained far
enough."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import retune
from retune.store import open_store

CLI = [sys.executable, "-m", "retune"]
"""The ``retune`` command of this interpreter."""


def start_demo(store: str, epochs: int, step_delay: float = 0.0) -> subprocess.Popen[bytes]:
    """``retune demo`` training into ``store`` in the background (no dashboard, one OpenMP
    thread, quiet); it exits when its epochs are done."""
    return subprocess.Popen(
        [*CLI, "demo", "--epochs", str(epochs), "--step-delay", str(step_delay), "--no-ui",
         "--exit", "--store", store],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def wait_for_step(store: str, name: str, step: int, *, timeout: float = 600.0) -> None:
    """Return once run ``name`` in ``store`` reported ``step``; RuntimeError after
    ``timeout`` seconds. The store may not exist yet (the trainer is starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open_store(store, create=False) as opened:
                if opened.get_run(name).step >= step:
                    return
        except retune.RetuneError:
            pass  # not created yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not reach step {step} within {timeout:g} s")
        time.sleep(0.2)

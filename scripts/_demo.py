"""What the picture scripts share: waiting until a demo run trained far enough."""

from __future__ import annotations

import time

import retune
from retune.store import open_store


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

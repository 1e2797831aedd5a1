"""One 500-node run shared by the picture tests (built once: about two seconds)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retune.store import Store, open_store
from tests.viz._build import HOSTILE, build_run


@dataclass(frozen=True)
class BigRun:
    url: str
    store: Store
    run_id: str
    name: str
    keys: tuple[str, ...]
    tunable: str


@pytest.fixture(scope="session")
def big_run() -> Iterator[BigRun]:
    """A live 500-node run whose run name, tunable and a metric key are hostile markup, with
    a metric named with ``/``, and three commands in its audit log."""
    # a real SQLite store; on tmpfs when there is one, so its 1,000 small commits are fast
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="retune-viz-", dir=shm if shm.is_dir() else None))
    url = f"sqlite:///{folder / 'viz.db'}"
    name, tunable = f"big {HOSTILE}", f"lr{HOSTILE}"
    keys = ("loss", f"val/acc {HOSTILE}")
    store = open_store(url)
    try:
        run_id = build_run(store, 500, name=name, keys=keys, tunable=tunable)
        applied = store.submit_command(run_id, "set", {"values": {tunable: 0.01}},
                                       source="cli", user="mia")  # fmt: skip
        store.claim_command(applied.id)
        store.resolve_command(applied.id, status="applied", applied_step=40, node=2,
                              result={"diff": {tunable: [0.1, 0.01]}})  # fmt: skip
        store.submit_command(run_id, "set", {"values": {"momentum": 2}}, source="ui", user="mia",
                             status="rejected", reason="momentum: unknown tunable")  # fmt: skip
        store.submit_command(run_id, "restore", {"target": "n3@100", "set": {tunable: 3e-4}},
                             source="notebook", user="mia")  # fmt: skip
        yield BigRun(url, store, run_id, name, keys, tunable)
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)

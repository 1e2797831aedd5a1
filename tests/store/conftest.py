"""The one parametrized fixture every backend's conformance run goes through.

SQLite always runs. PostgreSQL runs when ``RETUNE_TEST_POSTGRES_URL`` points at a server
(``make test`` starts one with ``scripts/postgres.sh``; each test gets a fresh schema).
Without one, every PostgreSQL case is reported as skipped, with the reason (never silently
dropped); in CI (``CI`` set) a missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from retune.store import Store, open_store
from tests._postgres import fresh_postgres

BACKENDS = ["sqlite", "postgresql"]
if not os.environ.get("RETUNE_TEST_POSTGRES_URL") and os.environ.get("CI"):
    raise RuntimeError("CI runs the store suite on PostgreSQL too: run it through `make test`")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'conformance.db'}"
    else:
        url = fresh_postgres()
    opened = open_store(url)
    yield opened
    opened.close()

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

BACKENDS = ["sqlite", "postgresql"]
POSTGRES_URL = os.environ.get("RETUNE_TEST_POSTGRES_URL")
NO_POSTGRES = (
    "no PostgreSQL configured: set RETUNE_TEST_POSTGRES_URL "
    "(`bash scripts/postgres.sh` starts one and prints it; `make test` does both)"
)
if not POSTGRES_URL and os.environ.get("CI"):
    raise RuntimeError("CI runs the store suite on PostgreSQL too: run it through `make test`")


def postgres_url() -> str:
    """The test server's URL (a fresh schema is the caller's job); skips when none is set."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    return POSTGRES_URL


def _fresh_postgres(url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'conformance.db'}"
    else:
        url = _fresh_postgres(postgres_url())
    opened = open_store(url)
    yield opened
    opened.close()

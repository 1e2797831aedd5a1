"""The test PostgreSQL server: one database per pytest-xdist worker, a fresh schema per test.

``make test`` runs pytest on every core (``-n auto``); workers that shared one database would
drop each other's schema mid-test, so worker ``gwN`` uses ``retune_test_gwN``
(``scripts/postgres.sh`` creates them).
"""

from __future__ import annotations

import os

import pytest

NO_POSTGRES = (
    "no PostgreSQL configured: set RETUNE_TEST_POSTGRES_URL "
    "(`bash scripts/postgres.sh` starts one and prints it; `make test` does both)"
)


def postgres_url() -> str:
    """This worker's database URL (its schema is not reset: see :func:`fresh_postgres`);
    skips the test when no server is configured."""
    url = os.environ.get("RETUNE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(NO_POSTGRES)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{url}_{worker}" if worker else url


def fresh_postgres() -> str:
    """This worker's database URL with an empty ``public`` schema."""
    from sqlalchemy import create_engine, text

    url = postgres_url()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url

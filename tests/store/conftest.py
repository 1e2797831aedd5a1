"""The one parametrized fixture every backend's conformance run goes through.

SQLite always runs. PostgreSQL runs when ``RETUNE_TEST_POSTGRES_URL`` points at a server
(``make test`` starts one with ``scripts/postgres.sh``; each test gets a fresh schema). In CI
a missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from retune.store import Store, open_store

BACKENDS = ["sqlite"]
if os.environ.get("RETUNE_TEST_POSTGRES_URL"):
    BACKENDS.append("postgresql")
elif os.environ.get("CI"):
    raise RuntimeError("CI runs the store suite on PostgreSQL too: run it through `make test`")


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
        url = _fresh_postgres(os.environ["RETUNE_TEST_POSTGRES_URL"])
    opened = open_store(url)
    yield opened
    opened.close()

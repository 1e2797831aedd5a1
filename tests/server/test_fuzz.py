"""A short, seeded schemathesis run against a live dashboard (issue 8, item 16).

The dashboard serves a store with a finished run (hostile metric names, checkpoints) and a real
training subprocess; every operation of ``/api/openapi.json`` gets positive and negative cases,
writes carry same-origin headers. No response may be a 5xx or a dropped connection, and every
4xx must say why (``{"error": code, "message": ...}``). The long campaign reuses ``_fuzz.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server._fuzz import (
    KNOWN,
    fuzz,
    fuzz_headers,
    live_dashboard,
    live_trainer,
    populate,
)

pytest.importorskip("schemathesis")


def test_a_seeded_fuzz_of_the_live_api_finds_no_5xx(tmp_path: Path) -> None:
    path = tmp_path / "fuzz.db"
    url = f"sqlite:///{path}"
    populate(url)
    with live_trainer(str(path), delay=0.05), live_dashboard(url) as base:
        report = fuzz(base, max_examples=15, seed=20261130, known=KNOWN)
    assert report.requests >= 200
    assert report.failures == []
    assert sum(n for status, n in report.statuses.items() if status < 300) > 50


@pytest.mark.parametrize("token", [None, "T"])
def test_hostile_header_values_are_4xx_with_a_reason(tmp_path: Path, token: str | None) -> None:
    url = f"sqlite:///{tmp_path / 'headers.db'}"
    populate(url)
    with live_dashboard(url, token=token) as base:
        report = fuzz_headers(base, token=token)
    assert report.requests == 2 * 17 * 8
    assert report.failures == []

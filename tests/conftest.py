"""Shared fixtures: every test gets its own store folder and no RETUNE_* leaking in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("RETUNE_STORE", raising=False)
    monkeypatch.delenv("RETUNE_OBJECTS", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'retune.db'}"

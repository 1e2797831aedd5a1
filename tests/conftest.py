"""Shared fixtures: every test gets its own store folder and no RETUNE_* leaking in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# make test is deterministic: property tests replay the same examples every run (a fuzzer
# that finds a new bug must not turn CI red at random). HYPOTHESIS_PROFILE=explore draws new
# examples, as make soak does.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("RETUNE_STORE", raising=False)
    monkeypatch.delenv("RETUNE_OBJECTS", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'retune.db'}"

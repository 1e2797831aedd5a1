"""Short API fuzzing campaign (``make soak`` sends >= 2,000 requests) against `retune ui`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaign.fuzz import run_campaign

pytestmark = pytest.mark.campaign


def test_a_live_retune_ui_answers_every_fuzzed_request_with_a_reason(tmp_path: Path) -> None:
    report = run_campaign(tmp_path, examples=8, seed=1)
    print(report.summary())
    assert report.requests >= 300
    assert report.failures() == []
    assert sum(n for status, n in report.statuses.items() if status < 300) > 30

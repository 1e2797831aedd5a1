"""Short concurrency campaign (``make soak`` runs 8 x 3000 steps): 3 trainings, one store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaign.concurrency import run_campaign

pytestmark = pytest.mark.campaign


def test_three_trainings_a_commander_and_a_reader_share_one_store(tmp_path: Path) -> None:
    report = run_campaign(tmp_path, runs=3, steps=400, seed=1)
    print(report.summary())
    assert report.stored_points == report.expected_points == 1200
    assert report.commands_sent > 0 and report.commands_applied > 0 and report.reads > 0
    assert report.failures() == []

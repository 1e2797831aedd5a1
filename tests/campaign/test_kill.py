"""Short kill campaign (``make soak`` runs 100 kills): SIGKILL a real trainer 10 times."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaign.kill import run_campaign

pytestmark = pytest.mark.campaign


def test_ten_sigkills_break_no_promise(tmp_path: Path) -> None:
    report = run_campaign(tmp_path, kills=10, seed=1)
    print(report.summary())
    assert report.kills == 10
    assert report.checkpoints_listed > 0 and report.acknowledged_points > 0
    assert report.resumes > 0
    assert report.failures() == []

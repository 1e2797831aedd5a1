"""Short kill campaign (``make soak`` runs 100 kills): SIGKILL a real trainer 10 times."""

from __future__ import annotations

from pathlib import Path

import pytest

import retune
from retune.checkpoint import manifest_hashes
from tests.campaign import _model
from tests.campaign.kill import NAME, KillReport, _Verifier, run_campaign

pytestmark = pytest.mark.campaign


def test_ten_sigkills_break_no_promise(tmp_path: Path) -> None:
    report = run_campaign(tmp_path, kills=10, seed=1)
    print(report.summary())
    assert report.kills == 10
    assert report.checkpoints_listed > 0 and report.acknowledged_points > 0
    assert report.resumes > 0
    assert report.failures() == []


def test_the_verifier_counts_what_breaks(tmp_path: Path) -> None:
    """The checks can fail: a damaged blob is an unrestorable checkpoint, a missing
    acknowledged point is lost, a store that is not a database is corrupt."""
    db = tmp_path / "retune.db"
    model, optimizer = _model.build()
    with retune.init(NAME, model=model, optimizer=optimizer, store=str(db)) as run:
        for step in range(1, 6):
            run.step(s=float(step))
        good = run.checkpoint()
        run.step(s=6.0)
        damaged = run.checkpoint()
    report = KillReport()
    verifier = _Verifier(db, report)
    verifier.acknowledge([[1, 1, 6]])
    verifier.check(recheck_all=True)
    assert report.failures() == ["the last process did not finish the run (status '')"]
    assert report.unrestorable_checkpoints == 0 and report.checkpoints_verified == 2
    key = sorted(manifest_hashes(damaged.manifest))[0]
    blob = tmp_path / "objects" / key[:2] / key[2:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of one blob of c2
    blob.write_bytes(bytes(data))
    verifier.acknowledge([[1, 7, 7]])  # a point nobody stored
    verifier.check(recheck_all=True)
    assert report.unrestorable_checkpoints >= 1, (good.label, damaged.label, blob)
    assert report.lost_acknowledged_points == 1
    db.write_bytes(b"not a database" * 100)
    for extra in tmp_path.glob("retune.db-*"):
        extra.unlink()
    verifier.check(recheck_all=True)
    assert report.corrupt_stores == 1
    assert "unreadable" in report.problems[-1]

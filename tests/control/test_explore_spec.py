"""The words and specs of an exploration, checked without a trainer."""

from __future__ import annotations

import pytest

from retune.control._commands import check_candidates, parse_score
from retune.control._parse import parse_candidates
from retune.control._tunables import TunableSpec
from retune.errors import InvalidArgument

SPECS = [
    TunableSpec(name="lr", kind="float", low=0.0, high=None, low_inclusive=True,
                high_inclusive=True, source="optimizer", groups=(None,)),
    TunableSpec(name="betas", kind="float", low=0.0, high=1.0, low_inclusive=True,
                high_inclusive=False, source="optimizer", groups=(None,), length=2),
]  # fmt: skip


def test_candidate_words() -> None:
    assert parse_candidates(["lr=1e-3,3e-4", "wd=0"]) == {"lr": [1e-3, 3e-4], "wd": [0]}
    assert parse_candidates(["betas=0.9,0.99;0.9,0.999"]) == {"betas": [(0.9, 0.99), (0.9, 0.999)]}
    for words, reason in [(["lr"], "expected name=value1"), (["lr=1,"], "empty value"),
                          (["lr="], "empty value"), (["lr=1", "lr=2"], "given twice")]:  # fmt: skip
        with pytest.raises(InvalidArgument, match=reason):
            parse_candidates(words)


def test_candidate_specs() -> None:
    ok = check_candidates(SPECS, {"lr": [1, 0.5], "betas": [(0.9, 0.99)]}, None, 16)
    assert ok == {"lr": [1.0, 0.5], "betas": [[0.9, 0.99]]}
    for values, reason in [
        ({}, "at least one"),
        ({"lr": 0.1}, "needs a list"),
        ({"lr": []}, "empty list"),
        ({"mom": [0.1]}, "unknown tunable 'mom'"),
        ({"lr": [float("nan")]}, "lr"),
        ({"lr": [1, 1.0]}, "twice"),
        ({"lr": [0.1, 0.2, 0.3], "betas": [(0.9, 0.99), (0.8, 0.9)]},
         "3 lr x 2 betas = 6 candidates, more than the cap of 5"),
    ]:  # fmt: skip
        with pytest.raises(InvalidArgument, match=reason):
            check_candidates(SPECS, values, None, 5)
    assert parse_score("last") is None and parse_score("mean:20") == 20
    for bad in ("mean:0", "mean:", "mean:x", "mean:٣", "max", 3):
        with pytest.raises(InvalidArgument, match="score must be"):
            parse_score(bad)

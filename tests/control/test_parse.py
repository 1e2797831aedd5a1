"""Parsing ``name=value`` words from the command line into typed values."""

from __future__ import annotations

import math

import pytest
import torch

from retune.control import discover_optimizer, parse_assignments, parse_value, validate
from retune.errors import InvalidArgument


def test_values_get_their_types() -> None:
    parsed = parse_assignments(
        ["lr=1e-3", "betas=0.9,0.99", "nesterov=true", "steps=3", "name=foo", "wd = -0.5"]
    )
    assert parsed == {
        "lr": 1e-3,
        "betas": (0.9, 0.99),
        "nesterov": True,
        "steps": 3,
        "name": "foo",
        "wd": -0.5,
    }
    assert isinstance(parsed["steps"], int) and isinstance(parsed["lr"], float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("False", False),
        ("TRUE", True),
        ("0", 0),
        ("-2", -2),
        ("1.5", 1.5),
        ("1e-4", 1e-4),
        ("1, 2", (1, 2)),
        ("a=b", "a=b"),
        ("abc", "abc"),
    ],
)
def test_parse_value(text: str, expected: object) -> None:
    assert parse_value(text) == expected
    assert type(parse_value(text)) is type(expected)


def test_non_finite_numbers_parse_so_the_validator_can_reject_them() -> None:
    assert math.isnan(parse_value("nan")) and parse_value("inf") == math.inf


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["lr"], "expected name=value, got 'lr'"),
        (["=3"], "expected name=value, got '=3'"),
        (["lr="], "expected name=value, got 'lr='"),
        (["lr=  "], "expected name=value"),
        (["lr=1", "lr=2"], "lr is given twice"),
        (["betas=0.9,"], "betas has an empty element in '0.9,'"),
        (["betas=,0.9"], "betas has an empty element"),
    ],
)
def test_malformed_words_are_rejected(words: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_assignments(words)


def test_a_string_for_a_float_is_left_to_the_validator() -> None:
    specs = discover_optimizer(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]))
    parsed = parse_assignments(["lr=abc", "betas=0.8,0.9"])
    with pytest.raises(InvalidArgument, match="lr expects a float, got 'abc'"):
        validate(specs, "lr", parsed["lr"])
    assert validate(specs, "betas", parsed["betas"]) == (0.8, 0.9)

"""Parsing ``name=value`` words from the command line into typed values."""

from __future__ import annotations

import math

import pytest
import torch

from retune.control import discover_optimizer, parse_assignments, parse_value, validate
from retune.control._parse import parse_count, parse_group, parse_int, parse_node
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


@pytest.mark.parametrize("text", ["٣", "²", "1_0", "\u0661.\u0665", " 3"])
def test_only_ascii_digits_make_numbers(text: str) -> None:
    assert parse_value(text) == text  # stays a string: the validator says what it expects


@pytest.mark.parametrize("text", ["٣", "²", "1_0", "+", "", "1.0", "0x10"])
def test_ids_steps_and_counts_refuse_anything_but_ascii_digits(text: str) -> None:
    with pytest.raises(InvalidArgument, match="ASCII digits"):
        parse_int(text, "step")


def test_integers_beyond_64_bits_are_a_clear_error() -> None:
    huge = "1" + "0" * 400
    with pytest.raises(InvalidArgument, match=r"value 100000000000\.\.\.\(401 digits\) is too"):
        parse_value(huge)
    with pytest.raises(InvalidArgument, match=r"lr: value .* is too large"):
        parse_assignments([f"lr={huge}"])
    with pytest.raises(InvalidArgument, match=r"step .* is too large"):
        parse_int(huge, "step")
    assert parse_value(str(2**63 - 1)) == 2**63 - 1
    assert parse_value("1e400") == math.inf  # a float: the validator refuses inf


def test_groups_are_ascii_indices_or_names() -> None:
    assert parse_group("0") == 0 and parse_group("body") == "body" and parse_group(None) is None
    for text in ("²", "٣", "٣٤"):
        with pytest.raises(InvalidArgument, match="ASCII digits"):
            parse_group(text)
    with pytest.raises(InvalidArgument, match="too large"):
        parse_group("9" * 30)
    with pytest.raises(InvalidArgument, match="0 or more"):
        parse_count("-1", "--port")


def test_nodes_are_written_n_and_ascii_digits() -> None:
    assert parse_node("n3") == 3 and parse_node("3") == 3 and parse_node(" n12 ") == 12
    for text in ("n²", "n\u0663", "x", "n", "n-1", "n1.5"):
        with pytest.raises(InvalidArgument, match="is not a node"):
            parse_node(text)

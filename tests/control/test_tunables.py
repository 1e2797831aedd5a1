"""Discovery of optimizer hyperparameters and the validation rules."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from retune.control import TunableSpec, discover_optimizer, parse_assignments, validate
from retune.errors import InvalidArgument


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
         {"lr", "momentum", "dampening", "weight_decay", "nesterov"}),
        (torch.optim.Adam, {"lr", "betas", "eps", "weight_decay"}),
        (torch.optim.AdamW, {"lr", "betas", "eps", "weight_decay"}),
        (torch.optim.RMSprop, {"lr", "alpha", "eps", "weight_decay", "momentum"}),
        (torch.optim.Adagrad, {"lr", "lr_decay", "eps", "weight_decay"}),
    ],
)  # fmt: skip
def test_every_numeric_hyperparameter_is_discovered(optimizer, expected) -> None:
    specs = discover_optimizer(optimizer(_params()))
    assert {s.name for s in specs} >= expected
    names = {s.name for s in specs}
    assert not names & {"foreach", "maximize", "capturable", "amsgrad", "params", "initial_lr"}


def test_groups_by_index_and_name() -> None:
    groups: list[dict[str, Any]] = [
        {"params": _params(), "name": "body"},
        {"params": _params(), "lr": 0.5},
    ]
    opt = torch.optim.SGD(groups, lr=0.1)
    specs = discover_optimizer(opt)
    lr = next(s for s in specs if s.name == "lr")
    assert lr.groups == ("body", None)
    assert validate(specs, "lr", 0.2, "body") == 0.2
    assert validate(specs, "lr", 0.2, 1) == 0.2
    with pytest.raises(
        InvalidArgument, match=r"group 2 does not exist; the groups are: 0 \(body\), 1"
    ):
        validate(specs, "lr", 0.2, 2)
    with pytest.raises(InvalidArgument, match="no param group named 'head'"):
        validate(specs, "lr", 0.2, "head")


def test_tensor_lr_is_a_float_tunable() -> None:
    opt = torch.optim.Adam(_params(), lr=torch.tensor(0.01), capturable=True)
    lr = next(s for s in discover_optimizer(opt) if s.name == "lr")
    assert lr.kind == "float"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("lrr", 0.1, "unknown tunable 'lrr'; valid names: betas, eps, lr, weight_decay"),
        ("lr", "abc", "lr expects a float, got 'abc'"),
        ("lr", True, "lr expects a float, got True"),
        ("lr", math.nan, "lr must be finite, got nan"),
        ("lr", math.inf, "lr must be finite, got inf"),
        ("lr", -0.1, "lr must be > 0, got -0.1"),
        ("lr", 0.0, "lr must be > 0, got 0"),
        ("betas", (0.9, 1.0), r"betas\[1\] must be >= 0 and < 1, got 1"),
        ("betas", 0.9, "betas expects 2 numbers"),
        ("betas", (0.9,), "betas expects 2 numbers, got 1"),
        ("weight_decay", -1e-4, "weight_decay must be >= 0"),
        ("eps", 0, "eps must be > 0"),
    ],
)
def test_invalid_values_get_a_clear_reason(name: str, value: object, message: str) -> None:
    specs = discover_optimizer(torch.optim.Adam(_params()))
    with pytest.raises(InvalidArgument, match=message):
        validate(specs, name, value)


def test_valid_values_are_normalized() -> None:
    specs = discover_optimizer(torch.optim.Adam(_params()))
    assert validate(specs, "lr", 1) == 1.0 and isinstance(validate(specs, "lr", 1), float)
    assert validate(specs, "betas", [0.8, 0.9]) == (0.8, 0.9)


def test_specs_round_trip_through_plain_data() -> None:
    specs = discover_optimizer(torch.optim.SGD(_params(), lr=0.1, momentum=0.9))
    assert [TunableSpec.from_dict(s.to_dict()) for s in specs] == specs


def test_parse_assignments() -> None:
    parsed = parse_assignments(["lr=1e-3", "betas=0.9,0.99", "nesterov=true", "steps=3", "x=abc"])
    assert parsed == {"lr": 1e-3, "betas": (0.9, 0.99), "nesterov": True, "steps": 3, "x": "abc"}
    for bad in (["lr"], ["=3"], ["lr="], ["lr=1", "lr=2"]):
        with pytest.raises(InvalidArgument):
            parse_assignments(bad)

"""Applying set/scale to a live optimizer and user knobs: atomic, validated, with a diff."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from retune.control import Knob, LiveTunables
from retune.errors import CommandRejected, InvalidArgument


def _two_groups() -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD(
        [{"params": [a], "name": "body", "lr": 0.1}, {"params": [b], "lr": 0.01}],
        lr=0.1,
        momentum=0.9,
    )


def _groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def test_set_all_groups_and_one_group() -> None:
    opt = _two_groups()
    live = LiveTunables(opt)
    assert live.set({"lr": 0.05}) == {"lr[body]": [0.1, 0.05], "lr[1]": [0.01, 0.05]}
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05]
    assert live.set({"momentum": 0.5}, group="body") == {"momentum[body]": [0.9, 0.5]}
    assert [g["momentum"] for g in opt.param_groups] == [0.5, 0.9]
    assert live.set({"momentum": 0.8}) == {"momentum[body]": [0.5, 0.8], "momentum[1]": [0.9, 0.8]}
    assert live.set({"momentum": 0.7}) == {"momentum": [0.8, 0.7]}


def test_scale_keeps_per_group_ratios() -> None:
    opt = _two_groups()
    diff = LiveTunables(opt).scale({"lr": 0.5})
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005]
    assert diff == {"lr[body]": [0.1, 0.05], "lr[1]": [0.01, 0.005]}


def test_scale_result_is_validated() -> None:
    opt = _two_groups()
    before = _groups(opt)
    with pytest.raises(CommandRejected, match="momentum must be >= 0 and < 1"):
        LiveTunables(opt).scale({"momentum": 2.0})
    assert _groups(opt) == before


@pytest.mark.parametrize(
    ("values", "group", "reason"),
    [
        ({"lrr": 0.1}, None, "unknown tunable 'lrr'"),
        ({"lr": "abc"}, None, "expects a float"),
        ({"lr": math.nan}, None, "finite"),
        ({"lr": math.inf}, None, "finite"),
        ({"lr": -1.0}, None, "lr must be >= 0"),
        ({"lr": 0.2}, 5, "group 5 does not exist"),
        ({"lr": 0.2, "momentum": 1.5}, None, "momentum must be"),
    ],
)
def test_rejections_change_nothing(values: dict[str, Any], group: Any, reason: str) -> None:
    opt = _two_groups()
    before = _groups(opt)
    with pytest.raises(CommandRejected, match=reason):
        LiveTunables(opt).set(values, group)
    assert _groups(opt) == before


def test_beta_of_one_is_rejected() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(CommandRejected, match=r"betas\[1\]"):
        LiveTunables(opt).set({"betas": (0.9, 1.0)})
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    LiveTunables(opt).set({"betas": [0.8, 0.99]})
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)


def test_a_raising_setter_rolls_back_everything() -> None:
    opt = _two_groups()
    live = LiveTunables(opt)

    def refuse(value: float) -> None:
        raise RuntimeError("cannot change while frozen")

    live.add(Knob("frozen", get=lambda: 1.0, set=refuse))
    before = _groups(opt)
    with pytest.raises(CommandRejected, match="setting frozen failed: cannot change while frozen"):
        live.set({"lr": 0.3, "frozen": 2.0})
    assert _groups(opt) == before


def test_tensor_lr_is_updated_in_place() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=torch.tensor(0.01),
                           capturable=True)  # fmt: skip
    tensor = opt.param_groups[0]["lr"]
    LiveTunables(opt).set({"lr": 0.002})
    assert opt.param_groups[0]["lr"] is tensor
    assert tensor.item() == pytest.approx(0.002)


def test_user_knobs_hold_values_and_wrap_setters() -> None:
    live = LiveTunables()
    clip = live.add(Knob("clip_norm", 1.0, bounds=(0, None)))
    model = torch.nn.Sequential(torch.nn.Dropout(0.1))
    live.add(Knob("dropout", get=lambda: model[0].p, set=lambda p: setattr(model[0], "p", p),
                  bounds=(0, 1)))  # fmt: skip
    assert live.hp.clip_norm == 1.0 and live.hp["dropout"] == 0.1
    diff = live.set({"clip_norm": 2.5, "dropout": 0.3})
    assert diff == {"clip_norm": [1.0, 2.5], "dropout": [0.1, 0.3]}
    assert clip.value == 2.5 and model[0].p == 0.3 and float(clip) == 2.5
    with pytest.raises(CommandRejected, match="dropout must be >= 0 and <= 1"):
        live.set({"dropout": 1.5})
    with pytest.raises(CommandRejected, match="not per param group"):
        live.set({"clip_norm": 1.0}, group=0)
    with pytest.raises(AttributeError, match="no tunable 'nope'"):
        _ = live.hp.nope
    with pytest.raises(InvalidArgument, match="already declared"):
        live.add(Knob("clip_norm", 3.0))


def test_values_and_records_are_plain_data() -> None:
    opt = _two_groups()
    live = LiveTunables(opt)
    live.add(Knob("clip_norm", 1.0))
    values = live.values()
    assert values["lr"] == [0.1, 0.01] and values["clip_norm"] == 1.0
    records = live.records()
    assert copy.deepcopy(records) == records
    assert {r["name"] for r in records} >= {"lr", "momentum", "clip_norm"}

"""Set and scale across the common optimizers: atomic, validated twice, tensor lr in place.

Every rejection leaves the optimizer (and the knobs) exactly as they were.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from retune.control import Knob, LiveTunables
from retune.control._schedulers import assign_group_value
from retune.errors import CommandRejected

Groups = list[dict[str, Any]]

OPTIMIZERS: dict[str, Callable[[Groups], torch.optim.Optimizer]] = {
    "SGD": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9),
    "Adam": lambda g: torch.optim.Adam(g, lr=0.1),
    "AdamW": lambda g: torch.optim.AdamW(g, lr=0.1),
    "RMSprop": lambda g: torch.optim.RMSprop(g, lr=0.1, momentum=0.5),
    "Adagrad": lambda g: torch.optim.Adagrad(g, lr=0.1),
    # Each group its own lr tensor (see test_a_shared_default_lr_tensor_... for the shared one).
    "Adam(capturable)": lambda g: torch.optim.Adam(
        [{**group, "lr": torch.tensor(0.1)} for group in g], lr=torch.tensor(0.1), capturable=True
    ),
}


def _make(kind: str) -> torch.optim.Optimizer:
    body, head = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return OPTIMIZERS[kind](
        [{"params": [body], "name": "body"}, {"params": [head], "name": "head"}]
    )


def _snapshot(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Group values as plain data, plus the identity of tensor-valued entries."""
    out = []
    for group in opt.param_groups:
        row: dict[str, Any] = {}
        for key, value in group.items():
            if key == "params":
                continue
            row[key] = (id(value), value.item()) if isinstance(value, torch.Tensor) else value
        out.append(row)
    return out


REJECTIONS: list[tuple[str, dict[str, Any], Any, str]] = [
    ("unknown name", {"lrr": 0.1}, None, "unknown tunable 'lrr'; valid names: .*lr"),
    ("string for a float", {"lr": "abc"}, None, "lr expects a float, got 'abc'"),
    ("bool for a float", {"lr": True}, None, "lr expects a float, got True"),
    ("NaN", {"lr": math.nan}, None, "lr must be finite, got nan"),
    ("inf", {"lr": math.inf}, None, "lr must be finite, got inf"),
    ("negative lr", {"lr": -0.1}, None, "lr must be >= 0, got -0.1"),
    ("negative weight decay", {"weight_decay": -1.0}, None, "weight_decay must be >= 0"),
    ("group out of range", {"lr": 0.2}, 2, "group 2 does not exist; the groups are: 0 \\(body\\)"),
    ("unknown group name", {"lr": 0.2}, "tail", "no param group named 'tail'"),
    ("second value bad", {"lr": 0.2, "eps": 0.0}, None, "eps must be > 0, got 0"),
]


@pytest.mark.parametrize("apply", [True, False], ids=["applied", "checked-only"])
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize(("case", "values", "group", "reason"), REJECTIONS, ids=lambda x: x)
def test_rejected_set_changes_nothing(
    kind: str, case: str, values: dict[str, Any], group: Any, reason: str, apply: bool
) -> None:
    """Refused with the same reason whether applied or only checked (``apply=False``)."""
    opt = _make(kind)
    if "eps" in values and kind == "SGD":
        values = {"lr": 0.2, "momentum": 1.0}
        reason = "momentum must be >= 0 and < 1, got 1"
    before = _snapshot(opt)
    with pytest.raises(CommandRejected, match=reason):
        LiveTunables(opt).set(values, group, apply=apply)
    assert _snapshot(opt) == before


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_a_check_without_applying_returns_the_diff_and_changes_nothing(kind: str) -> None:
    opt = _make(kind)
    live, before = LiveTunables(opt), _snapshot(opt)
    set_twin, scale_twin = _make(kind), _make(kind)
    assert live.set({"lr": 0.3}, "head", apply=False) == LiveTunables(set_twin).set(
        {"lr": 0.3}, "head"
    )
    assert live.scale({"lr": 0.5}, apply=False) == LiveTunables(scale_twin).scale({"lr": 0.5})
    with pytest.raises(CommandRejected, match="mode must be rescale or constant"):
        live.set({"lr": 0.3}, mode="sideways", apply=False)
    assert _snapshot(opt) == before
    assert _snapshot(set_twin) != before and _snapshot(scale_twin) != before


@pytest.mark.parametrize("kind", ["Adam", "AdamW", "Adam(capturable)"])
def test_a_beta_of_one_is_rejected(kind: str) -> None:
    opt = _make(kind)
    before = _snapshot(opt)
    with pytest.raises(CommandRejected, match=r"betas\[0\] must be >= 0 and < 1, got 1"):
        LiveTunables(opt).set({"lr": 0.01, "betas": (1.0, 0.99)})
    assert _snapshot(opt) == before


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_a_raising_setter_rolls_back_optimizer_and_knobs(kind: str) -> None:
    opt = _make(kind)
    live = LiveTunables(opt)
    clip = live.add(Knob("clip_norm", 1.0, bounds=(0, None)))

    def refuse(value: float) -> None:
        raise RuntimeError("frozen until epoch 3")

    live.add(Knob("loss_weight", get=lambda: 0.5, set=refuse))
    before = _snapshot(opt)
    with pytest.raises(CommandRejected, match="setting loss_weight failed: frozen until epoch 3"):
        live.set({"lr": 0.3, "clip_norm": 2.0, "loss_weight": 0.7})
    assert _snapshot(opt) == before
    assert clip.value == 1.0 and live.hp.clip_norm == 1.0


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_set_and_scale_apply_with_a_json_diff(kind: str) -> None:
    opt = _make(kind)
    live = LiveTunables(opt)
    lr_entry = opt.param_groups[0]["lr"]
    diff = live.set({"lr": 0.02}, group="head")
    assert diff == {"lr[head]": [pytest.approx(0.1), pytest.approx(0.02)]}
    diff = live.scale({"lr": 0.5, "weight_decay": 3.0})
    decay = _snapshot(opt)[0]["weight_decay"] / 3.0
    assert diff["lr[body]"] == [pytest.approx(0.1), pytest.approx(0.05)]
    assert diff["lr[head]"] == [pytest.approx(0.02), pytest.approx(0.01)]
    assert diff["weight_decay"] == [pytest.approx(decay), pytest.approx(decay * 3)]
    assert json.loads(json.dumps(diff)) == diff
    assert [float(g["lr"]) for g in opt.param_groups] == pytest.approx([0.05, 0.01])
    if isinstance(lr_entry, torch.Tensor):
        assert opt.param_groups[0]["lr"] is lr_entry  # a tensor lr is filled, never replaced
    assert live.values()["lr"] == pytest.approx([0.05, 0.01])


def test_scaled_results_are_validated() -> None:
    opt = _make("SGD")
    before = _snapshot(opt)
    with pytest.raises(CommandRejected, match=r"momentum must be >= 0 and < 1, got 1\.8"):
        LiveTunables(opt).scale({"lr": 2.0, "momentum": 2.0})
    assert _snapshot(opt) == before
    adam = _make("Adam")
    before = _snapshot(adam)
    with pytest.raises(CommandRejected, match=r"betas\[1\] must be >= 0 and < 1"):
        LiveTunables(adam).scale({"betas": 1.01})
    assert _snapshot(adam) == before


def test_training_continues_after_a_change() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    # Tensor lr that also steps on CPU (capturable=True needs an accelerator to step).
    opt = torch.optim.Adam([param], lr=torch.tensor(0.1), foreach=False)
    lr_entry = opt.param_groups[0]["lr"]
    live = LiveTunables(opt)
    for step in range(4):
        if step == 2:
            live.set({"lr": 0.01, "betas": [0.8, 0.99]})
        opt.zero_grad()
        (param**2).sum().backward()  # type: ignore[no-untyped-call]
        opt.step()
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.param_groups[0]["lr"] is lr_entry and lr_entry.item() == pytest.approx(0.01)
    assert torch.isfinite(param).all()


def test_a_tensor_lr_shared_by_groups_is_untied_before_a_per_group_change() -> None:
    groups = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam([{"params": [p]} for p in groups], lr=torch.tensor(0.1),
                           capturable=True)  # fmt: skip
    shared = opt.param_groups[0]["lr"]
    assert opt.param_groups[1]["lr"] is shared  # torch hands every group the default object
    assign_group_value(opt.param_groups[1], "lr", 0.02, opt.param_groups)
    assert opt.param_groups[0]["lr"] is shared and shared.item() == pytest.approx(0.1)
    assert isinstance(opt.param_groups[1]["lr"], torch.Tensor)
    assert opt.param_groups[1]["lr"].item() == pytest.approx(0.02)
    assign_group_value(opt.param_groups[1], "lr", 0.03, opt.param_groups)  # now its own: in place
    assert opt.param_groups[1]["lr"].item() == pytest.approx(0.03)


def test_set_on_one_group_with_a_shared_tensor_lr_leaves_the_other() -> None:
    groups = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam([{"params": [p]} for p in groups], lr=torch.tensor(0.1),
                           capturable=True)  # fmt: skip
    LiveTunables(opt).set({"lr": 0.02}, group=1)
    assert [float(g["lr"]) for g in opt.param_groups] == pytest.approx([0.1, 0.02])


@pytest.mark.parametrize("value", [10**400, -(10**400), 2**1030], ids=["1e400", "-1e400", "2^1030"])
def test_an_int_beyond_float_range_is_rejected_with_a_reason_not_a_traceback(value: int) -> None:
    """Issue 8 item 16 (``retune set RUN lr=1<400 zeros>``): validation says "too large"."""
    opt = _make("SGD")
    before = _snapshot(opt)
    live = LiveTunables(opt)
    live.add(Knob("layers", 2))
    for name in ("lr", "layers"):
        with pytest.raises(CommandRejected, match="too large"):
            live.set({name: value})
    assert _snapshot(opt) == before and live.hp.layers == 2

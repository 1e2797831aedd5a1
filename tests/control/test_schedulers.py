"""With an LR scheduler attached, `set lr` rescales the schedule or holds a constant value.

Each case records the lr every optimizer step actually used, once without a change (the
reference) and once with a change at step K, and compares the two sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as sched

from retune.control import LiveTunables
from retune.errors import CommandRejected

STEPS, K = 40, 12
Make = Callable[[torch.optim.Optimizer], Any]

SCHEDULERS: dict[str, Make] = {
    "StepLR": lambda o: sched.StepLR(o, step_size=7, gamma=0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, milestones=[5, 20, 30], gamma=0.3),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, gamma=0.93),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.001),
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.5, total_steps=STEPS + 1),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o, factor=0.5, patience=2),
    "SequentialLR": lambda o: sched.SequentialLR(
        o,
        [sched.LinearLR(o, start_factor=0.1, total_iters=5), sched.CosineAnnealingLR(o, 30)],
        milestones=[20],
    ),
}


def _train(
    make: Make, change: Callable[[LiveTunables, torch.optim.Optimizer], None] | None = None
) -> list[float]:
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    scheduler = make(opt)
    live = LiveTunables(opt, scheduler)
    used = []
    for step in range(STEPS):
        if step == K and change is not None:
            change(live, opt)
        opt.zero_grad()
        param.sum().backward()  # type: ignore[no-untyped-call]
        opt.step()
        used.append(float(opt.param_groups[0]["lr"]))
        if isinstance(scheduler, sched.ReduceLROnPlateau):
            scheduler.step(1.0)  # a flat metric: the plateau scheduler keeps decaying
        else:
            scheduler.step()
    return used


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_rescale_keeps_the_schedule_shape_from_the_new_value(name: str) -> None:
    reference = _train(SCHEDULERS[name])
    factor = 0.25

    def change(live: LiveTunables, opt: torch.optim.Optimizer) -> None:
        live.set({"lr": opt.param_groups[0]["lr"] * factor}, mode="rescale")

    changed = _train(SCHEDULERS[name], change)
    assert changed[:K] == reference[:K]
    assert changed[K:] == pytest.approx([lr * factor for lr in reference[K:]], rel=1e-9)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_constant_holds_the_new_value(name: str) -> None:
    reference = _train(SCHEDULERS[name])
    seen: dict[str, Any] = {}

    def change(live: LiveTunables, opt: torch.optim.Optimizer) -> None:
        live.set({"lr": 0.0123}, mode="constant")
        seen["scheduler"] = live.scheduler

    changed = _train(SCHEDULERS[name], change)
    assert changed[:K] == reference[:K]
    assert changed[K:] == [0.0123] * (STEPS - K)
    assert seen["scheduler"].scheduler.get_last_lr()[0] == pytest.approx(0.0123)


def test_constant_pins_survive_state_dict_and_keep_it_clean() -> None:
    param = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([param], lr=0.1)
    scheduler = sched.StepLR(opt, step_size=1, gamma=0.5)
    live = LiveTunables(opt, scheduler)
    live.set({"lr": 0.02}, mode="constant")
    state = scheduler.state_dict()
    assert all("retune" not in type(v).__module__ for v in state.values())
    assert isinstance(scheduler, sched.StepLR)
    assert live.state_dict()["scheduler"] == {"pins": [[0, "lr", 0.02]]}
    assert live.scheduler is not None
    live.scheduler.close()
    assert type(scheduler) is sched.StepLR


def test_one_cycle_momentum_rescale_is_rejected_with_a_reason_constant_pins_it() -> None:
    param = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    scheduler = sched.OneCycleLR(opt, max_lr=0.5, total_steps=20)
    live = LiveTunables(opt, scheduler)
    before = opt.param_groups[0]["momentum"]
    with pytest.raises(CommandRejected, match="drives momentum every step"):
        live.set({"momentum": 0.8})
    assert opt.param_groups[0]["momentum"] == before
    live.set({"momentum": 0.8}, mode="constant")
    for _ in range(5):
        opt.step()
        scheduler.step()
        assert opt.param_groups[0]["momentum"] == 0.8
    live.set({"max_momentum": 0.9, "base_momentum": 0.8})  # the cycle itself is tunable


def test_rescale_from_zero_lr_is_rejected() -> None:
    param = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([param], lr=0.1)
    scheduler = sched.LambdaLR(opt, lambda e: 0.0)
    live = LiveTunables(opt, scheduler)
    with pytest.raises(CommandRejected, match="current lr is 0; use mode=constant"):
        live.set({"lr": 0.01})


def test_cosine_eta_min_needs_every_group_scaled_alike() -> None:
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    live = LiveTunables(opt, sched.CosineAnnealingLR(opt, T_max=10, eta_min=0.01))
    with pytest.raises(CommandRejected, match="one eta_min for all groups"):
        live.set({"lr": 0.05}, group=0)
    live.scale({"lr": 0.5})
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05]

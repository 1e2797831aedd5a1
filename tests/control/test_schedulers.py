"""With an LR scheduler attached, `set lr` rescales the schedule or holds a constant value.

Each case records the lr every optimizer step actually used, once without a change (the
reference) and once with a change at step K, and compares the two sequences.
"""

from __future__ import annotations

import time
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
    # Beyond the usual ones: the floor / peak / restarts / chains the rescale must follow too.
    "ReduceLROnPlateau(min_lr)": lambda o: sched.ReduceLROnPlateau(o, factor=0.5, patience=1,
                                                                  min_lr=0.01),
    "CyclicLR": lambda o: sched.CyclicLR(o, base_lr=0.01, max_lr=0.2, step_size_up=5),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, 7, eta_min=0.002),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=30, power=2.0),
    "ConstantLR": lambda o: sched.ConstantLR(o, factor=0.3, total_iters=15),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, lambda e: 0.95),
    "ChainedScheduler": lambda o: sched.ChainedScheduler(
        [sched.ExponentialLR(o, gamma=0.95), sched.StepLR(o, step_size=5, gamma=0.5)]
    ),
}  # fmt: skip


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


@pytest.mark.parametrize("factor", [0.25, 3.0])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_rescale_keeps_the_schedule_shape_from_the_new_value(name: str, factor: float) -> None:
    reference = _train(SCHEDULERS[name])

    def change(live: LiveTunables, opt: torch.optim.Optimizer) -> None:
        live.set({"lr": opt.param_groups[0]["lr"] * factor}, mode="rescale")

    changed = _train(SCHEDULERS[name], change)
    assert changed[:K] == reference[:K]
    assert changed[K:] == pytest.approx([lr * factor for lr in reference[K:]], rel=1e-12)


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


def _two_group_run(
    make: Make, change: Callable[[LiveTunables], object] | None = None
) -> list[list[float]]:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    groups: list[dict[str, Any]] = [
        {"params": [a], "name": "body"},
        {"params": [b], "name": "head", "lr": 0.05},
    ]
    opt = torch.optim.SGD(
        groups,
        lr=0.1,
        momentum=0.9,
    )
    scheduler = make(opt)
    live = LiveTunables(opt, scheduler)
    used = []
    for step in range(STEPS):
        if step == K and change is not None:
            change(live)
        opt.zero_grad()
        (a.sum() + b.sum()).backward()  # type: ignore[no-untyped-call]
        opt.step()
        used.append([float(g["lr"]) for g in opt.param_groups])
        scheduler.step()
    return used


@pytest.mark.parametrize("name", ["StepLR", "LambdaLR", "OneCycleLR", "SequentialLR", "CyclicLR"])
def test_rescale_of_one_group_leaves_the_other_alone(name: str) -> None:
    reference = _two_group_run(SCHEDULERS[name])
    changed = _two_group_run(
        SCHEDULERS[name], lambda live: live.set({"lr": live.values()["lr"][1] * 4}, group="head")
    )
    assert changed[:K] == reference[:K]
    assert [lrs[0] for lrs in changed] == [lrs[0] for lrs in reference]
    assert [lrs[1] for lrs in changed[K:]] == pytest.approx(
        [lrs[1] * 4 for lrs in reference[K:]], rel=1e-12
    )


def test_constant_on_one_group_pins_only_that_group() -> None:
    reference = _two_group_run(SCHEDULERS["ExponentialLR"])
    changed = _two_group_run(
        SCHEDULERS["ExponentialLR"], lambda live: live.set({"lr": 0.3}, group=0, mode="constant")
    )
    assert [lrs[0] for lrs in changed[K:]] == [0.3] * (STEPS - K)
    assert [lrs[1] for lrs in changed] == [lrs[1] for lrs in reference]


def test_one_cycle_with_adam_drives_betas() -> None:
    param = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.Adam([param], lr=0.1)
    scheduler = sched.OneCycleLR(opt, max_lr=0.5, total_steps=20)
    live = LiveTunables(opt, scheduler)
    before = opt.param_groups[0]["betas"]
    with pytest.raises(CommandRejected, match="drives betas every step"):
        live.set({"betas": (0.9, 0.99)})
    assert opt.param_groups[0]["betas"] == before
    live.set({"lr": 0.01})  # lr still rescales; only the driven key is refused
    live.set({"betas": (0.8, 0.99)}, mode="constant")
    for _ in range(5):
        opt.step()
        scheduler.step()
        assert opt.param_groups[0]["betas"] == (0.8, 0.99)


def test_pins_load_into_a_fresh_control() -> None:
    def fresh() -> tuple[torch.optim.Optimizer, Any, LiveTunables]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
        scheduler = sched.ExponentialLR(opt, gamma=0.5)
        return opt, scheduler, LiveTunables(opt, scheduler)

    _, _, live = fresh()
    live.set({"lr": 0.07}, mode="constant")
    saved = live.state_dict()
    opt, scheduler, restored = fresh()
    restored.load_state_dict(saved)
    for _ in range(3):
        opt.step()
        scheduler.step()
        assert opt.param_groups[0]["lr"] == 0.07


def test_finishing_the_run_removes_the_pin_so_a_later_manual_lr_stays(store_url: str) -> None:
    """Issue 8 item 9: after finish(), the scheduler is as it was given."""
    import retune
    from retune.control._commands import submit

    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1)
    scheduler = sched.StepLR(opt, step_size=1000, gamma=0.5)
    original_class = type(scheduler)
    with retune.init(
        "pinned", optimizer=opt, scheduler=scheduler, store=store_url, poll_interval=0.01
    ) as run:
        command = submit(
            run.store, run.id, "set", {"values": {"lr": 0.02}, "mode": "constant"}, source="python"
        )
        deadline = time.monotonic() + 60
        while run.store.get_command(command.id).status != "applied":
            assert time.monotonic() < deadline, "the set was never applied"
            run.step(loss=1.0)  # applied at a step boundary
        assert opt.param_groups[0]["lr"] == 0.02 and type(scheduler) is not original_class
    assert type(scheduler) is original_class
    opt.param_groups[0]["lr"] = 0.5  # the user takes over
    opt.zero_grad()
    param.sum().backward()  # type: ignore[no-untyped-call]
    opt.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.5
    assert scheduler.get_last_lr() == [0.5]

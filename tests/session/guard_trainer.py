"""The digits CNN (tiny subset) with injected faults, for the guard's tests. A subprocess.

usage: python guard_trainer.py STORE SCENARIO [SCENARIO ...] [--name-suffix S]

Each SCENARIO is ``NAME:GUARD:FAULT`` and trains one run named NAME, one after another:
GUARD is ``on`` or ``off``; FAULT is ``nan@N`` (step N's loss is made NaN, once), ``lr@N``
(lr is raised 100x at step N, once), ``unstable@N`` (once step N was reached, the loss is NaN
whenever lr is above 0.04, and the guard lowers lr only 0.9x: only a person fixes it) or ``none``. Prints one JSON line per
run: ``{"name", "run", "loss" (float.hex of the last loss), "finite", "steps"}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import retune
from retune.demo import build_model, load_digits_tensors

EPOCHS = 4
BATCH = 32
SAMPLES = 384  # 12 batches per epoch, 48 steps in all
torch.set_num_threads(1)  # several trainers share two cores
GUARD = retune.Guard(window=8, every=6, warmup=4, max_attempts=2, lr_factor=0.5)
UNSTABLE_GUARD = dataclasses.replace(GUARD, lr_factor=0.9)


def train(store: str, name: str, guard: bool, fault: str) -> dict[str, Any]:
    torch.manual_seed(0)
    x, y, _, _ = load_digits_tensors(0)
    loader = DataLoader(TensorDataset(x[:SAMPLES], y[:SAMPLES]), batch_size=BATCH, shuffle=True)
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    kind, _, at = fault.partition("@")
    fault_step = int(at) if at else 0
    fired = armed = False
    run = retune.init(
        name,
        model=model,
        optimizer=optimizer,
        seed=3,
        store=store,
        guard=(UNSTABLE_GUARD if kind == "unstable" else GUARD) if guard else False,
        flush_interval=0.05,
        poll_interval=0.02,
    )
    loss_value = float("nan")
    with run:
        for _epoch in run.epochs(EPOCHS):
            for xb, yb in run.batches(loader):
                step = run.global_step + 1  # the step this batch makes
                if kind == "lr" and step == fault_step and not fired:
                    fired = True
                    for group in optimizer.param_groups:
                        group["lr"] *= 100.0
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                if kind == "nan" and step == fault_step and not fired:
                    fired = True
                    loss = loss * float("nan")
                armed = armed or (kind == "unstable" and step >= fault_step)
                if armed and optimizer.param_groups[0]["lr"] > 0.04:
                    loss = loss * float("nan")
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                loss_value = loss.item()
                run.step(loss=loss_value)
    return {
        "name": name,
        "run": run.id,
        "loss": loss_value.hex(),
        "finite": math.isfinite(loss_value),
        "steps": run.global_step,
    }


def main(argv: list[str]) -> None:
    store = argv[0]
    for scenario in argv[1:]:
        name, guard, fault = scenario.split(":")
        print(json.dumps(train(store, name, guard == "on", fault)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""A tiny live training for the CLI tests, run as a subprocess until stopped.

usage: python live_trainer.py STORE NAME STEPS STEP_DELAY
Checkpoints every 50 steps (all kept); a StepLR halves lr every 50 steps (the live value moves by itself).
"""

from __future__ import annotations

import sys
import time

import torch

import retune


def main() -> None:
    store, name, steps, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    run = retune.init(name, model=model, optimizer=optimizer, scheduler=scheduler, store=store,
                      poll_interval=0.02, checkpoint_every_n_steps=50, keep_last=100_000)  # fmt: skip
    with run:
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            run.step(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
            time.sleep(delay)


if __name__ == "__main__":
    main()

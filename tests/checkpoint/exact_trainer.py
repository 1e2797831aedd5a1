"""Training used by the exactness tests: dropout, Adam, a cosine schedule, shuffled data.

usage: python exact_trainer.py STORE NAME [RESUME_TARGET]
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import retune

EPOCHS = 4


def build() -> tuple[Any, Any, Any, Any]:
    torch.manual_seed(1234)
    x = torch.randn(200, 10)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 2)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(loader))
    return model, optimizer, scheduler, loader


def train(run: retune.Run, model, optimizer, scheduler, loader, restore_at: int | None = None,
          restore_target: str | None = None) -> None:  # fmt: skip
    for _epoch in run.epochs(EPOCHS):
        for x, y in run.batches(loader):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            run.state["seen"] = run.state.get("seen", 0) + len(y)
            run.step(loss=loss.item(), lr=scheduler.get_last_lr()[0], noise=torch.rand(()).item())
            if restore_at is not None and run.global_step == restore_at and restore_target:
                run.restore(restore_target)
                restore_at = None
        run.log(seen=run.state["seen"])


def main() -> None:
    store, name = sys.argv[1], sys.argv[2]
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    model, optimizer, scheduler, loader = build()
    run = retune.init(name, model=model, optimizer=optimizer, scheduler=scheduler, seed=7,
                      store=store, checkpoint_every_n_steps=10, resume=resume)  # fmt: skip
    with run:
        train(run, model, optimizer, scheduler, loader)


if __name__ == "__main__":
    main()

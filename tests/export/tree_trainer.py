"""A tiny real training that grows a tree of three nodes, for the compare and export tests.

usage: python tree_trainer.py STORE NAME
n1 trains 12 steps (lr 0.1, weight_decay 0) and checkpoints at step 6; n2 restores that
checkpoint with lr 0.01 and trains 6 steps; n3 restores it with weight_decay 0.01 and trains 4.
"""

from __future__ import annotations

import sys

import torch

import retune


def main() -> None:
    store, name = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    run = retune.init(name, model=model, optimizer=optimizer, store=store)

    def train(steps: int) -> None:
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            accuracy = (model(x).argmax(1) == y).float().mean().item()
            run.step(loss=loss.item(), accuracy=accuracy)

    with run:
        train(6)
        checkpoint = run.checkpoint()
        train(6)
        run.restore(checkpoint.label, set={"lr": 0.01})
        train(6)
        run.restore(checkpoint.label, set={"weight_decay": 0.01})
        train(4)


if __name__ == "__main__":
    main()

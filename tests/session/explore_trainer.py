"""A tiny digits model trained until stopped, for the exploration tests (a subprocess).

usage: python explore_trainer.py STORE NAME [STEP_DELAY]
An MLP with dropout on 384 of scikit-learn's digits, SGD with momentum, ``run.epochs()`` /
``run.batches()`` (shuffled), ``loss`` and ``val_loss`` logged every step, a kept checkpoint
at step 10 (``n1@10``, a start that does not depend on timing). A step delay keeps
it from spinning a CPU core while the test waits.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import retune
from retune.demo import load_digits_tensors

WARM = 10


def main() -> None:
    store, name = sys.argv[1], sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.005
    x, y, x_val, y_val = load_digits_tensors(0)
    x, y, x_val, y_val = x[:384].flatten(1), y[:384], x_val[:128].flatten(1), y_val[:128]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    run = retune.init(name, model=model, optimizer=optimizer, store=store, seed=3,
                      poll_interval=0.02)  # fmt: skip
    with run:
        for _epoch in run.epochs(10**6):
            for xb, yb in run.batches(loader):
                loss = functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                model.eval()
                with torch.no_grad():
                    val_loss = functional.cross_entropy(model(x_val), y_val).item()
                model.train()
                run.step(loss=loss.item(), val_loss=val_loss)
                if run.global_step == WARM and run.node == 1:
                    run.checkpoint("warm")  # a fixed start for explorations: n1@10
                time.sleep(delay)


if __name__ == "__main__":
    main()

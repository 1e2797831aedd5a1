"""A tiny real training for the stop, signal and resume tests.

``python stop_trainer.py STORE NAME MODE``; MODE is ``plain`` (own loop, no ``with``),
``with`` (own loop inside ``with retune.init(...)``), ``iterators`` (``run.epochs`` /
``run.batches`` without ``with``; the script itself sends ``stop`` at step 30), ``thread``
(trained in a thread that raises), ``blocked`` (60 steps, then a sleep with no boundary) or
``resume`` (``resume="latest"``, prints where it starts).
The loops print ``ready`` after 50 steps; ``final STEP WEIGHTS`` is printed on the way out.
"""

from __future__ import annotations

import sys
import threading
import time

import torch

import retune
from retune.control._commands import submit

store, name, mode = sys.argv[1:4]
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(64, 4), torch.randn(64, 1)


def weights() -> str:
    return ",".join(
        f"{v:.9g}" for v in torch.cat([p.detach().flatten() for p in model.parameters()])
    )


def train_step(xb: torch.Tensor = x, yb: torch.Tensor = y) -> float:
    loss = torch.nn.functional.mse_loss(model(xb), yb)
    opt.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return float(loss.item())


def loop(run: retune.Run) -> None:
    try:
        for i in range(10_000_000):
            run.step(loss=train_step())
            if i == 50:
                print("ready", flush=True)
            time.sleep(0.001)
    finally:
        print("final", run.global_step, weights(), flush=True)


if mode == "resume":
    run = retune.init(name, model=model, optimizer=opt, store=store, resume="latest")
    print("start", run.global_step, opt.param_groups[0]["lr"], weights(), flush=True)
    run.finish()
elif mode == "blocked":  # steps, then blocks where no step boundary comes
    run = retune.init(name, model=model, optimizer=opt, store=store)
    for _ in range(60):
        run.step(loss=train_step())
    print("ready", flush=True)
    time.sleep(600)
elif mode == "plain":
    loop(retune.init(name, model=model, optimizer=opt, store=store, flush_interval=3600))
elif mode == "with":
    with retune.init(name, model=model, optimizer=opt, store=store, flush_interval=3600) as run:
        loop(run)
elif mode == "iterators":
    from torch.utils.data import DataLoader, TensorDataset

    run = retune.init(name, model=model, optimizer=opt, store=store, seed=1, poll_interval=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    for _epoch in run.epochs(10_000):
        for xb, yb in run.batches(loader):
            run.step(loss=train_step(xb, yb))
            if run.global_step == 30:
                submit(run.store, run.id, "stop", {}, source="python")
            time.sleep(0.002)
    print("after the loops", run.global_step, run.epoch, run.loop.batch, flush=True)
elif mode == "thread":
    run = retune.init(name, store=store)

    def work() -> None:
        for i in range(20):
            run.step(loss=float(i))
        raise RuntimeError("worker exploded")

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    print("main thread done", flush=True)
else:
    raise SystemExit(f"unknown mode {mode}")

"""DistributedDataParallel + Retune on scikit-learn's bundled digits: one run for the whole job.

    torchrun --nproc-per-node 2 examples/ddp_digits.py     # 2 ranks, gloo on CPU
    python examples/ddp_digits.py --spawn 2                # the same with torch.multiprocessing
    retune set ddp-digits lr=0.01                          # from another shell: every rank at once
    retune stop ddp-digits                                 # every rank stops at the same step
    retune resume ddp-digits -- torchrun --nproc-per-node 2 examples/ddp_digits.py

Every rank calls ``retune.init`` with the same arguments; rank 0 owns the run (store, commands,
checkpoints), the others follow it at the step boundaries where the ranks agree. ``run.batches`` reproduces the
``DistributedSampler``'s shard of each epoch, so a resume continues at the same batch on every
rank. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import retune


def train(epochs: int) -> None:
    # a bounded timeout: a rank that dies makes the others fail within it, never hang
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)
    digits = load_digits()
    data = TensorDataset(
        torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    )
    loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data, seed=0))
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    model = DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with retune.init(
        "ddp-digits", model=net, optimizer=opt, checkpoint_every_n_epochs=1, seed=0
    ) as run:
        for epoch in run.epochs(epochs):
            for x, y in run.batches(loader):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                run.step(loss=loss.item())
            if rank == 0:
                print(f"epoch {epoch}: loss {loss.item():.4f}", flush=True)
    dist.destroy_process_group()


def _spawned(rank: int, world: int, port: int, epochs: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    train(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--spawn", type=int, default=0, help="start N ranks here (no torchrun)")
    args = parser.parse_args()
    if not args.spawn:
        train(args.epochs)  # under torchrun: RANK, WORLD_SIZE, MASTER_ADDR/PORT are set
        return
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    spawn = mp.spawn  # type: ignore[attr-defined]
    spawn(_spawned, args=(args.spawn, port, args.epochs), nprocs=args.spawn)  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()

"""A tiny 2-rank DDP training (gloo, CPU) for the distributed tests.

Started once per rank with torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``): ``python ddp_trainer.py STORE LOGDIR [--epochs N] [--resume latest]
[--term-at STEP] [--checkpoint-at STEP] [--set-at STEP] [--every N] [--pace S] [--per-rank]
[--guard] [--nan-at STEP] [--rank1-fails] [--await-status RANK STATUS]``. Each rank writes ``LOGDIR/rank{r}.jsonl``: one line per step with
the lr it trained with, the loss (``float.hex``), the batch indices and a hash of the
parameters after the step; and a last line ``{"end": ...}`` saying how it ended.

Each rank seeds torch differently before ``retune.init`` (no ``seed=``), so dropout draws
differ by rank: a resume is bit-for-bit only if every rank's RNG comes back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import retune

parser = argparse.ArgumentParser()
parser.add_argument("store")
parser.add_argument("logdir", type=Path)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--resume", default=None)
parser.add_argument("--term-at", type=int, default=0, help="rank 1 gets SIGTERM at this step")
parser.add_argument("--checkpoint-at", type=int, default=0, help="run.checkpoint() on all ranks")
parser.add_argument("--set-at", type=int, default=0, help="run.set(lr=0.02) on all ranks")
parser.add_argument("--every", type=int, default=None, help="checkpoint every N steps")
parser.add_argument("--pace", type=float, default=0.0, help="seconds to sleep per step")
parser.add_argument("--timeout", type=float, default=30.0)
parser.add_argument("--per-rank", action="store_true", help="per_rank_metrics=True")
parser.add_argument("--guard", action="store_true", help="retune.init(..., guard=...)")
parser.add_argument("--nan-at", type=int, default=0, help="rank 1's loss is NaN at this step, once")
parser.add_argument("--rank1-fails", action="store_true", help="rank 1 raises after training")
parser.add_argument("--await-status", nargs=2, default=None, metavar=("RANK", "STATUS"),
                    help="after training, RANK waits until the store shows the run STATUS")  # fmt: skip
args = parser.parse_args()

torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
rank = dist.get_rank()
torch.manual_seed(100 + rank)  # per-rank RNG streams (dropout)

data = TensorDataset(torch.randn(22, 4, generator=torch.Generator().manual_seed(1)),
                     torch.arange(22))  # fmt: skip
sampler: DistributedSampler[Any] = DistributedSampler(data, shuffle=True, seed=5)
loader = DataLoader(data, batch_size=3, sampler=sampler)
module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
model = DistributedDataParallel(module)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
log_path = args.logdir / f"rank{rank}.jsonl"


def params_hash() -> str:
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]


end = "finished"
nan_fired = False
with log_path.open("a") as log:
    try:
        with retune.init(
            "ddp",
            model=module,
            optimizer=opt,
            store=args.store,
            resume=args.resume,
            checkpoint_every_n_steps=args.every,
            poll_interval=0.02,
            flush_interval=0.2,
            per_rank_metrics=args.per_rank,
            guard=retune.Guard(window=2, warmup=1, every=2) if args.guard else False,
        ) as run:
            for _epoch in run.epochs(args.epochs):
                for x, idx in run.batches(loader):
                    lr = opt.param_groups[0]["lr"]
                    loss = model(x).pow(2).mean()
                    if rank == 1 and run.global_step + 1 == args.nan_at and not nan_fired:
                        nan_fired = True  # only this rank sees it; the all-reduce spreads it
                        loss = loss * float("nan")
                    opt.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    step = run.step(loss=loss.item())
                    line = {"step": step, "lr": lr, "loss": loss.item().hex(),
                            "idx": idx.tolist(), "p": params_hash(), "epoch": run.epoch}  # fmt: skip
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    if step == args.checkpoint_at:  # collective: every rank, same point
                        record = run.checkpoint(tag=f"from rank {rank}")
                        log.write(json.dumps({"checkpoint": record.label, "tag": record.tag,
                                              "at": record.step}) + "\n")  # fmt: skip
                    if step == args.set_at:  # collective from the training thread
                        command = run.set(lr=0.02)
                        log.write(json.dumps({"set": command.id, "at": command.applied_step,
                                              "status": command.status}) + "\n")  # fmt: skip
                    if rank == 1 and step == args.term_at:
                        os.kill(os.getpid(), signal.SIGTERM)  # handled: stop at the boundary
                    if args.pace:
                        time.sleep(args.pace)
            if args.await_status and rank == int(args.await_status[0]):
                deadline = time.monotonic() + 60
                while run.store.get_run(run.id).status != args.await_status[1]:
                    assert time.monotonic() < deadline, f"never {args.await_status[1]}"
                    time.sleep(0.05)
            if rank == 1 and args.rank1_fails:
                raise RuntimeError("rank 1 failed after training")  # no collective left
            end = "stopped" if run.should_stop else "finished"
    except retune.DistributedError as e:
        end = f"DistributedError: {e}"
        log.write(json.dumps({"end": end, "p": params_hash()}) + "\n")
        log.flush()
        print(f"rank {rank}: {end}", file=sys.stderr, flush=True)
        os._exit(3)
    log.write(json.dumps({"end": end, "p": params_hash(), "run": run.id}) + "\n")
dist.destroy_process_group()

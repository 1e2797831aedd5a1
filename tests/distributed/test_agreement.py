"""The step-boundary agreement does not hold a step back (issue 11: a hot path that stays
flat): each boundary starts its ``all_reduce`` and acts on the one started at the boundary
before, so a rank returns from ``run.step()`` without waiting for a slower rank, and the ranks
still meet (and apply changes together) one boundary later.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.distributed.test_ddp import DEADLINE, _free_port, torchrun_env

RANK_SCRIPT = r"""
import os, sys, time
from datetime import timedelta
from pathlib import Path
import torch.distributed as dist
import retune

store, flag = sys.argv[1], Path(sys.argv[2])
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
run = retune.init("agreement", store=store, poll_interval=0.05)
run.step(loss=1.0)  # boundary 1: the first agreement (nothing in flight yet)
if rank == 0:
    run.step(loss=2.0)  # boundary 2: acts on boundary 1's agreement, starts its own
    flag.write_text("rank 0 is past step 2")
else:
    deadline = time.monotonic() + 20
    while not flag.exists():  # rank 1 holds back until rank 0 has returned from step 2
        if time.monotonic() > deadline:
            print("rank 0 waited for rank 1 at step 2", file=sys.stderr)
            os._exit(3)
        time.sleep(0.01)
    run.step(loss=2.0)
run.step(loss=3.0)  # both meet again here
run.finish()
dist.destroy_process_group()
print("done", run.global_step)
"""


def test_a_rank_returns_from_a_step_without_waiting_for_a_slower_rank(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'retune.db'}"
    flag = tmp_path / "rank0-past-step-2"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, store, str(flag)],
            env=torchrun_env(rank, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        results = [proc.communicate(timeout=DEADLINE) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for rank, ((out, err), proc) in enumerate(zip(results, procs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} exited {proc.returncode}: {err[-2000:]}"
        assert out.split() == ["done", "3"]
    assert flag.exists()

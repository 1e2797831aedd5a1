"""The guard's costs: per step on the hot path, and from a trigger to training again.

1. **Per-step cost**: ``run.step(loss=...)`` with the guard on (detection only: its checkpoint
   schedule pushed past the end) against the same loop without a guard, in alternating rounds
   (median of ``--repeat``); and :meth:`GuardRuntime.observe` alone (``timeit``), which is what
   the guard adds to ``step()``. Target: below 1 us.
2. **Trigger to training again** on a ``--mb`` MB state (default 200: float32 weights of a
   stack of linear layers, plain SGD so the state is the weights): every weight changes after
   the last-good checkpoint (the worst case for deduplication), then a NaN loss; timed from
   the ``run.step()`` that trips until it returns on the recovered branch, which covers
   verifying and decoding the last-good checkpoint, saving the state being left (for a veto),
   loading, lowering lr, skipping batches and recording the node, audit entry and event.

Prints a table; ``--out`` writes the JSON that ``report.py`` renders into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import add_output_arguments, machine_line, table, write_results

import retune
from retune.session._guard import GuardRuntime

TARGET_US = 1.0


def _loop_seconds(store: str, name: str, steps: int, guard: Any) -> float:
    values = [1.0 + 0.01 * math.sin(i) for i in range(1000)]
    with retune.init(name, store=store, guard=guard, flush_interval=0.2) as run:
        run.step(loss=1.0)  # the first step learns the training thread (a boundary)
        start = time.perf_counter()
        for i in range(steps):
            run.step(loss=values[i % 1000])
        elapsed = time.perf_counter() - start
    return elapsed / steps


def per_step(folder: Path, steps: int, repeat: int) -> dict[str, Any]:
    store = f"sqlite:///{folder / 'steps.db'}"
    detect_only = retune.Guard(every=10**12)  # no checkpoints: the hot path alone
    plain, guarded = [], []
    for r in range(repeat):
        plain.append(_loop_seconds(store, f"plain{r}", steps, False))
        guarded.append(_loop_seconds(store, f"guarded{r}", steps, detect_only))
    with retune.init("observe", store=store, guard=detect_only) as run:
        guard = run.guard
        assert isinstance(guard, GuardRuntime)
        guard.next_due = 10**12
        values = {"loss": 1.0}
        number = 200_000
        observe = [
            t / number
            for t in timeit.repeat(
                lambda: guard.observe(5, values), number=number, repeat=max(3, repeat)
            )
        ]
    plain_us, guarded_us = statistics.median(plain) * 1e6, statistics.median(guarded) * 1e6
    observe_us = min(observe) * 1e6
    return {
        "plain_us_per_step": plain_us,
        "guarded_us_per_step": guarded_us,
        "overhead_us_per_step": guarded_us - plain_us,
        "observe_us": observe_us,
        "plain_runs_us": [t * 1e6 for t in plain],
        "guarded_runs_us": [t * 1e6 for t in guarded],
        "met": observe_us < TARGET_US,
    }


def recovery(folder: Path, megabytes: int, repeat: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    width = 2048
    per_layer = width * width * 4 + width * 4
    layers = max(1, round(megabytes * 1024 * 1024 / per_layer))
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    store = f"sqlite:///{folder / 'recovery.db'}"
    guard = retune.Guard(window=2, warmup=1, every=2, max_attempts=10**6)
    seconds, checkpoint_s = [], []
    with retune.init("recovery", store=store, model=model, optimizer=optimizer, guard=guard) as run:
        for _ in range(repeat):
            for _ in range(4):  # a pending last-good checkpoint confirmed, a new one pending
                before = time.perf_counter()
                run.step(loss=1.0)
                checkpoint_s.append(time.perf_counter() - before)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3)  # every weight changed since the checkpoint: no dedup
            start = time.perf_counter()
            node = run.node
            run.step(loss=float("nan"))
            seconds.append(time.perf_counter() - start)
            assert run.node != node, "the guard did not recover"
            for group in optimizer.param_groups:
                group["lr"] = 0.1
            assert run.guard is not None
            run.guard.attempts = 0
    return {
        "state_mb": nbytes / 1e6,
        "trigger_to_training_s": statistics.median(seconds),
        "trigger_runs_s": seconds,
        "step_with_checkpoint_s": max(checkpoint_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="steps per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; median (default 5)")
    parser.add_argument("--mb", type=int, default=200, help="state size in MB (default 200)")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeat, args.mb = 20_000, 2, 20
    if min(args.steps, args.repeat, args.mb) < 1:
        parser.error("--steps, --repeat and --mb must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        steps = per_step(Path(tmp), args.steps, args.repeat)
        recover = recovery(Path(tmp), args.mb, min(args.repeat, 3))
    print(
        table(
            ["measurement", "value"],
            [
                ["run.step, no guard (us)", f"{steps['plain_us_per_step']:.3f}"],
                ["run.step, guard on (us)", f"{steps['guarded_us_per_step']:.3f}"],
                ["difference (us)", f"{steps['overhead_us_per_step']:.3f}"],
                ["GuardRuntime.observe alone (us)", f"{steps['observe_us']:.3f}"],
                [
                    f"trigger to training, {recover['state_mb']:.0f} MB (s)",
                    f"{recover['trigger_to_training_s']:.2f}",
                ],
            ],
        )
    )
    write_results(
        args.out,
        "guard",
        args.quick,
        {
            "machine": machine_line(["torch"]),
            "settings": {"steps": args.steps, "repeat": args.repeat, "mb": args.mb},
            "target_us": TARGET_US,
            **steps,
            **recover,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

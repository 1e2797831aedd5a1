"""Command latency: a second process sends 200 commands to a training loop with ~5 ms steps.

Run with ``.venv/bin/python benchmarks/command_latency.py`` (also part of ``make bench``).
Reports the submit -> applied latency distribution (from the store's own timestamps) and what
the background poller adds to each step, against the same loop without Retune.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, print_json, table

SENDER = """
import random, sys, time
import retune
store, count = sys.argv[1], int(sys.argv[2])
ctl = retune.connect("latency", store=store)
random.seed(0)
for i in range(count):
    ctl.set(clip_norm=1.0 + (i % 7) / 10)
    time.sleep(random.uniform(0.02, 0.06))
"""


def _make_step(width: int) -> Callable[[], None]:
    """One training step of a tiny MLP of the given width on a fixed batch."""
    import torch

    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(256, width), torch.randint(0, 10, (256,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    return step


def _workload(target_s: float) -> tuple[Callable[[], None], float]:
    """A tiny MLP training step sized to take about ``target_s`` seconds here."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    width = 64
    while True:
        step = _make_step(width)
        for _ in range(5):
            step()
        start = time.perf_counter()
        for _ in range(20):
            step()
        took = (time.perf_counter() - start) / 20
        if took >= target_s or width >= 4096:
            return step, took
        width = int(width * 1.25)


def _loop_time(step: Callable[[], None], steps: int, run: Any = None) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
        if run is not None:
            run.step(loss=1.0)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--steps", type=int, default=600, help="steps per overhead phase")
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--poll-ms", type=float, default=50.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import retune

    step, calibrated = _workload(args.step_ms / 1000)
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "retune.db")
        # overhead: the same loop, alternating phases to even out drift
        bare_runs, retune_runs = [], []
        run = retune.init("latency", store=store, poll_interval=args.poll_ms / 1000)
        run.tunable("clip_norm", 1.0, bounds=(0.0, None))
        for _ in range(3):
            bare_runs.append(_loop_time(step, args.steps))
            retune_runs.append(_loop_time(step, args.steps, run))
        bare_s, retune_s = statistics.median(bare_runs), statistics.median(retune_runs)

        sender = subprocess.Popen([sys.executable, "-c", SENDER, store, str(args.commands)])
        store_handle = run.store
        while True:
            step()
            run.step(loss=1.0)
            if sender.poll() is not None and not store_handle.pending_commands(run.id):
                break
        sender.wait()
        run.finish()
        commands = retune.store.open_store(store).list_commands(run.id)
    applied = [c for c in commands if c.status == "applied" and c.resolved_at is not None]
    latencies = sorted((c.resolved_at - c.created_at) * 1000 for c in applied if c.resolved_at)
    q = statistics.quantiles(latencies, n=100)
    result = {
        "machine": machine_line(["torch", "sqlalchemy"]),
        "step_ms": calibrated * 1000,
        "poll_ms": args.poll_ms,
        "commands": len(commands),
        "applied": len(applied),
        "latency_ms": {
            "min": latencies[0],
            "p50": q[49],
            "p90": q[89],
            "p99": q[98],
            "max": latencies[-1],
        },
        "bare_step_ms": bare_s * 1000,
        "retune_step_ms": retune_s * 1000,
        "overhead_pct": (retune_s / bare_s - 1) * 100,
        "bound_ms": args.poll_ms + calibrated * 1000,
    }
    if args.json:
        print_json(result)
        return 0
    print(result["machine"])
    print(f"training step ~{result['step_ms']:.2f} ms, poll interval {args.poll_ms:.0f} ms, "
          f"{len(applied)}/{len(commands)} commands applied")  # fmt: skip
    lat = result["latency_ms"]
    cells = [f"{lat[k]:.1f}" for k in ("min", "p50", "p90", "p99", "max")]
    print(
        table(["latency (ms)", "min", "p50", "p90", "p99", "max"], [["submit -> applied", *cells]])
    )
    print(f"median latency {lat['p50']:.1f} ms; bound (poll interval + one step) "
          f"{result['bound_ms']:.1f} ms")  # fmt: skip
    print(f"step time: bare {result['bare_step_ms']:.3f} ms, with Retune (writer + poller) "
          f"{result['retune_step_ms']:.3f} ms: {result['overhead_pct']:+.2f}%")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

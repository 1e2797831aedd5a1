"""Command latency: a second process sends 200 commands to a training loop with ~5 ms steps.

Run with ``.venv/bin/python benchmarks/command_latency.py`` (also part of ``make bench``).
Reports the submit -> applied latency distribution (from the store's own timestamps) and what
the background poller adds to each step, against the same loop without Retune. Every 10th
command is out of bounds on purpose: each command's outcome is counted and reported, and the
benchmark fails (exit 1, listing them) if a valid command was not applied or an invalid one
was not rejected; no command is left out of the figures silently.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    add_output_arguments,
    latency_quantiles,
    machine_line,
    median_interval,
    mlp_step,
    print_json,
    table,
    write_results,
)

SENDER = """
import json, random, sys, time
import retune
from retune.errors import RetuneError
store, count, invalid_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sent = []
ctl = retune.connect("latency", store=store)
random.seed(0)
for i in range(count):
    valid = not (invalid_every and i % invalid_every == invalid_every - 1)
    value = 1.0 + (i % 7) / 10 if valid else -1.0  # bounds are (0, None)
    try:
        sent.append({"id": ctl.set(clip_norm=value).id, "valid": valid})
    except RetuneError as e:  # refused at submission
        sent.append({"id": getattr(e, "command_id", None), "valid": valid, "refused": str(e)})
    time.sleep(random.uniform(0.02, 0.06))
print(json.dumps(sent))
"""


def _workload(target_s: float) -> tuple[Callable[[], None], float]:
    """A tiny MLP training step sized to take about ``target_s`` seconds here."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    width = 64
    while True:
        _, _, step = mlp_step(width, 256)
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


RESOLVED = ("applied", "rejected")


def _audit(commands: list[Any], sent: list[dict[str, Any]]) -> dict[str, Any]:
    """Every command the sender sent, by expectation and outcome; what went wrong, if anything.

    A valid command must be ``applied``; an invalid one must be ``rejected`` (at submission or
    by the trainer) and never applied. Nothing is dropped from the counts.
    """
    by_id = {c.id: c for c in commands}
    outcome = {"valid": dict.fromkeys(("applied", "rejected", "other"), 0),
               "invalid": dict.fromkeys(("applied", "rejected", "other"), 0)}  # fmt: skip
    problems: list[str] = []
    for item in sent:
        expectation = "valid" if item["valid"] else "invalid"
        command = by_id.get(item["id"])
        status = command.status if command else ("rejected" if "refused" in item else "missing")
        outcome[expectation][status if status in RESOLVED else "other"] += 1
        wanted = "applied" if item["valid"] else "rejected"
        if status != wanted:
            reason = (command.reason if command else item.get("refused")) or ""
            problems.append(f"{expectation} command {item['id']}: {status} {reason}".strip())
    unknown = set(by_id) - {item["id"] for item in sent}
    problems += [f"command {i} was not sent by the sender" for i in sorted(unknown)]
    return {"outcome": outcome, "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300, help="steps per overhead phase")
    parser.add_argument("--phases", type=int, default=20,
                        help="pairs of phases, without and with Retune")  # fmt: skip
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--poll-ms", type=float, default=50.0)
    parser.add_argument(
        "--invalid-every",
        type=int,
        default=10,
        help="every Nth command is out of bounds and must be rejected (0: none; default 10)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.commands, args.steps, args.phases = 40, 150, 3
    if min(args.commands, args.steps, args.phases) < 1 or args.invalid_every < 0:
        parser.error(
            "--commands, --steps and --phases must be at least 1, --invalid-every at least 0"
        )

    import retune

    step, calibrated = _workload(args.step_ms / 1000)
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "retune.db")
        # overhead: the same loop in pairs of phases, alternating which runs first; each
        # pair's ratio is taken under the same load, and the verdict reads their median's
        # bootstrap interval (a median of three phases swung from -3% to +6.5% between runs)
        bare_runs, retune_runs = [], []
        run = retune.init("latency", store=store, poll_interval=args.poll_ms / 1000)
        run.tunable("clip_norm", 1.0, bounds=(0.0, None))
        for index in range(args.phases):
            if index % 2:
                retune_runs.append(_loop_time(step, args.steps, run))
                bare_runs.append(_loop_time(step, args.steps))
            else:
                bare_runs.append(_loop_time(step, args.steps))
                retune_runs.append(_loop_time(step, args.steps, run))
        bare_s, retune_s = statistics.median(bare_runs), statistics.median(retune_runs)
        paired = [r / b - 1 for r, b in zip(retune_runs, bare_runs, strict=True)]

        sender = subprocess.Popen(
            [sys.executable, "-c", SENDER, store, str(args.commands), str(args.invalid_every)],
            stdout=subprocess.PIPE,
            text=True,
        )
        store_handle = run.store
        deadline = None
        steps = 0
        while True:
            step()
            run.step(loss=1.0)
            steps += 1
            if steps % 10 or sender.poll() is None:
                continue
            deadline = deadline or time.monotonic() + 60  # the sender is done: drain the queue
            statuses = {c.status for c in store_handle.list_commands(run.id)}
            if statuses <= set(RESOLVED) or time.monotonic() > deadline:
                break
        output, _ = sender.communicate()
        run.finish()
        if sender.returncode != 0:
            raise SystemExit(f"command_latency: the sender failed (exit {sender.returncode})")
        sent = json.loads(output)
        commands = retune.store.open_store(store).list_commands(run.id)
    audit = _audit(commands, sent)
    applied = [c for c in commands if c.status == "applied" and c.resolved_at is not None]
    rejected = [c for c in commands if c.status == "rejected" and c.resolved_at is not None]
    latencies = [(c.resolved_at - c.created_at) * 1000 for c in applied if c.resolved_at]
    rejections = [(c.resolved_at - c.created_at) * 1000 for c in rejected if c.resolved_at]
    result = {
        "machine": machine_line(["torch", "sqlalchemy"]),
        "settings": {
            "commands": args.commands,
            "steps": args.steps,
            "phases": args.phases,
            "step_ms": args.step_ms,
            "poll_ms": args.poll_ms,
            "invalid_every": args.invalid_every,
        },
        "step_ms": calibrated * 1000,
        "poll_ms": args.poll_ms,
        "sent": len(sent),
        "stored": len(commands),
        "outcome": audit["outcome"],
        "problems": audit["problems"],
        "latency_ms": latency_quantiles(latencies),
        "rejection_ms": latency_quantiles(rejections),
        "bare_step_ms": bare_s * 1000,
        "retune_step_ms": retune_s * 1000,
        "overhead_pct": statistics.median(paired) * 100,
        "overhead_ci_pct": median_interval(paired),
        "bound_ms": args.poll_ms + calibrated * 1000,
    }
    write_results(args.out, "command_latency", args.quick, result)
    if args.json:
        print_json(result)
    else:
        _print(result)
    if audit["problems"]:
        print(f"command_latency: {len(audit['problems'])} commands did not end as expected:",
              *audit["problems"][:20], sep="\n  ", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _print(result: dict[str, Any]) -> None:
    print(result["machine"])
    valid, invalid = result["outcome"]["valid"], result["outcome"]["invalid"]
    print(f"training step ~{result['step_ms']:.2f} ms, poll interval {result['poll_ms']:.0f} ms; "
          f"{result['sent']} commands sent: valid {valid}, invalid {invalid}")  # fmt: skip
    rows = []
    for label, key in (("submit -> applied", "latency_ms"), ("submit -> rejected", "rejection_ms")):
        lat = result[key]
        if lat:
            rows.append([label, *(f"{lat[k]:.1f}" for k in ("min", "p50", "p90", "p99", "max"))])
    print(table(["latency (ms)", "min", "p50", "p90", "p99", "max"], rows))
    print(f"bound (poll interval + one step) {result['bound_ms']:.1f} ms")
    low, high = result["overhead_ci_pct"]
    print(f"step time: bare {result['bare_step_ms']:.3f} ms, with Retune (writer + poller) "
          f"{result['retune_step_ms']:.3f} ms: {result['overhead_pct']:+.2f}% (median of "
          f"the paired phases; 95% interval {low:+.2f}% to {high:+.2f}%)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

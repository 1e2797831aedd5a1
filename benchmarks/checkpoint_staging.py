"""Phase 1 of Retune's background saves in a training loop: staging buffers kept vs fresh.

Run with ``.venv/bin/python benchmarks/checkpoint_staging.py [--rounds 2]``. A supporting
measurement for docs/benchmarks.md ("Checkpoint stall"), not a comparison with another tool:
``checkpoint_stall.py`` takes one checkpoint per run, so it always measures a run's *first*
save; this one measures the saves after it. In one process, a ~200 MB state (16 x
Linear(1024, 1024) + Adam) trains for ``--steps`` steps of a real forward/backward/step and
takes a scheduled background save every ``--every`` steps; the figure is the time each
``save_async`` call blocked the training thread (phase 1: the copy in memory). Two variants,
alternating, each ``--rounds`` times: ``checkpoint_keep_staging=True`` (the default: the
copy goes into the buffers the previous save wrote from) and ``False`` (fresh memory every
save). The first save of each run is reported apart (no buffers exist yet). After each run,
its last listed checkpoint is decoded and compared bit for bit with the state it was taken
from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import MAKE_BENCH_HINT, bitwise_difference, machine_line, missing_modules, table


def one_run(keep: bool, steps: int, every: int) -> list[float]:
    """Milliseconds each scheduled save blocked training, in order."""
    import torch

    import retune

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(16)])
    optimizer = torch.optim.Adam(model.parameters())
    blocked: list[float] = []
    with tempfile.TemporaryDirectory(prefix="retune-staging-") as folder:
        run = retune.init(
            "staging",
            model=model,
            optimizer=optimizer,
            store=f"sqlite:///{folder}/retune.db",
            checkpoint_keep_staging=keep,
        )
        expected: dict[str, Any] = {}
        for step in range(1, steps + 1):
            loss = model(torch.randn(64, 1024)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.step(loss=loss.item())
            if step % every == 0:
                began = time.perf_counter()
                run.checkpointer.save_async("schedule")
                blocked.append((time.perf_counter() - began) * 1e3)
                if step + every > steps:  # the last save: keep what it must hold
                    expected = {k: v.clone() for k, v in model.state_dict().items()}
        run.checkpointer.wait()
        last = run.store.list_checkpoints(run.id)[-1]
        saved = run.checkpointer.load(last)["model"]
        difference = bitwise_difference(expected, saved, "model")
        run.finish()
    if difference:
        raise SystemExit(f"checkpoint_staging: the last checkpoint differs: {difference}")
    return blocked


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="training steps per run (120)")
    parser.add_argument("--every", type=int, default=10, help="a save every N steps (10)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant (2)")
    args = parser.parse_args()
    if min(args.steps, args.every, args.rounds) < 1 or args.every > args.steps:
        parser.error("steps, every and rounds must be positive, every at most steps")
    missing = missing_modules(["torch"])
    if missing:
        print(f"checkpoint_staging: missing {', '.join(missing)}; {MAKE_BENCH_HINT}")
        return 2
    import torch

    torch.set_num_threads(1)
    later: dict[bool, list[float]] = {True: [], False: []}
    first: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for keep in (True, False):
            blocked = one_run(keep, args.steps, args.every)
            first[keep].append(blocked[0])
            later[keep].extend(blocked[1:])
    print(machine_line(["retune", "torch", "numpy"]))
    print(f"202 MB state; a background save every {args.every} of {args.steps} steps; "
          f"{args.rounds} runs per variant, alternating")  # fmt: skip
    rows = [
        [
            "kept (default)" if keep else "fresh (keep_staging=False)",
            f"{statistics.median(later[keep]):.0f}",
            f"{min(later[keep]):.0f}-{max(later[keep]):.0f}",
            f"{len(later[keep])}",
            f"{statistics.median(first[keep]):.0f}",
        ]
        for keep in (True, False)
    ]
    headers = ["staging", "blocked ms (median)", "range", "saves", "first save ms"]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

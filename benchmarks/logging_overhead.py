"""Per-step cost of logging three scalars: Retune vs TensorBoard's writer vs MLflow.

Run with ``make bench`` or ``.venv/bin/python benchmarks/logging_overhead.py``. Every
contender runs in this one process on the same loop (50,000 steps, loss/acc/lr), including its
final flush/close. MLflow is slow enough (milliseconds per call) that it runs fewer steps; its
figure is still per step. Reported: microseconds per step, the overhead over a bare loop, and
the ratios of overheads (how many times more a competitor adds to each step than Retune).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_of, machine_line, print_json, table, timed


def bare(steps: int, _folder: Path) -> float:
    def loop() -> None:
        total = 0.0
        for i in range(steps):
            loss, acc, lr = 1.0 / (i + 1), i / steps, 0.1
            total += loss + acc + lr

    return timed(loop)


def with_retune(steps: int, folder: Path) -> float:
    import retune

    run = retune.init("bench", store=str(folder / "retune.db"))

    def loop() -> None:
        for i in range(steps):
            run.step(loss=1.0 / (i + 1), acc=i / steps, lr=0.1)
        run.finish()

    return timed(loop)


def with_tensorboard(steps: int, folder: Path) -> float:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder / "tb"))

    def loop() -> None:
        for i in range(steps):
            writer.add_scalar("loss", 1.0 / (i + 1), i)
            writer.add_scalar("acc", i / steps, i)
            writer.add_scalar("lr", 0.1, i)
        writer.close()

    return timed(loop)


def with_mlflow(steps: int, folder: Path) -> float:
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_experiment("bench")
    with mlflow.start_run():

        def loop() -> None:
            for i in range(steps):
                mlflow.log_metrics({"loss": 1.0 / (i + 1), "acc": i / steps, "lr": 0.1}, step=i)

        return timed(loop)


def measure(fn: Callable[[int, Path], float], steps: int, repeat: int) -> float:
    """Median seconds per step over ``repeat`` runs, each in a fresh folder."""

    def once() -> float:
        with tempfile.TemporaryDirectory() as folder:
            return fn(steps, Path(folder)) / steps

    median, _ = best_of(repeat, once)
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--mlflow-steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore")
    try:
        import mlflow  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        print(f"missing a competitor ({e}); run `make bench` to install them", file=sys.stderr)
        return 2

    per_step = {
        "bare loop": measure(bare, args.steps, args.repeat),
        "retune": measure(with_retune, args.steps, args.repeat),
        "tensorboard": measure(with_tensorboard, args.steps, args.repeat),
        "mlflow": measure(with_mlflow, args.mlflow_steps, args.repeat),
    }
    overhead = {k: v - per_step["bare loop"] for k, v in per_step.items()}
    ratios = {
        "tensorboard / retune": overhead["tensorboard"] / overhead["retune"],
        "mlflow / retune": overhead["mlflow"] / overhead["retune"],
    }
    machine = machine_line(["torch", "tensorboard", "mlflow", "sqlalchemy"])
    if args.json:
        print_json(
            {
                "machine": machine,
                "per_step_s": per_step,
                "overhead_s": overhead,
                "ratios": ratios,
                "steps": args.steps,
                "mlflow_steps": args.mlflow_steps,
            }
        )
        return 0
    steps = {"mlflow": args.mlflow_steps}
    print(machine)
    print(f"3 scalars per step; {args.steps:,} steps ({args.mlflow_steps:,} for mlflow); "
          f"median of {args.repeat}; final flush/close included")  # fmt: skip
    rows = [
        [
            name,
            f"{steps.get(name, args.steps):,}",
            f"{v * 1e6:,.2f}",
            f"{overhead[name] * 1e6:,.2f}",
        ]
        for name, v in per_step.items()
    ]
    print(table(["contender", "steps", "us/step", "overhead us/step"], rows))
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-step cost of logging three scalars: Retune vs TensorBoard's writer vs MLflow.

Run with ``make bench`` or ``.venv/bin/python benchmarks/logging_overhead.py``. Every
contender runs in this one process on the same loop logging loss, acc and lr (default 200,000
steps for the bare loop and Retune, 20,000 for TensorBoard, 1,000 for MLflow: the slow ones
run fewer steps; every figure is per step), and its final flush/close is inside the timed
region; set-up (``retune.init``, creating the writer, ``mlflow.start_run``) is not. For Retune
the final flush is ``run.flush()`` (every point written and committed); ``run.finish()``
(marking the run ended, closing the store) is timed on its own and reported apart.
Repetitions go round-robin over the contenders, each in a fresh temporary folder; the median,
the 90th percentile and the range of the rounds are reported. After each timed run the
written data is read back (outside the timing) and every point is compared with what was
logged, step and value (TensorBoard stores float32: compared after the same rounding), so a
contender that drops or alters points cannot look fast. Reported: microseconds per step, the
overhead over a bare loop that computes the same three floats, the ratios of those overheads
(competitor / Retune), and how many full (generation 2) garbage collections ran inside the
timings. Beside the wall time, the CPU time of the whole process (every thread, the
writer's included) per step: on a shared machine the wall time also counts the time the
process waited for a core.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    MAKE_BENCH_HINT,
    Timings,
    add_output_arguments,
    machine_line,
    missing_modules,
    print_json_line,
    table,
    write_results,
)

KEYS = ("loss", "acc", "lr")
TARGETS = {"retune_us_per_step": 1.0, "tensorboard / retune": 20.0, "mlflow / retune": 500.0}


@dataclass(frozen=True)
class Sample:
    """One timed run: seconds in all, seconds of the final flush/close, full GCs inside, and
    the CPU seconds of the whole process (every thread) meanwhile."""

    total: float
    close: float
    full_gcs: int
    cpu: float


class _FullCollections:
    """Counts generation-2 garbage collections while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            self.count += 1


def _clock(loop: Callable[[], None], close: Callable[[], Any]) -> Sample:
    counter = _FullCollections()
    gc.callbacks.append(counter)
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        loop()
        looped = time.perf_counter()
        close()
        end = time.perf_counter()
        cpu = time.process_time() - cpu
    finally:
        gc.callbacks.remove(counter)
    return Sample(end - start, end - looped, counter.count, cpu)


def expected_points(steps: int, first_step: int) -> dict[str, tuple[list[int], list[float]]]:
    """The points every contender's loop logs: ``key -> (steps, values)``."""
    numbers = list(range(first_step, first_step + steps))
    return {
        "loss": (numbers, [1.0 / (i + 1) for i in range(steps)]),
        "acc": (numbers, [i / steps for i in range(steps)]),
        "lr": (numbers, [0.1] * steps),
    }


def _as_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]  # type: ignore[no-any-return]


def _check(
    name: str,
    stored: dict[str, tuple[list[int], list[float]]],
    steps: int,
    first_step: int,
    *,
    float32: bool = False,
) -> int:
    """Every point must be stored with its step and exactly its value (bit for bit; rounded
    to float32 for a contender that stores float32). A benchmark that drops data lies.

    Returns the number of points checked.
    """
    for key, (want_steps, logged) in expected_points(steps, first_step).items():
        got_steps, got_values = stored.get(key, ([], []))
        want_values = [_as_float32(v) for v in logged] if float32 else logged
        if len(got_values) != steps:
            raise SystemExit(f"{name} stored {len(got_values)} {key} points, expected {steps}")
        pairs = sorted(zip(got_steps, got_values, strict=True))
        if [step for step, _ in pairs] != want_steps:
            raise SystemExit(f"{name} stored {key} at the wrong steps")
        wrong = [
            (step, got, want)
            for (step, got), want in zip(pairs, want_values, strict=True)
            if float(got).hex() != float(want).hex()
        ]
        if wrong:
            step, got, want = wrong[0]
            raise SystemExit(
                f"{name} stored {len(wrong)} wrong {key} values, e.g. {got!r} at step {step} "
                f"(logged {want!r})"
            )
    return steps * len(KEYS)


def bare(steps: int, _folder: Path) -> Sample:
    def loop() -> None:
        for i in range(steps):
            _values = (1.0 / (i + 1), i / steps, 0.1)

    return _clock(loop, lambda: None)


FINISH_S: list[float] = []
"""Seconds of each Retune ``run.finish()`` (after the timed final flush)."""


def with_retune(steps: int, folder: Path) -> Sample:
    import retune

    store = f"sqlite:///{folder / 'retune.db'}"
    run = retune.init("bench", store=store)

    def loop() -> None:
        for i in range(steps):
            run.step(loss=1.0 / (i + 1), acc=i / steps, lr=0.1)

    sample = _clock(loop, run.flush)  # the final flush: every point written and committed
    start = time.perf_counter()
    run.finish()
    FINISH_S.append(time.perf_counter() - start)
    snapshot = retune.load(run.id, store=store)
    series = {key: snapshot.metric(key) for key in KEYS}
    stored = {k: (s.steps.tolist(), s.values.tolist()) for k, s in series.items()}
    _check("retune", stored, steps, run.global_step - steps + 1)
    return sample


def _tensorboard_writer(
    logdir: Path,
) -> tuple[Callable[[str, float, int], None], Callable[[], None]]:
    """``(add_scalar, close)``: torch's SummaryWriter, or TensorBoard's own event writer."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        events = EventFileWriter(str(logdir))

        def add_scalar(tag: str, value: float, step: int) -> None:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
            events.add_event(Event(wall_time=time.time(), step=step, summary=summary))

        return add_scalar, events.close
    writer = SummaryWriter(log_dir=str(logdir))
    return writer.add_scalar, writer.close


def _tensorboard_points(logdir: Path) -> dict[str, tuple[list[int], list[float]]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points: dict[str, tuple[list[int], list[float]]] = {key: ([], []) for key in KEYS}
    for path in logdir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else float(
                    value.tensor.float_val[0]
                )  # fmt: skip
                steps, values = points.setdefault(value.tag, ([], []))
                steps.append(event.step)
                values.append(number)
    return points


def with_tensorboard(steps: int, folder: Path) -> Sample:
    logdir = folder / "tb"
    add_scalar, close = _tensorboard_writer(logdir)

    def loop() -> None:
        for i in range(steps):
            add_scalar("loss", 1.0 / (i + 1), i)
            add_scalar("acc", i / steps, i)
            add_scalar("lr", 0.1, i)

    sample = _clock(loop, close)
    _check("tensorboard", _tensorboard_points(logdir), steps, 0, float32=True)
    return sample


def with_mlflow(steps: int, folder: Path) -> Sample:
    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        mlflow.set_experiment("bench")
        active = mlflow.start_run()

        def loop() -> None:
            for i in range(steps):
                mlflow.log_metrics({"loss": 1.0 / (i + 1), "acc": i / steps, "lr": 0.1}, step=i)

        sample = _clock(loop, mlflow.end_run)
        client = mlflow.MlflowClient()
        history = {key: client.get_metric_history(active.info.run_id, key) for key in KEYS}
    stored = {k: ([m.step for m in ms], [m.value for m in ms]) for k, ms in history.items()}
    _check("mlflow", stored, steps, 0)
    return sample


def _quiet_mlflow() -> None:
    """No banners, progress bars or migration logs from MLflow (set before importing it)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.ERROR)


CONTENDERS: dict[str, Callable[[int, Path], Sample]] = {
    "bare loop": bare,
    "retune": with_retune,
    "tensorboard": with_tensorboard,
    "mlflow": with_mlflow,
}


def measure(steps: dict[str, int], repeat: int) -> dict[str, list[Sample]]:
    """``repeat`` rounds; each round runs every contender once, in a fresh temporary folder."""
    samples: dict[str, list[Sample]] = {name: [] for name in CONTENDERS}
    for _ in range(repeat):
        for name, fn in CONTENDERS.items():
            with tempfile.TemporaryDirectory(prefix="retune-bench-") as folder:
                samples[name].append(fn(steps[name], Path(folder)))
    return samples


def _p90(runs: tuple[float, ...]) -> float:
    """The 90th percentile of the rounds (linear interpolation; the value itself for one)."""
    if len(runs) < 2:
        return runs[0]
    return statistics.quantiles(runs, n=10, method="inclusive")[8]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=200_000, help="steps, bare loop and Retune (default 200,000)"
    )
    parser.add_argument(
        "--tensorboard-steps", type=int, default=20_000, help="steps for TensorBoard (20,000)"
    )
    parser.add_argument(
        "--mlflow-steps", type=int, default=1_000, help="steps for MLflow (default 1,000)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="rounds; median (default 5)")
    parser.add_argument(
        "--json", action="store_true", help="one JSON line on stdout (the table goes to stderr)"
    )
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.tensorboard_steps, args.mlflow_steps, args.repeat = 5_000, 1_000, 100, 2
    if min(args.steps, args.tensorboard_steps, args.mlflow_steps, args.repeat) < 1:
        parser.error("--steps, --tensorboard-steps, --mlflow-steps and --repeat must be >= 1")
    _quiet_mlflow()
    missing = missing_modules(["mlflow", "tensorboard"])
    if missing:
        print(f"logging_overhead: missing {', '.join(missing)}; {MAKE_BENCH_HINT}", file=sys.stderr)
        return 2

    steps = {name: args.steps for name in CONTENDERS} | {
        "tensorboard": args.tensorboard_steps,
        "mlflow": args.mlflow_steps,
    }
    samples = measure(steps, args.repeat)
    per_step = {
        name: Timings(tuple(s.total / steps[name] for s in runs)) for name, runs in samples.items()
    }
    close_s = {name: Timings(tuple(s.close for s in runs)).median for name, runs in samples.items()}
    full_gcs = {name: [s.full_gcs for s in runs] for name, runs in samples.items()}
    cost = {name: t.median for name, t in per_step.items()}
    p90 = {name: _p90(t.runs) for name, t in per_step.items()}
    cpu = {
        name: statistics.median(s.cpu / steps[name] for s in runs) for name, runs in samples.items()
    }
    overhead = {name: c - cost["bare loop"] for name, c in cost.items()}
    ratios = {  # on per-step overhead (cost minus the bare loop's)
        f"{name} / retune": overhead[name] / overhead["retune"]
        for name in ("tensorboard", "mlflow")
    }
    cost_ratios = {
        f"{name} / retune": cost[name] / cost["retune"] for name in ("tensorboard", "mlflow")
    }
    met = {
        "retune_us_per_step": cost["retune"] * 1e6 <= TARGETS["retune_us_per_step"],
        **{key: ratios[key] >= target for key, target in TARGETS.items() if "/" in key},
    }
    machine = machine_line(["retune", "torch", "tensorboard", "mlflow", "sqlalchemy", "numpy"])

    out = sys.stderr if args.json else sys.stdout
    rows = [
        [
            name,
            f"{steps[name]:,}",
            f"{cost[name] * 1e6:,.2f}",
            f"{p90[name] * 1e6:,.2f}",
            f"{cpu[name] * 1e6:,.2f}",
            f"{per_step[name].best * 1e6:,.2f}-{per_step[name].worst * 1e6:,.2f}",
            f"{overhead[name] * 1e6:,.2f}",
            f"{close_s[name] * 1e3:,.1f}",
            f"{sum(full_gcs[name])}/{args.repeat}",
        ]
        for name in CONTENDERS
    ]
    print(machine, file=out)
    print(
        f"3 scalars per step, {args.steps:,} steps (TensorBoard: {args.tensorboard_steps:,}, "
        f"MLflow: {args.mlflow_steps:,}; per-step figures); median of {args.repeat} rounds; "
        "final flush/close inside the timing",
        file=out,
    )
    headers = ["contender", "steps", "us/step", "p90", "cpu us/step", "range"]
    headers += ["overhead us/step", "close ms", "full GCs"]
    print(table(headers, rows), file=out)
    for key, ratio in ratios.items():
        print(
            f"{key}: {ratio:,.0f}x on per-step overhead ({cost_ratios[key]:,.0f}x on per-step "
            f"cost); target >= {TARGETS[key]:,.0f}x: {'met' if met[key] else 'NOT met'}",
            file=out,
        )
    print(
        f"retune: {cost['retune'] * 1e6:.2f} us/step incl. final flush; target <= "
        f"{TARGETS['retune_us_per_step']:g}: {'met' if met['retune_us_per_step'] else 'NOT met'}"
        f" (process CPU time: {cpu['retune'] * 1e6:.2f} us/step); then finish() "
        f"{statistics.median(FINISH_S) * 1e3:,.1f} ms",
        file=out,
    )
    result = {
        "machine": machine,
        "steps": steps,
        "repeat": args.repeat,
        "us_per_step": {k: [s * 1e6 for s in t.runs] for k, t in per_step.items()},
        "median_us_per_step": {k: v * 1e6 for k, v in cost.items()},
        "p90_us_per_step": {k: v * 1e6 for k, v in p90.items()},
        "cpu_us_per_step": {k: v * 1e6 for k, v in cpu.items()},
        "retune_finish_ms": [s * 1e3 for s in FINISH_S],
        "overhead_us_per_step": {k: v * 1e6 for k, v in overhead.items()},
        "close_ms": {k: v * 1e3 for k, v in close_s.items()},
        "full_gcs": full_gcs,
        "ratios_on_overhead": ratios,
        "ratios_on_cost": cost_ratios,
        "targets": TARGETS,
        "targets_met": met,
        "points_verified": sum(n for k, n in steps.items() if k != "bare loop")
        * len(KEYS)
        * args.repeat,
    }
    write_results(args.out, "logging_overhead", args.quick, result)
    if args.json:
        print_json_line({"benchmark": "logging_overhead", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())

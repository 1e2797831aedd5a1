"""Exporting a 1,000,000-point run: time and peak memory, streaming vs loading everything.

Run with ``.venv/bin/python benchmarks/export.py`` (part of ``make bench``). Builds a SQLite
store holding one run of 1,000,000 points (a tree of three nodes, two metrics, written in
chunks of 1,000 points as the background writer flushes them), then exports it with
``retune export`` to CSV, Parquet and TensorBoard, and to MLflow (a SQLite tracking store) at a
smaller size (MLflow's own ``log_batch`` is the bottleneck there; the size is stated). Each
export runs in a fresh subprocess that imports everything first, then measures the export's
wall time and its peak memory: the growth of the process's resident set size (sampled every
millisecond from ``/proc/self/statm``) during the export. The same is done at a quarter of the
size: a streaming export's peak must not grow with the run.

The naive approach for comparison loads every point into one pandas DataFrame
(``Store.read_metric`` per key, concatenated) and writes it with ``DataFrame.to_csv`` /
``to_parquet``. After each export the benchmark reads the files back and checks the point
count; a wrong count aborts it.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    MAKE_BENCH_HINT,
    add_output_arguments,
    machine_line,
    missing_modules,
    print_json,
    table,
    write_results,
)

CHUNK = 1_000


def build_store(url: str, points: int) -> str:
    """A run of ``points`` points: n1 trains, n2 and n3 restore from it at 1/2 and 3/4 of its
    steps; two metrics (loss, accuracy) on every step. Returns the run id."""
    from retune.store import MetricChunk, open_store

    per_key = points // 2
    n1, n2 = per_key * 2 // 5, per_key * 3 // 10  # n1: 40% of each key, n2: 30%, n3: the rest
    n3 = per_key - n1 - n2
    spans = {1: (1, n1), 2: (n1 // 2 + 1, n1 // 2 + n2), 3: (n1 * 3 // 4 + 1, n1 * 3 // 4 + n3)}
    with open_store(url) as store:
        run = store.create_run("bench", config={}, meta={}, tunables=[],
                               root_values={"lr": 0.1, "weight_decay": 0.0})  # fmt: skip
        store.create_node(run.id, parent=1, start_step=spans[2][0] - 1, change_kind="restore",
                          values={"lr": 0.01, "weight_decay": 0.0}, diff={"lr": [0.1, 0.01]},
                          created_by="bench")  # fmt: skip
        store.create_node(run.id, parent=1, start_step=spans[3][0] - 1, change_kind="restore",
                          values={"lr": 0.1, "weight_decay": 1e-4},
                          diff={"weight_decay": [0.0, 1e-4]}, created_by="bench")  # fmt: skip
        for node, (first, last) in spans.items():
            for start in range(first, last + 1, CHUNK):
                steps = np.arange(start, min(start + CHUNK, last + 1), dtype=np.int64)
                times = 1.7e9 + steps * 0.01
                store.append_metrics(run.id, [
                    MetricChunk(node, "loss", steps, 1.0 / (steps + node), times),
                    MetricChunk(node, "accuracy", steps, 1.0 - 1.0 / (steps + node), times),
                ])  # fmt: skip
            store.end_node(run.id, node, last)
        store.update_run(run.id, status="finished")
        total = sum(len(store.read_metric(run.id, k)) for k in store.metric_keys(run.id))
    if total != points:
        raise SystemExit(f"built {total} points, wanted {points}")
    return run.id


class PeakRss:
    """Samples this process's resident set size every millisecond on a thread; ``peak_mb`` is
    the highest sample above the size when it started (what the measured code added, C
    allocations such as Arrow's included)."""

    def __init__(self) -> None:
        self._page = resource.getpagesize()
        self.base = self.peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 1e6


def _naive(store: Any, run_id: str, target: str, dest: Path) -> int:
    import pandas as pd

    frames = []
    for key in store.metric_keys(run_id):
        frame = store.read_metric(run_id, key).to_pandas()
        frame.insert(0, "key", key)
        frames.append(frame)
    everything = pd.concat(frames, ignore_index=True)
    dest.mkdir(parents=True, exist_ok=True)
    if target == "csv":
        everything.to_csv(dest / "metrics.csv", index=False)
    else:
        everything.to_parquet(dest / "metrics.parquet", index=False)
    return len(everything)


def child(target: str, url: str, run_id: str, dest: str, *, tracking: str | None) -> None:
    """One export in this (fresh) process; prints {"seconds", "peak_mb", "points"}."""
    import pandas  # noqa: F401 - imported before measuring, like every package below
    import pyarrow.parquet  # noqa: F401
    import tensorboard.compat.proto.event_pb2  # noqa: F401

    from retune.export import export
    from retune.store import open_store

    if target == "mlflow":
        import mlflow  # noqa: F401
    store = open_store(url, create=False)
    store.list_nodes(run_id)
    gc.collect()
    with PeakRss() as memory:
        start = time.perf_counter()
        if target.startswith("naive-"):
            points = _naive(store, run_id, target.removeprefix("naive-"), Path(dest))
        elif target == "mlflow":
            summary = export(store, run_id, "mlflow", tracking_uri=tracking, experiment="bench")
            points = summary.points
        else:
            points = export(store, run_id, target, dest=dest).points
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": memory.peak_mb, "points": points}))


def _run_child(
    target: str, url: str, run_id: str, dest: Path, tracking: str | None = None
) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", target, url, run_id, str(dest)]
    if tracking is not None:
        args.append(tracking)
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{target} export failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _check(target: str, dest: Path, points: int) -> None:
    """Read the export back and count its points (a wrong count aborts the benchmark)."""
    import pandas as pd

    if target in ("csv", "naive-csv"):
        got = len(pd.read_csv(dest / "metrics.csv", usecols=["step"]))
    elif target in ("parquet", "naive-parquet"):
        got = len(pd.read_parquet(dest / "metrics.parquet", columns=["step"]))
    else:
        return
    if got != points:
        raise SystemExit(f"{target}: read back {got} points, expected {points}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6], tracking=sys.argv[6] if len(sys.argv) > 6 else None)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_output_arguments(parser)
    args = parser.parse_args()
    missing = missing_modules(["pandas", "pyarrow", "tensorboard", "mlflow"])
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: {MAKE_BENCH_HINT}")
    points = 100_000 if args.quick else 1_000_000
    mlflow_points = 20_000 if args.quick else 100_000
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sizes = {"full": points, "quarter": points // 4, "mlflow": mlflow_points}
        runs = {}
        for name, size in sizes.items():
            url = f"sqlite:///{folder / f'{name}.db'}"
            runs[name] = (url, build_store(url, size))
        for size_name in ("full", "quarter"):
            url, run_id = runs[size_name]
            for target in ("csv", "parquet", "tensorboard", "naive-csv", "naive-parquet"):
                out_dir = folder / f"{size_name}-{target}"
                result = _run_child(target, url, run_id, out_dir)
                if target != "tensorboard":
                    _check(target, out_dir, sizes[size_name])
                results.setdefault(size_name, {})[target] = result
                line = f"{size_name:8} {target:14} {result['seconds']:7.2f} s"
                print(f"{line} {result['peak_mb']:8.1f} MB {result['points']:,} points", flush=True)
        url, run_id = runs["mlflow"]
        tracking = f"sqlite:///{folder / 'mlflow-tracking.db'}"
        results["mlflow"] = _run_child("mlflow", url, run_id, folder / "mlflow", tracking)
        print(f"mlflow   {mlflow_points:,} points {results['mlflow']['seconds']:.2f} s", flush=True)
    full = results["full"]
    summary = {
        f"{t}_vs_naive_memory": full[f"naive-{t}"]["peak_mb"] / max(full[t]["peak_mb"], 0.1)
        for t in ("csv", "parquet")
    }
    summary.update({
        f"{t}_vs_naive_time": full[f"naive-{t}"]["seconds"] / full[t]["seconds"]
        for t in ("csv", "parquet")
    })  # fmt: skip
    rows = [
        [t, f"{full[t]['seconds']:.2f}", f"{full[t]['peak_mb']:.1f}",
         f"{results['quarter'][t]['peak_mb']:.1f}", f"{full[t]['points']:,}"]
        for t in ("csv", "parquet", "tensorboard", "naive-csv", "naive-parquet")
    ]  # fmt: skip
    print(table(["export", "seconds", "peak MB", f"peak MB at {points // 4:,}", "points"], rows))
    data = {
        "machine": machine_line(["pandas", "pyarrow", "tensorboard", "mlflow"]),
        "points": points,
        "mlflow_points": mlflow_points,
        "results": results,
        "summary": summary,
    }
    print_json(summary)
    write_results(args.out, "export", args.quick, data)


if __name__ == "__main__":
    main()

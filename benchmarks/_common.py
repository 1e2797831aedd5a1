"""Helpers shared by the benchmarks: timing, a machine line, tables, JSON output.

Benchmarks are scripts, not tests: they print what they measured and never assert on time.
Import with ``sys.path.insert(0, str(Path(__file__).parent))`` then ``from _common import ...``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

MAKE_BENCH_HINT = "run `make bench` (it installs the .[bench] extra: tensorboard, mlflow, ...)"


def machine_line(packages: Sequence[str] = ()) -> str:
    """CPU model, core count, python and package versions, on one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (missing)")
    parts = [cpu, f"{os.cpu_count()} cores", f"python {sys.version.split()[0]}", *versions]
    return ", ".join(parts)


def missing_modules(modules: Sequence[str]) -> list[str]:
    """``"name (error)"`` for each module of ``modules`` that cannot be imported."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    return missing


@dataclass(frozen=True)
class Timings:
    """Seconds (or any measure) of each repetition of one measurement."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def worst(self) -> float:
        return max(self.runs)


def repeated(repeat: int, fn: Callable[[], float]) -> Timings:
    """Run ``fn`` (which returns seconds) ``repeat`` times."""
    return Timings(tuple(fn() for _ in range(repeat)))


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """First column left-aligned, the others right-aligned, with a rule under the header."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = zip(cells, widths, strict=True)
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(padded))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_json_line(data: dict[str, Any]) -> None:
    """``data`` as one line of JSON on stdout (easy to append to a log and parse back)."""
    print(json.dumps(data, sort_keys=True, separators=(",", ":")), flush=True)


RESULTS_DIR = Path(__file__).parent / "results"


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quick`` (reduced sizes, for development) and ``--out`` (where the JSON goes)."""
    parser.add_argument(
        "--quick", action="store_true", help="reduced sizes for a fast check (not for the docs)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the results as JSON here (make bench: benchmarks/results/NAME.json)",
    )


def write_results(path: Path | None, name: str, quick: bool, data: dict[str, Any]) -> None:
    """Write ``data`` as the results of benchmark ``name`` (what ``report.py`` renders)."""
    if path is None:
        return
    record = {"benchmark": name, "quick": quick, "recorded_at": time.time(), **data}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def bitwise_difference(saved: Any, restored: Any, path: str = "state") -> str | None:
    """Where ``restored`` differs from ``saved``, or ``None`` when they are bitwise equal.

    Types and structure must match (a tuple is not a list; any dict type equals any other with
    the same keys in the same order and equal values); tensors and arrays must have the
    same dtype, shape and bytes (so NaN equals NaN and -0.0 differs from 0.0); floats compare
    by their bits. Imports torch only when it meets a tensor.
    """
    both_dicts = isinstance(saved, dict) and isinstance(restored, dict)  # OrderedDict == dict
    if type(saved) is not type(restored) and not both_dicts:
        return f"{path}: {type(saved).__name__} != {type(restored).__name__}"
    torch = sys.modules.get("torch")  # a tensor exists only if torch is imported
    if torch is not None and isinstance(saved, torch.Tensor):
        if (saved.dtype, saved.shape) != (restored.dtype, restored.shape):
            was, now = (f"{t.dtype}{list(t.shape)}" for t in (saved, restored))
            return f"{path}: {was} != {now}"
        a, b = (
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (saved, restored)
        )
        return None if torch.equal(a, b) else f"{path}: tensor bytes differ"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(saved, numpy.ndarray):
        if (saved.dtype, saved.shape) != (restored.dtype, restored.shape):
            return f"{path}: array dtype/shape differ"
        return None if saved.tobytes() == restored.tobytes() else f"{path}: array bytes differ"
    if isinstance(saved, dict):
        if list(saved) != list(restored):
            return f"{path}: keys {list(saved)[:5]}... != {list(restored)[:5]}..."
        for key in saved:
            found = bitwise_difference(saved[key], restored[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(saved, list | tuple):
        if len(saved) != len(restored):
            return f"{path}: length {len(saved)} != {len(restored)}"
        for i, (a, b) in enumerate(zip(saved, restored, strict=True)):
            found = bitwise_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(saved, float):
        return None if saved.hex() == restored.hex() else f"{path}: {saved!r} != {restored!r}"
    if isinstance(saved, bytes | bytearray | memoryview):
        return None if bytes(saved) == bytes(restored) else f"{path}: bytes differ"
    return None if saved == restored else f"{path}: {saved!r} != {restored!r}"


def mlp_step(
    width: int, batch: int, wrap: Callable[[Any], Any] | None = None
) -> tuple[Any, Any, Callable[[], None]]:
    """``(module, optimizer, step)``: a tiny MLP (width -> width -> 10, tanh) with SGD and one
    training step on a fixed random batch; ``wrap`` (e.g. ``DistributedDataParallel``)
    wraps the module for the forward and backward passes."""
    import torch

    module = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 10)
    )
    model = wrap(module) if wrap is not None else module
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    return module, opt, step


def median_interval(ratios: list[float], resamples: int = 10_000) -> list[float]:
    """The 95% bootstrap interval of the median of the paired ratios, in percent (a fixed
    seed: the same rounds give the same interval)."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples)
    )
    return [medians[int(resamples * 0.025)] * 100, medians[int(resamples * 0.975) - 1] * 100]


def latency_quantiles(values: list[float]) -> dict[str, float]:
    """min, p50, p90, p99 and max of ``values`` (empty: ``{}``)."""
    if not values:
        return {}
    ordered = sorted(values)
    q = (
        statistics.quantiles(ordered, n=100, method="inclusive")
        if len(ordered) > 1
        else [ordered[0]] * 99
    )
    return {"min": ordered[0], "p50": q[49], "p90": q[89], "p99": q[98], "max": ordered[-1]}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

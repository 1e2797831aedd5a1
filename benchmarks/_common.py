"""Helpers shared by the benchmarks: timing, a machine line, tables, JSON output.

Benchmarks are scripts, not tests: they print what they measured and never assert on time.
Import with ``sys.path.insert(0, str(Path(__file__).parent))`` then ``from _common import ...``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
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

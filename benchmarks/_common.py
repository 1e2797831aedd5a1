"""Helpers shared by the benchmarks: timing, a machine line, tables, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any


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


def best_of(repeat: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """Run ``fn`` (which returns seconds) ``repeat`` times; (median, all runs)."""
    runs = [fn() for _ in range(repeat)]
    return statistics.median(runs), runs


def timed(fn: Callable[[], Any]) -> float:
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

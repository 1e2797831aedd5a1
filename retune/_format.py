"""Human-readable output shared by the CLI, the demo and the notebook: tables, numbers, times,
durations and the tuning tree as text. Pure functions of their arguments; nothing here reads a
store or imports torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retune.session._tree import TreeNode

__all__ = ["describe_node", "diff_text", "draw_tree", "duration", "number", "table", "timestamp"]


def number(value: Any) -> str:
    """Compact numbers: 4 significant digits, NaN/inf spelled out, other values as str."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(number(v) for v in value) + ")"
    return str(value)


def duration(seconds: float | None) -> str:
    """``42s``, ``3m 05s``, ``2h 01m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def size(nbytes: int) -> str:
    """``nbytes`` for people: ``812 B``, ``3.4 kB``, ``202 MB``, ``1.2 GB`` (powers of 1000)."""
    value, unit = float(nbytes), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if abs(value) < 999.5:
            break
        value, unit = value / 1000, bigger
    return f"{value:.0f} {unit}" if unit == "B" or value >= 99.5 else f"{value:.1f} {unit}"


def timestamp(epoch: float | None) -> str:
    """Local time, ``YYYY-MM-DD HH:MM:SS``; ``-`` when unknown."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def diff_text(diff: Mapping[str, Any], sep: str = ", ") -> str:
    """``lr 0.01 -> 0.001, momentum 0.9 -> 0.8`` from a ``{name: (old, new)}`` diff."""
    return sep.join(f"{k} {number(a)} -> {number(b)}" for k, (a, b) in diff.items())


def _metric_line(node: TreeNode, keys: int = 3) -> str:
    preferred = sorted(node.metrics, key=lambda k: (not k.startswith("val"), "loss" not in k, k))
    return " ".join(f"{key}={number(node.metrics[key]['last'])}" for key in preferred[:keys])


def describe_node(node: TreeNode) -> str:
    """One line: label, steps, the change with its diff, a few last metrics, checkpoints."""
    end = "…" if node.end_step is None else str(node.end_step)
    diff = diff_text(node.diff)
    change = node.change_kind if not diff else f"{node.change_kind} {diff}"
    shown: Sequence[str] = node.checkpoints
    if len(shown) > 4:
        shown = (shown[0], "…", shown[-1], f"{len(node.checkpoints)} in all")
    checkpoints = f" [{', '.join(shown)}]" if shown else ""
    return (
        f"{node.label} steps {node.start_step}..{end}  {change}  {_metric_line(node)}{checkpoints}"
    )


def draw_tree(nodes: Sequence[TreeNode], current: int | None = None) -> list[str]:
    """One line per node, children indented under their parent like ``git log --graph``;
    ``current`` (the node training now) is marked ``*``, the others ``o``."""
    by_id = {n.id: n for n in nodes}
    lines: list[str] = []

    def walk(node: TreeNode, prefix: str, last: bool, root: bool) -> None:
        marker = "* " if node.id == current else "o "
        branch = "" if root else ("└─ " if last else "├─ ")
        lines.append(f"{prefix}{branch}{marker}{describe_node(node)}".rstrip())
        below = prefix if root else prefix + ("   " if last else "│  ")
        for i, child in enumerate(node.children):
            walk(by_id[child], below, i == len(node.children) - 1, False)

    for node in nodes:
        if node.parent is None:
            walk(node, "", True, True)
    return lines

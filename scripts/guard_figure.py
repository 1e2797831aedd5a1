"""Draw docs/guard-recovery.svg: the digits CNN with lr raised 100x at step 30, guard on/off.

usage: python scripts/guard_figure.py [OUT.svg]

Trains both runs with ``tests/session/guard_trainer.py`` (a subprocess, a temporary store),
then draws the loss (log scale) of the run without the guard, the branch the guard left
(dashed, up to the trigger) and the guard's branch from the restored checkpoint on. Plain SVG,
no plotting library.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import retune  # noqa: E402

W, H, PAD, TOP = 720, 380, 56, 84
CAP = 1e3  # higher losses are drawn at the top edge (the unguarded run reaches ~1e10)


def _train(store: str) -> dict[str, str]:
    trainer = ROOT / "tests" / "session" / "guard_trainer.py"
    out = subprocess.run(
        [sys.executable, str(trainer), store, "guarded:on:lr@30", "unguarded:off:lr@30"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["name"]: row["run"] for row in rows}


def _points(series: retune.MetricSeries, start: int, end: int) -> list[tuple[int, float]]:
    return [
        (int(s), float(v))
        for s, v in zip(series.steps.tolist(), series.values.tolist(), strict=True)
        if start <= s <= end
    ]


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else ROOT / "docs" / "guard-recovery.svg"
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/retune.db"
        runs = _train(store)
        guarded = retune.load(runs["guarded"], store=store)
        unguarded = retune.load(runs["unguarded"], store=store)
        node = next(n for n in guarded.nodes if n.change_kind == "guard")
        info = node.info["guard"]
        left = guarded.branch(info["left_node"]).metric("loss")
        kept = guarded.branch(node.id).metric("loss")
        off = unguarded.metric("loss")
        lines = {
            "without the guard": (_points(off, 0, 10**9), "#c0392b", ""),
            "branch the guard left": (
                _points(left, node.start_step, info["trigger_step"]),
                "#7f8c8d",
                "5,4",
            ),
            "with the guard": (_points(kept, 0, 10**9), "#2471a3", ""),
        }
    values = [v for pts, _, _ in lines.values() for _, v in pts if math.isfinite(v) and v > 0]
    steps = [s for pts, _, _ in lines.values() for s, _ in pts]
    low, high = math.log10(min(values)), math.log10(min(max(values), CAP))
    last = max(steps)

    def x(step: float) -> float:
        return PAD + (W - 2 * PAD) * step / last

    def y(value: float) -> float:
        return H - PAD - (H - PAD - TOP) * (math.log10(min(value, CAP)) - low) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>',
        f'<line x1="{PAD}" y1="{TOP}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
        f'<text x="{W / 2}" y="{H - 16}" text-anchor="middle">global step</text>',
        f'<text x="16" y="{H / 2}" transform="rotate(-90 16 {H / 2})" '
        'text-anchor="middle">loss (log scale)</text>',
    ]
    for exponent in range(math.ceil(low), math.floor(high) + 1):
        ty = y(10.0**exponent)
        parts.append(f'<text x="{PAD - 6}" y="{ty + 4:.1f}" text-anchor="end">1e{exponent}</text>')
        parts.append(f'<line x1="{PAD}" y1="{ty:.1f}" x2="{W - PAD}" y2="{ty:.1f}" stroke="#eee"/>')
    for tick in range(0, last + 1, 10):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{H - PAD + 16}" text-anchor="middle">{tick}</text>'
        )
    for index, (label, (pts, colour, dash)) in enumerate(lines.items()):
        finite = [(s, v) for s, v in pts if math.isfinite(v) and v > 0]
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in finite)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{style}/>'
        )
        lx, ly = PAD + 200 * index, 52
        parts.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"{style}/>'
        )
        parts.append(f'<text x="{lx + 30}" y="{ly + 4}">{escape(label)}</text>')
    trigger = info["trigger_step"]
    parts.append(
        f'<line x1="{x(trigger):.1f}" y1="{TOP}" x2="{x(trigger):.1f}" y2="{H - PAD}" '
        'stroke="#c0392b" stroke-dasharray="2,3"/>'
    )
    parts.append(
        f'<line x1="{x(node.start_step):.1f}" y1="{TOP}" x2="{x(node.start_step):.1f}" '
        f'y2="{H - PAD}" stroke="#2471a3" stroke-dasharray="2,3"/>'
    )
    caption = (
        f"guard: {info['reason']}; restored {info['restored']} (step {node.start_step}), "
        f"lr x{info['lr_factor']:g}, skipped {info['skipped']['count']} batches"
    )
    parts.append(f'<text x="{PAD}" y="24">{escape(caption)}</text>')
    parts.append(
        f'<text x="{W - PAD}" y="{TOP - 6}" text-anchor="end" fill="#777">'
        f"losses above {CAP:g} drawn at the top edge</text>"
    )
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

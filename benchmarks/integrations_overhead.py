"""Per-step overhead of each framework callback: the same fit with and without it, one run.

Each framework is measured in its own subprocess (Keras needs its backend chosen before any
import; none of them should share caches with another): ``_overhead_<framework>.measure``
times several rounds of an identical fit with and without Retune's callback, interleaved, and
reports the median step time of each and their ratio. Target: under 2% on a ~5 ms step.

    python benchmarks/integrations_overhead.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_output_arguments, machine_line, table, write_results

FRAMEWORKS = ("lightning", "transformers", "keras")
TARGET_PCT = 2.0


def _measure(framework: str, rounds: int) -> dict[str, float]:
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        f"from _overhead_{framework} import measure\n"
        f"print('RESULT ' + json.dumps(measure({rounds})))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "torch", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{framework}: the measurement failed:\n{done.stderr[-3000:]}")
    raw: dict[str, float] = json.loads(lines[-1].removeprefix("RESULT "))
    if "step_s_without" in raw:  # seconds per step
        without, with_ = raw["step_s_without"] * 1e3, raw["step_s_with"] * 1e3
    else:
        without, with_ = raw["baseline_step_ms"], raw["retune_step_ms"]
    return {"without_ms": without, "with_ms": with_, "overhead_pct": (with_ / without - 1) * 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_output_arguments(parser)
    args = parser.parse_args()
    rounds = 2 if args.quick else 9
    results: dict[str, Any] = {f: _measure(f, rounds) for f in FRAMEWORKS}
    rows = [
        [f, f"{r['without_ms']:.2f}", f"{r['with_ms']:.2f}", f"{r['overhead_pct']:+.1f}%"]
        for f, r in results.items()
    ]
    print(machine_line(("torch", "lightning", "transformers", "keras")))
    print(table(["framework", "step ms without", "step ms with", "overhead"], rows))
    write_results(
        args.out,
        "integrations_overhead",
        args.quick,
        {
            "machine": machine_line(("torch", "lightning", "transformers", "keras")),
            "rounds": rounds,
            "frameworks": results,
            "target_pct": TARGET_PCT,
        },
    )


if __name__ == "__main__":
    main()

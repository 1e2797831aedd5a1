"""Regenerate docs/img/explore-tree.svg: an exploration in the tree picture, from a real run.

Trains the digits demo in a subprocess; at step 20 asks ``retune explore`` for three learning
rates, 15 steps each, scored by the mean of the last 5 training losses, and lets the run go on
from the best. The tree is drawn with ``retune tree --svg`` once training ends. A minute or two.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from _demo import CLI, start_demo, wait_for_step

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "explore-tree.svg"
NAME = "digits-cnn"


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "retune.db")
        trainer = start_demo(store, epochs=5, step_delay=0.05)
        wait_for_step(store, NAME, 20, timeout=300)
        subprocess.run([*CLI, "explore", NAME, "lr=3e-2,1e-2,3e-3", "--steps", "15",
                        "--metric", "loss", "--score", "mean:5", "--store", store],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        trainer.wait(timeout=600)  # exit 1 only says 5 epochs stay under 95% accuracy
        subprocess.run([*CLI, "tree", NAME, "--svg", str(OUT), "--color-by", "loss",
                        "--width", "960", "--store", store], check=True)  # fmt: skip
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

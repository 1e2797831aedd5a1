"""Regenerate docs/img/tree-example.svg: the tree picture of a real run of the digits demo.

Trains the demo in a subprocess and steers it from the CLI as a person would: lower lr, lower
it again, go back to the root's checkpoint with another weight decay, halve lr on that branch,
then go back to the second node with yet another weight decay (4 epochs: the picture, not the
model, is the point). When training ends the tree is drawn with ``retune tree --svg``
(coloured by val_acc). Takes a minute or two on a laptop.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from _demo import CLI, start_demo, wait_for_step

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "tree-example.svg"
NAME = "digits-cnn"


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "retune.db")
        trainer = start_demo(store, epochs=4, step_delay=0.1)
        # 4 epochs of 23 steps; a restore moves the step back to its checkpoint's
        script = [
            (15, ["set", NAME, "lr=3e-3"]),
            (30, ["set", NAME, "lr=1e-3"]),
            (45, ["restore", NAME, "n1", "weight_decay=1e-2"]),  # back to step 15
            (60, ["scale", NAME, "lr=0.5"]),
            (75, ["restore", NAME, "n2", "weight_decay=1e-3"]),  # back to step 30
        ]
        for step, command in script:
            wait_for_step(store, NAME, step, timeout=300)
            subprocess.run([*CLI, *command, "--store", store], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        trainer.wait(timeout=600)  # exit 1 only says 4 epochs stay under 95% accuracy
        subprocess.run([*CLI, "tree", NAME, "--svg", str(OUT), "--color-by", "val_acc",
                        "--width", "960", "--store", store], check=True)  # fmt: skip
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-step overhead of the Keras RetuneCallback: the same fit with and without it.

``measure(rounds)`` runs ``rounds`` pairs of fits in this process (alternating, so drift hits
both sides alike) of a small MLP on the torch backend, times every optimizer step
(``on_train_batch_end`` to ``on_train_batch_end``, the Retune callback included), and returns
the median step time of each side and their ratio. The coordinator's
``benchmarks/integrations_overhead.py`` calls it; ``python benchmarks/_overhead_keras.py``
prints it. Never asserts on time.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

STEPS_PER_FIT = 120


def _fit(with_retune: bool, store_dir: str, index: int) -> list[float]:
    """Step times (seconds) of one fit, the first few steps (warm-up) left out."""
    import keras  # type: ignore[import-untyped]
    import numpy as np

    from retune.integrations.keras import RetuneCallback

    class Timer(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter())

    keras.utils.set_random_seed(max(index, 0))
    rng = np.random.default_rng(max(index, 0))
    x = rng.normal(size=(STEPS_PER_FIT * 128, 256)).astype("float32")
    y = rng.integers(0, 10, size=len(x))
    model = keras.Sequential(
        [keras.Input((256,)), keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = Timer()
    callbacks: list[Any] = [timer]
    if with_retune:
        store = f"sqlite:///{Path(store_dir) / 'bench.db'}"
        callbacks.insert(0, RetuneCallback(f"bench-{index}", model=model, store=store))
    model.fit(x, y, batch_size=128, epochs=1, callbacks=callbacks, verbose=0)
    times = timer.times[10:]
    return [b - a for a, b in itertools.pairwise(times)]


def measure(rounds: int = 5) -> dict[str, float]:
    """Median per-step time without and with the callback (ms), and their ratio."""
    import torch

    torch.set_num_threads(1)
    base: list[float] = []
    with_cb: list[float] = []
    with tempfile.TemporaryDirectory() as store_dir:
        _fit(False, store_dir, -1)  # warm-up: imports, allocator
        _fit(True, store_dir, -2)  # the callback's first-use costs too
        for index in range(rounds):
            base.append(statistics.median(_fit(False, store_dir, index)))
            with_cb.append(statistics.median(_fit(True, store_dir, index)))
    baseline, retune = statistics.median(base), statistics.median(with_cb)
    return {
        "baseline_step_ms": baseline * 1e3,
        "retune_step_ms": retune * 1e3,
        "ratio": retune / baseline,
        "overhead_pct": (retune / baseline - 1) * 100,
        "rounds": float(rounds),
        "steps_per_fit": float(STEPS_PER_FIT),
    }


if __name__ == "__main__":
    result = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    for key, value in result.items():
        print(f"{key:>18}  {value:.4f}")

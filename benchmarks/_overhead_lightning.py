"""Per-step overhead of Lightning's RetuneCallback: the same fit with and without it.

``measure(rounds)`` runs ``rounds`` pairs of fits in this process (alternating, so drift hits
both sides alike) of a small MLP whose optimizer step takes a few milliseconds on a CPU core,
times every optimizer step (``on_train_batch_end`` to ``on_train_batch_end``), and returns the
median step time of each side and their ratio. The coordinator's
``benchmarks/integrations_overhead.py`` calls it; ``python benchmarks/_overhead_lightning.py``
prints it. Never asserts on time.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS_PER_FIT = 120


def _fit(with_retune: bool, store_dir: str, index: int) -> list[float]:
    """Step times (seconds) of one fit, the first few steps (warm-up) left out."""
    import lightning as L  # noqa: N812 (the name Lightning documents)
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from retune.integrations.lightning import RetuneCallback

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter())

    class Mlp(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10)
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    torch.manual_seed(index)
    x = torch.randn(STEPS_PER_FIT * 128, 256)
    y = torch.randint(0, 10, (len(x),))
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    timer = Timer()
    callbacks: list[Any] = [timer]
    if with_retune:
        store = f"sqlite:///{Path(store_dir) / 'bench.db'}"
        callbacks.insert(0, RetuneCallback(f"bench-{index}", store=store))
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Mlp(), loader)
    times = timer.times[10:]
    return [b - a for a, b in itertools.pairwise(times)]


def measure(rounds: int = 5) -> dict[str, float]:
    """Median per-step time without and with the callback (ms), and their ratio."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
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

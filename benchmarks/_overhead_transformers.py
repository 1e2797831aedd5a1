"""Per-step overhead of ``RetuneCallback`` on the Hugging Face Trainer.

``measure(rounds)`` trains the same tiny BERT (a few ms per optimizer step on CPU) with and
without the callback, ``rounds`` times each, alternating, in this one process, and returns the
median seconds per step of each and their ratio. Only the training loop is timed: a timer
callback starts after ``RetuneCallback.on_train_begin`` (so ``retune.init`` is outside) and
stops before its ``on_train_end`` (so the final flush is outside). The callback's work inside
the loop (the forward hook, ``run.step`` with loss and lr, the command check) is inside.
Called by ``benchmarks/integrations_overhead.py``; run alone with
``.venv/bin/python benchmarks/_overhead_transformers.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

STEPS = 80


def _fit(with_retune: bool, folder: Path, index: int) -> float:
    """Seconds per optimizer step of one fit."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from retune.integrations.transformers import RetuneCallback

    marks: dict[str, float] = {}

    class Start(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            marks["start"] = time.perf_counter()

    class End(TrainerCallback):
        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            marks["end"] = time.perf_counter()

    set_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (STEPS * 16, 32), generator=g)
    labels = (ids.sum(dim=1) % 2).long()
    data = [{"input_ids": ids[i], "labels": labels[i]} for i in range(len(ids))]
    args = TrainingArguments(
        output_dir=str(folder / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=16,
        logging_steps=1000,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    callbacks: list[Any] = [End()]
    if with_retune:
        store = f"sqlite:///{folder}/retune-{index}.db"
        callbacks.append(RetuneCallback(f"bench-{index}", store=store))
    callbacks.append(Start())
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train()
    assert trainer.state.global_step == STEPS
    return (marks["end"] - marks["start"]) / STEPS


def measure(rounds: int = 5) -> dict[str, float]:
    """Median seconds per step without and with the callback, and their ratio."""
    import torch

    torch.set_num_threads(1)
    bare: list[float] = []
    recorded: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _fit(False, folder, -1)  # warm-up: imports, first allocations
        _fit(True, folder, -2)  # the callback's first-use costs too
        for index in range(rounds):
            bare.append(_fit(False, folder, index))
            recorded.append(_fit(True, folder, index))
    without, with_ = statistics.median(bare), statistics.median(recorded)
    return {
        "step_s_without": without,
        "step_s_with": with_,
        "ratio": with_ / without,
    }


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(measure(rounds))

"""A tiny Hugging Face Trainer run with RetuneCallback, for the integration tests.

Usage: ``python hf_train.py STORE NAME [--epochs N] [--hold-at STEP] [--kill-at STEP]
[--every N] [--accumulation N] [--dir DIR] [--guard] [--nan-at STEP]``.

``--nan-at STEP``: a forward hook makes that step's loss NaN, once (not again after a rollback);
``--guard`` turns the guard on.

``--hold-at STEP`` (tests only): at that global step, before Retune applies commands, write
``DIR/held<STEP>`` and wait (bounded) until a command has reached the run, so that the test's command
is applied at exactly that step. ``--kill-at STEP`` ends the process with ``os._exit(9)`` right
after that step's Retune work (a crash, no clean end). Prints ``RESULT {json}`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import retune
from retune.integrations.transformers import RetuneCallback


class Dataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, size: int = 64, length: int = 8) -> None:
        g = torch.Generator().manual_seed(1234)
        self.ids = torch.randint(1, 64, (size, length), generator=g)
        self.labels = (self.ids.sum(dim=1) % 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class Hold(TrainerCallback):  # type: ignore[misc]
    """Tests only: hold at a step until a command reached the run, or end the process."""

    def __init__(self, retune_cb: object, hold_at: set[int], kill_at: int, folder: Path) -> None:
        self.cb, self.hold_at, self.kill_at, self.folder = retune_cb, hold_at, kill_at, folder

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        run = self.cb.run  # type: ignore[attr-defined]
        if state.global_step in self.hold_at:
            (self.folder / f"held{state.global_step}").write_text(str(state.global_step))
            deadline = time.monotonic() + 60
            while not run._inbox and time.monotonic() < deadline:
                time.sleep(0.01)
        if state.global_step == self.kill_at + 1:
            run.flush()  # the points up to kill_at are written (a crash loses unwritten ones)
            # the step kill_at was checkpointed (every=kill_at), in the background: a kill
            # before it is listed leaves nothing to resume from (test_async_checkpoints.py)
            run.checkpointer.wait()
            os._exit(9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("name")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hold-at", default="", help="comma-separated steps")
    parser.add_argument("--kill-at", type=int, default=-10)
    parser.add_argument("--every", type=int, default=None)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--dir", default=".")
    parser.add_argument("--guard", action="store_true")
    parser.add_argument("--nan-at", type=int, default=0)
    opts = parser.parse_args()
    folder = Path(opts.dir)
    torch.set_num_threads(1)
    set_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,  # type: ignore[call-arg]
    )
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=str(folder / "hf_out"),
        num_train_epochs=opts.epochs,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=opts.accumulation,
        learning_rate=1e-3,
        warmup_steps=3,
        logging_steps=5,
        seed=0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    retune_cb = RetuneCallback(
        opts.name,
        store=opts.store,
        checkpoint_every_n_steps=opts.every,
        flush_interval=0.2,
        guard=retune.Guard(window=4, every=3, warmup=2, spike=10) if opts.guard else False,
    )
    callbacks = [
        Hold(retune_cb, {int(x) for x in opts.hold_at.split(",") if x}, opts.kill_at, folder),
        retune_cb,
    ]
    trainer = Trainer(model=model, args=args, train_dataset=Dataset(), callbacks=callbacks)
    fired: list[int] = []

    def nan_loss(module: object, inputs: object, output: Any) -> Any:
        step = trainer.state.global_step + 1
        if module is model and step == opts.nan_at and not fired and model.training:
            fired.append(step)
            output.loss = output.loss * float("nan")
        return output

    if opts.nan_at:  # registered before Retune's hook, so Retune records the NaN loss
        model.register_forward_hook(nan_loss)
    trainer.train()
    opt = trainer.optimizer
    assert opt is not None
    print(
        "RESULT "
        + json.dumps(
            {
                "global_step": trainer.state.global_step,
                "lr": [g["lr"] for g in opt.param_groups],
                "epoch": trainer.state.epoch,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

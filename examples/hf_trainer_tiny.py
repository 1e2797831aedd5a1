"""A tiny GPT-2 trained by the Hugging Face Trainer, recorded and controlled by Retune.

Nothing is downloaded: the model is randomly initialised from a small config and the data is
synthetic (sequences that count upwards, so the loss has something to learn).

    python examples/hf_trainer_tiny.py              # train; watch it with `retune ui`
    retune set hf-tiny lr=3e-4                      # from another shell, while it trains
    retune resume hf-tiny -- python examples/hf_trainer_tiny.py   # continue a stopped run

The only Retune line is ``callbacks=[RetuneCallback("hf-tiny", ...)]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

from retune.integrations.transformers import RetuneCallback


class Counting(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Token sequences start, start+1, ... (mod the vocabulary): learnable in a few steps."""

    def __init__(self, size: int = 512, length: int = 16, vocab: int = 64) -> None:
        starts = torch.randint(0, vocab, (size, 1), generator=torch.Generator().manual_seed(0))
        self.ids = (starts + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--store", default=None, help="store URL (default $RETUNE_STORE or "
                        "./.retune/retune.db)")  # fmt: skip
    store = parser.parse_args().store
    set_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir="hf_tiny_out",
        num_train_epochs=5,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        warmup_steps=10,
        lr_scheduler_type="cosine",
        logging_steps=20,
        seed=0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Counting(),
        callbacks=[RetuneCallback("hf-tiny", checkpoint_every_n_steps=50, store=store)],
    )
    trainer.train()


if __name__ == "__main__":
    main()

"""Lightning + Retune on scikit-learn's bundled digits (8x8 images; nothing is downloaded).

    python examples/lightning_digits.py                 # train, recorded as run "digits"
    retune set digits lr=0.01                           # from another shell, while it trains
    retune stop digits                                  # fit returns cleanly, run "stopped"
    retune resume digits -- python examples/lightning_digits.py   # continue it

Add ``--ui`` to serve the dashboard while it trains. One callback does it all: the module's
hyperparameters, the trainer's settings and the optimizer/scheduler are recorded; what the
module logs with ``self.log`` is recorded per optimizer step; commands apply between steps.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning as L  # noqa: N812 (the name Lightning documents)
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from retune.integrations.lightning import RetuneCallback


class DigitsNet(L.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()  # recorded in the run's config
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 10),
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)
        # `retune set digits lr=...` rescales this schedule from the new value (mode rescale)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def loaders(batch_size: int = 64) -> tuple[DataLoader[Any], DataLoader[Any]]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = order[:1500], order[1500:]
    return (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=256),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--store", default=None, help="store URL (default ./.retune/retune.db)")
    parser.add_argument("--ui", action="store_true", help="serve the dashboard while training")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    retune_callback = RetuneCallback(
        "digits", store=args.store, checkpoint_every_n_epochs=1, ui=args.ui
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[retune_callback],
        deterministic=True,
        logger=False,
        enable_checkpointing=False,  # Retune's checkpoints are enough to restore and resume
    )
    trainer.fit(DigitsNet(), train, val)
    run = retune_callback.run
    print(f"run {run.name} ({run.id}) ended at step {run.global_step}: `retune show {run.id}`")


if __name__ == "__main__":
    main()

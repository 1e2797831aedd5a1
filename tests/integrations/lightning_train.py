"""A tiny Lightning trainer for the integration tests, run as a subprocess.

``python lightning_train.py STORE NAME [--epochs N] [--accumulate K] [--scheduler step|epoch|none]
[--crash-at-step S] [--stop-at-step S] [--set-lr-at-step S LR] [--delay SECONDS] [--every-n-epochs N]
[--guard] [--nan-at-step S]``; prints ``RUN <id>`` once the run
exists and ``LR <step> <lr>`` for every optimizer step (what Lightning's optimizer holds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import retune
from retune.integrations.lightning import RetuneCallback


class Tiny(L.LightningModule):
    def __init__(
        self, lr: float = 0.05, scheduler: str = "none", delay: float = 0.0, nan_at: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["nan_at"])  # the recorded hparams stay as they were
        self.nan_at = nan_at
        self.nan_fired = False  # the injected fault hits one step once (not after a rollback)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.trainer.global_step + 1 == self.nan_at and not self.nan_fired:
            self.nan_fired = True
            loss = loss * float("nan")  # --nan-at-step: this batch's loss is NaN
        self.log("loss", loss, on_step=True, on_epoch=True)
        if self.hparams["delay"]:
            time.sleep(self.hparams["delay"])
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)
        kind = self.hparams["scheduler"]
        if kind == "none":
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": kind}}


class Report(L.Callback):
    """Prints what the tests check: the run id, the optimizer's lr at each step; crashes."""

    def __init__(
        self, retune_cb: RetuneCallback, crash_at: int, stop_at: int, set_lr: list[str]
    ) -> None:
        self.retune_cb = retune_cb
        self.crash_at = crash_at
        self.stop_at = stop_at
        self.set_at, self.set_lr = (int(set_lr[0]), float(set_lr[1])) if set_lr else (0, 0.0)
        self.printed = False
        self.sent: set[int] = set()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """``--stop-at-step S`` / ``--set-lr-at-step S LR``: a real command, sent through the
        store before step S and waited for until the run's poller has queued it, so it applies
        at the boundary of step S."""
        run = self.retune_cb.run
        step = trainer.global_step + 1  # the step this batch belongs to
        if run is None or step in self.sent or step not in (self.stop_at, self.set_at):
            return
        self.sent.add(step)
        import retune

        with retune.connect(run.id, store=run.store) as ctl:
            if step == self.stop_at:
                ctl.stop()
            else:
                ctl.set(lr=self.set_lr)
        deadline = time.monotonic() + 60
        while not run._applier.inbox:  # the poller thread fetches it from the store
            if time.monotonic() > deadline:
                raise RuntimeError("the command never reached the run")
            time.sleep(0.01)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.printed and self.retune_cb.run is not None:
            print("RUN", self.retune_cb.run.id, flush=True)
            self.printed = True
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        print("LR", trainer.global_step, repr(lr), flush=True)
        if self.crash_at and trainer.global_step >= self.crash_at:
            run = self.retune_cb.run
            if run is not None:  # the epoch checkpoint written in the background is listed
                run.checkpointer.wait()  # (the tests resume from it)
            os._exit(3)  # a crash: no cleanup at all


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("name")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--scheduler", default="none")
    parser.add_argument("--crash-at-step", type=int, default=0)
    parser.add_argument("--stop-at-step", type=int, default=0)
    parser.add_argument("--set-lr-at-step", nargs=2, default=[], metavar=("S", "LR"))
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--every-n-epochs", type=int, default=1)
    parser.add_argument("--guard", action="store_true")
    parser.add_argument("--nan-at-step", type=int, default=0)
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    x = torch.randn(64, 4)
    y = x.sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, num_workers=0)
    callback = RetuneCallback(
        args.name,
        store=args.store,
        checkpoint_every_n_epochs=args.every_n_epochs,
        flush_interval=0.05,
        poll_interval=0.02,
        guard=retune.Guard(window=4, every=3, warmup=2, spike=10) if args.guard else False,
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accumulate_grad_batches=args.accumulate,
        callbacks=[
            callback,
            Report(callback, args.crash_at_step, args.stop_at_step, args.set_lr_at_step),
        ],
        deterministic=True,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(scheduler=args.scheduler, delay=args.delay, nan_at=args.nan_at_step), loader)
    print("FIT-RETURNED", trainer.global_step, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""A tiny Keras fit under RetuneCallback, driven by the Keras integration tests.

python keras_train.py STORE NAME [--epochs N] [--schedule] [--sgd] [--kill-after-epoch E]
    [--every-steps N] [--every-epochs N] [--lr-zero] [--no-shuffle]
"""

from __future__ import annotations

import argparse
import os
import signal

os.environ["KERAS_BACKEND"] = "torch"

import keras  # type: ignore[import-untyped]
import numpy as np

from retune.integrations.keras import RetuneCallback


class KillAfterEpoch(keras.callbacks.Callback):  # type: ignore[misc]
    """SIGKILL this process at the end of an epoch, once Retune's epoch checkpoint (written
    in the background) is listed: the tests resume from that epoch's end."""

    def __init__(self, epoch: int, retune_cb: RetuneCallback) -> None:
        super().__init__()
        self.epoch = epoch
        self.retune_cb = retune_cb

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        if epoch == self.epoch:
            self.retune_cb.run.checkpointer.wait()
            os.kill(os.getpid(), signal.SIGKILL)


class PrintHyperparameters(keras.callbacks.Callback):  # type: ignore[misc]
    """Print ``HP step learning_rate beta_1 weight_sum`` as the optimizer and model hold them,
    after every step (and after a restore, which the Retune callback applies first)."""

    def __init__(self, retune_cb: RetuneCallback) -> None:
        super().__init__()
        self.retune_cb = retune_cb

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        opt = self.model.optimizer
        lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
        beta = getattr(opt, "beta_1", getattr(opt, "momentum", 0.0))
        weights = sum(
            float(np.sum(np.asarray(w.numpy(), dtype=np.float64))) for w in self.model.weights
        )
        step = self.retune_cb.run.global_step
        print(f"HP {step} {lr!r} {float(beta)!r} {weights!r}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("name")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--schedule", action="store_true")
    p.add_argument("--sgd", action="store_true")
    p.add_argument("--lr-zero", action="store_true")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--kill-after-epoch", type=int)
    p.add_argument("--every-steps", type=int)
    p.add_argument("--every-epochs", type=int)
    p.add_argument("--no-dropout", action="store_true")
    p.add_argument("--schedule-zero", action="store_true", help="a schedule that starts at 0")
    p.add_argument("--dump", help="write x, y and the untrained predictions to this .npz")
    p.add_argument("--accumulate", type=int, help="gradient_accumulation_steps")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1)) + 0.1 * rng.normal(size=(args.samples, 1))).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            *([] if args.no_dropout else [keras.layers.Dropout(0.2)]),
            keras.layers.Dense(1),
        ]
    )
    if args.dump:
        np.savez(args.dump, x=x, y=y, pred=model.predict(x, verbose=0))
    lr: float | keras.optimizers.schedules.LearningRateSchedule = 0.0 if args.lr_zero else 0.01
    if args.schedule:
        lr = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.9)
    if args.schedule_zero:
        lr = keras.optimizers.schedules.PolynomialDecay(0.0, decay_steps=10, end_learning_rate=0.0)
    extra = {"gradient_accumulation_steps": args.accumulate} if args.accumulate else {}
    optimizer = (
        keras.optimizers.SGD(lr, momentum=0.9, **extra)
        if args.sgd
        else keras.optimizers.Adam(lr, **extra)
    )
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    cb = RetuneCallback(
        args.name,
        model=model,
        store=args.store,
        checkpoint_every_n_steps=args.every_steps,
        checkpoint_every_n_epochs=args.every_epochs,
        keep_last=1000,  # the tests restore early checkpoints of long runs
        flush_interval=0.2,
    )
    callbacks: list[keras.callbacks.Callback] = [cb, PrintHyperparameters(cb)]
    if args.kill_after_epoch is not None:
        callbacks.append(KillAfterEpoch(args.kill_after_epoch, cb))
    print(f"initial_epoch={cb.initial_epoch}", flush=True)
    model.fit(
        x,
        y,
        batch_size=args.batch,
        epochs=args.epochs,
        initial_epoch=cb.initial_epoch,
        shuffle=not args.no_shuffle,
        validation_data=(x[:16], y[:16]),
        callbacks=callbacks,
        verbose=0,
    )


if __name__ == "__main__":
    main()

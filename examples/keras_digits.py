"""Keras 3 (torch backend) + Retune on scikit-learn's bundled digits (nothing is downloaded).

    python examples/keras_digits.py                          # train, recorded as run "digits-keras"
    retune set digits-keras learning_rate=0.003              # from another shell, while it trains
    retune set digits-keras learning_rate=0.001 --mode constant   # hold a value over the schedule
    retune stop digits-keras                                 # fit returns cleanly, run "stopped"
    retune resume digits-keras -- python examples/keras_digits.py   # continue in a new process

One callback does it all: the model summary and ``optimizer.get_config()`` are recorded; the
loss and accuracy of every batch (not Keras' running means) and the epoch/validation metrics
are logged; the optimizer's hyperparameters are tunable; every epoch is checkpointed.
Pass ``--ui`` to serve the dashboard while it trains.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported

import keras  # type: ignore[import-untyped]
from sklearn.datasets import load_digits

from retune.integrations.keras import RetuneCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--store", default=None, help="store URL (default $RETUNE_STORE or "
                        "./.retune/retune.db)")  # fmt: skip
    parser.add_argument("--ui", action="store_true", help="serve the dashboard")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)  # python, numpy, torch and keras seeds: a repeatable run
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    x_train, y_train, x_val, y_val = x[:1500], y[:1500], x[1500:], y[1500:]

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
        ]
    )
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=args.epochs * 47)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    retune_cb = RetuneCallback(
        "digits-keras",
        model=model,
        config={"epochs": args.epochs, "hidden": 128, "dropout": 0.2},
        checkpoint_every_n_epochs=1,
        store=args.store,
        ui=args.ui,
    )
    model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=args.epochs,
        initial_epoch=retune_cb.initial_epoch,  # where a `retune resume` continues
        validation_data=(x_val, y_val),
        callbacks=[retune_cb],
        verbose=2,
    )
    run = retune_cb.run
    print(f"run {run.name} ({run.id}) ended at step {run.global_step}")


if __name__ == "__main__":
    main()

"""The check both epoch-checkpoint tests make: a held epoch save does not stop training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import retune
from retune.checkpoint import ObjectStore, decode_state
from retune.store import objects_url_for


class TrainerProcess(Protocol):
    """What a test's trainer wrapper offers (``test_keras.Trainer``, ``test_lightning.Trainer``)."""

    proc: Any

    def wait_step(self, step: int) -> None: ...

    def finish(self) -> int: ...

    def output(self) -> str: ...


def training_goes_on_beside_a_held_epoch_save(
    trainer: TrainerProcess, flag: Path, store_url: str, name: str, epoch_steps: int,
    *, timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """``trainer`` runs 3 epochs of ``epoch_steps`` steps, a checkpoint at each epoch's end,
    with ``RETUNE_TEST_BLOCK_SAVE=<epoch_steps>:<flag>``. While the first epoch's save is
    held mid-write (blobs written, not listed) training reaches two steps into the next
    epoch and the save is not listed; once released, the fit ends normally with the three
    epoch checkpoints listed. Returns the first one's state, decoded (every blob verified)."""
    try:
        deadline = time.monotonic() + timeout
        while not flag.exists():
            assert trainer.proc.poll() is None, trainer.output()
            assert time.monotonic() < deadline, "the epoch checkpoint never started"
            time.sleep(0.02)
        trainer.wait_step(epoch_steps + 2)
        assert flag.exists()
        run = retune.load(name, store=store_url)
        assert all(c.step != epoch_steps for c in run.checkpoints)  # listed once durable
    finally:
        flag.unlink(missing_ok=True)
    assert trainer.finish() == 0, trainer.output()
    run = retune.load(name, store=store_url)
    assert [(c.reason, c.step) for c in run.checkpoints] == [
        ("schedule", epoch_steps * epoch) for epoch in (1, 2, 3)
    ]
    record = run.checkpoints[0]
    objects = ObjectStore(objects_url_for(store_url), create=False)
    state: dict[str, Any] = decode_state(record.manifest, objects, label=record.label)
    assert state["loop"]["step"] == epoch_steps
    return state

"""Retune owns the loop position: ``for epoch in run.epochs(n)`` / ``for b in run.batches(dl)``.

The position (epoch, batch within the epoch) is part of every checkpoint. Each epoch's data
order is a permutation seeded by ``(data_seed, epoch)``, so a restore or a resume jumps straight
to the restored batch, without replaying data. After an in-process restore, ``batches()``
continues from the restored position on its next iteration (``run.epoch`` tells the epoch).

A ``stop`` ends these loops: ``run.step()`` does not raise ``StopTraining`` while one of them
runs; ``batches()`` and then ``epochs()`` end at their next iteration instead (the code after
them runs, and the script exits 0). Outside them ``run.step()`` raises ``StopTraining``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from retune.checkpoint import iterate_batches, num_batches

__all__ = ["LoopPosition"]


class LoopPosition:
    """Epoch and batch counters, the data seed, and the iterators built on them."""

    def __init__(self, data_seed: int) -> None:
        self.epoch = 0
        self.batch = 0  # batches of ``epoch`` already handed out
        self.data_seed = data_seed
        self.generation = 0  # bumped by every restore: running iterators re-position
        self.on_epoch_end: Callable[[], None] | None = None
        self.should_stop: Callable[[], bool] = lambda: False
        self.active = 0  # epochs()/batches() loops running: a stop ends them, not an exception
        self.epoch_batches: int | None = None  # batches per epoch of the last loader iterated

    @property
    def iterating(self) -> bool:
        """True while an :meth:`epochs` or :meth:`batches` loop is running."""
        return self.active > 0

    def epochs(self, count: int) -> Iterator[int]:
        """Epoch numbers from the current one up to ``count - 1``; ends early after a stop
        (the stopped epoch is not counted as done, so a resume finishes it)."""
        self.active += 1
        try:
            while self.epoch < count and not self.should_stop():
                yield self.epoch
                if self.should_stop():
                    return
                self.epoch += 1
                self.batch = 0
                if self.on_epoch_end is not None:
                    self.on_epoch_end()
        finally:
            self.active -= 1

    def batches(self, loader: Any) -> Iterator[Any]:
        """The batches of the current epoch from the current batch on (see module doc); ends
        early after a stop."""
        self.epoch_batches = num_batches(loader)
        self.active += 1
        try:
            while not self.should_stop():
                generation = self.generation
                for item in iterate_batches(
                    loader, base_seed=self.data_seed, epoch=self.epoch, start_batch=self.batch
                ):
                    self.batch += 1
                    yield item
                    if self.should_stop():
                        return
                    if self.generation != generation:
                        break  # restored: continue from the restored position
                else:
                    return
        finally:
            self.active -= 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "data_seed": self.data_seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self.data_seed = int(state["data_seed"])
        self.generation += 1

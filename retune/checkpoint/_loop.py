"""The data order Retune owns: one seeded permutation per epoch, so any (epoch, batch) can be
reached directly, without replaying data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from retune.errors import InvalidArgument

__all__ = ["epoch_seed", "iterate_batches", "num_batches"]

_MASK = (1 << 63) - 1


def epoch_seed(base_seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for each epoch (splitmix64 of the two)."""
    z = (base_seed * 0x9E3779B97F4A7C15 + epoch + 1) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


def _check(loader: Any) -> None:
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(loader, DataLoader):
        raise InvalidArgument("run.batches() takes a torch DataLoader")
    if isinstance(loader.dataset, IterableDataset):
        raise InvalidArgument(
            "run.batches() needs a map-style dataset (with __getitem__ and __len__): an "
            "IterableDataset cannot jump to a batch without replaying the data before it"
        )
    if loader.batch_size is None:
        raise InvalidArgument("run.batches() needs a DataLoader with a batch_size")


def num_batches(loader: Any) -> int:
    """Batches per epoch, honouring ``drop_last``."""
    _check(loader)
    size, batch = len(loader.dataset), int(loader.batch_size)
    return size // batch if loader.drop_last else -(-size // batch)


def _order(loader: Any, base_seed: int, epoch: int) -> list[int]:
    import torch
    from torch.utils.data import RandomSampler

    size = len(loader.dataset)
    if not isinstance(loader.sampler, RandomSampler):
        return list(range(size))
    generator = torch.Generator().manual_seed(epoch_seed(base_seed, epoch))
    return [int(i) for i in torch.randperm(size, generator=generator).tolist()]


def iterate_batches(
    loader: Any, *, base_seed: int, epoch: int, start_batch: int = 0
) -> Iterator[Any]:
    """The batches of ``epoch`` from ``start_batch`` on, as ``loader`` would build them.

    Shuffling loaders get a permutation seeded by ``epoch_seed(base_seed, epoch)``; others keep
    their order. Batch size, ``drop_last``, ``collate_fn``, workers and pinning are the loader's.
    Skipped batches are never loaded. The new loader gets its own generator, so iterating it
    draws nothing from torch's global RNG (which the checkpoint restores).
    """
    import torch
    from torch.utils.data import DataLoader

    _check(loader)
    order = _order(loader, base_seed, epoch)
    batch = loader.batch_size
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    if loader.drop_last and batches and len(batches[-1]) < batch:
        batches.pop()
    remaining = batches[start_batch:]
    if not remaining:
        return iter(())
    worker_seed = torch.Generator().manual_seed(epoch_seed(base_seed + 1, epoch))
    subset = DataLoader(
        loader.dataset,
        batch_sampler=remaining,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=worker_seed,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=False,
    )
    return iter(subset)

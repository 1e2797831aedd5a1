"""The data order Retune owns: one seeded permutation per epoch, so any (epoch, batch) can be
reached directly, without replaying (or even loading) the batches before it.

torch is imported only when these functions are called.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from retune.errors import InvalidArgument

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = ["epoch_seed", "iterate_batches", "num_batches"]

_U64 = (1 << 64) - 1


def epoch_seed(base_seed: int, epoch: int) -> int:
    """A distinct, reproducible 63-bit seed for each (base_seed, epoch): splitmix64 mixing.

    Pure arithmetic: the same on every machine, Python and torch version.
    """
    z = (base_seed * 0x9E3779B97F4A7C15 + epoch + 1) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _order(loader: DataLoader[Any]) -> str:
    """How the loader orders its items: ``"shuffle"``, ``"sequential"`` or ``"distributed"``
    (a ``DistributedSampler``); refuses loaders whose order Retune cannot reproduce."""
    from torch.utils.data import (
        DataLoader,
        DistributedSampler,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
    )

    if not isinstance(loader, DataLoader):
        raise InvalidArgument(f"run.batches() takes a torch DataLoader, not {type(loader)!r}")
    if isinstance(loader.dataset, IterableDataset):
        raise InvalidArgument(
            "run.batches() needs a map-style dataset (with __getitem__ and __len__): an "
            "IterableDataset has no random access, so a restore could not jump to a batch "
            "without replaying the data before it"
        )
    if loader.batch_size is None:
        raise InvalidArgument(
            "run.batches() needs a DataLoader built with batch_size (Retune draws the batches "
            "itself), not with a custom batch_sampler"
        )
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler.num_samples != len(loader.dataset):  # type: ignore[arg-type]
            raise InvalidArgument(
                "run.batches() reproduces shuffle=True (each item once per epoch); a "
                "RandomSampler with replacement or num_samples is not supported"
            )
        return "shuffle"
    if type(sampler) is SequentialSampler:
        return "sequential"
    if type(sampler) is DistributedSampler:
        if sampler.dataset is not loader.dataset:
            raise InvalidArgument(
                "run.batches() needs the DistributedSampler built on the loader's own dataset"
            )
        return "distributed"
    raise InvalidArgument(
        f"run.batches() supports DataLoaders with shuffle=True or shuffle=False, or a "
        f"DistributedSampler; its {type(sampler).__name__} decides the order itself, so a "
        "restore could not reproduce it"
    )


def _distributed_order(sampler: Any, epoch: int) -> Any:
    """This rank's indices of ``epoch``, as ``DistributedSampler`` gives them after
    ``set_epoch(epoch)``: the permutation of the whole dataset seeded by ``seed + epoch``
    (or ``0..n-1`` without shuffle), padded by repeating it from its start up to a multiple of
    ``num_replicas`` (or cut down to one with ``drop_last``), then every ``num_replicas``-th
    index from ``rank`` on."""
    import torch

    size = len(sampler.dataset)
    if sampler.shuffle:
        generator = torch.Generator().manual_seed(int(sampler.seed) + epoch)
        order = torch.randperm(size, generator=generator)
    else:
        order = torch.arange(size)
    total = int(sampler.total_size)
    if total > size:  # pad: the order repeated from its start, as often as needed
        order = order.repeat(-(-total // size))
    order = order[:total]
    return order[int(sampler.rank) : total : int(sampler.num_replicas)]


def num_batches(loader: DataLoader[Any]) -> int:
    """Batches per epoch of ``loader`` as :func:`iterate_batches` yields them (``drop_last``
    honoured; with a ``DistributedSampler``, of this rank's shard)."""
    size = len(loader.dataset)  # type: ignore[arg-type]
    if _order(loader) == "distributed":
        size = int(loader.sampler.num_samples)  # type: ignore[attr-defined]
    batch = int(loader.batch_size or 1)
    return size // batch if loader.drop_last else -(-size // batch)


class _Batches:
    """Index lists of batches ``start..`` of one epoch's order; sliced lazily, never all kept."""

    def __init__(self, order: Any, batch_size: int, count: int, start: int) -> None:
        self.order = order  # a 1-d int64 tensor, the epoch's full order
        self.batch_size = batch_size
        self.count = count
        self.start = start

    def __len__(self) -> int:
        return max(0, self.count - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        size = self.batch_size
        for index in range(self.start, self.count):
            yield self.order[index * size : (index + 1) * size].tolist()


def iterate_batches(
    loader: DataLoader[Any], *, base_seed: int, epoch: int, start_batch: int = 0
) -> Iterator[Any]:
    """The batches of ``epoch`` from ``start_batch`` on, as ``loader`` would build them.

    A shuffling loader (``shuffle=True``) gets the permutation drawn by
    ``torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(base_seed, epoch)))``;
    a sequential one keeps its order. A ``DistributedSampler`` gives this rank's shard exactly
    as the sampler yields it after ``set_epoch(epoch)`` (its own ``seed``, ``shuffle``,
    ``drop_last``, padding, ``num_replicas`` and ``rank``; its own ``epoch`` attribute is not
    read: Retune's epoch is the one that counts, so ``set_epoch`` need not be called).
    Batch size, ``drop_last``, ``collate_fn``, workers, ``worker_init_fn``, pinning, timeout,
    prefetching and ``in_order`` are the loader's; workers are never persistent. The first
    ``start_batch`` batches are skipped at the index level: their items are never loaded.
    Worker seeds come from the epoch too, and nothing is drawn from torch's global RNG (which
    checkpoints restore).

    Raises :class:`InvalidArgument` for an IterableDataset, a custom sampler or batch_sampler,
    or a negative ``start_batch``.
    """
    import torch
    from torch.utils.data import DataLoader

    kind = _order(loader)
    if start_batch < 0:
        raise InvalidArgument(f"start_batch must be >= 0, got {start_batch}")
    size = len(loader.dataset)  # type: ignore[arg-type]
    if kind == "distributed":
        order = _distributed_order(loader.sampler, epoch)
    elif kind == "shuffle":
        generator = torch.Generator().manual_seed(epoch_seed(base_seed, epoch))
        order = torch.randperm(size, generator=generator)
    else:
        order = torch.arange(size)
    batches = _Batches(order, int(loader.batch_size or 1), num_batches(loader), start_batch)
    if not len(batches):
        return iter(())
    options: dict[str, Any] = {}
    for name in ("pin_memory_device", "in_order"):  # newer torch only
        if hasattr(loader, name):
            options[name] = getattr(loader, name)
    subset = DataLoader(
        loader.dataset,
        batch_sampler=batches,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=torch.Generator().manual_seed(epoch_seed(base_seed + 1, epoch)),
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=False,
        **options,
    )
    return iter(subset)

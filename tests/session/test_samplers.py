"""run.batches() refuses any order it could not reproduce after a restore (issue 8 item 13)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import retune
from retune.errors import InvalidArgument


class EvensFirst(Sampler[int]):
    """A custom order: Retune cannot know it, so it cannot replay it."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[int]:
        return iter([*range(0, self.size, 2), *range(1, self.size, 2)])

    def __len__(self) -> int:
        return self.size


class MySequential(SequentialSampler):
    """A subclass may override the order: refused too."""


class MyDistributed(DistributedSampler[int]):
    """A DistributedSampler subclass may override the order too: refused."""


DATA = TensorDataset(torch.arange(12.0).unsqueeze(1))


@pytest.mark.parametrize(
    ("sampler", "name"),
    [
        (WeightedRandomSampler([1.0] * 12, 12), "WeightedRandomSampler"),
        (EvensFirst(12), "EvensFirst"),
        (MyDistributed(DATA, num_replicas=2, rank=0), "MyDistributed"),
        (MySequential(DATA), "MySequential"),
    ],
)
def test_samplers_it_cannot_reproduce_are_refused_by_run_batches(
    store_url: str, sampler: Sampler[int], name: str
) -> None:
    loader = DataLoader(DATA, batch_size=4, sampler=sampler)
    model = torch.nn.Linear(1, 1)
    with retune.init("samplers", model=model, store=store_url) as run:
        with pytest.raises(InvalidArgument, match=f"its {name} decides the order itself"):
            for _ in run.batches(loader):
                pass
        assert run.global_step == 0
        for _ in run.epochs(1):  # the supported forms still work in the same run
            assert len(list(run.batches(DataLoader(DATA, batch_size=4, shuffle=True)))) == 3


ODD = TensorDataset(torch.arange(11.0).unsqueeze(1))  # 11 items, 2 ranks: padding or a cut


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_order_is_the_samplers_after_set_epoch(
    store_url: str, shuffle: bool, drop_last: bool
) -> None:
    """Each rank gets its shard of the epoch's permutation exactly as DistributedSampler
    gives it after ``set_epoch(epoch)`` (padding / drop_last included), whatever the
    sampler's own epoch attribute says; a restore jumps into the middle of it."""
    model = torch.nn.Linear(1, 1)
    with retune.init("dist-order", model=model, store=store_url, seed=3) as run:
        for rank in range(2):
            sampler: DistributedSampler[Any] = DistributedSampler(
                ODD, num_replicas=2, rank=rank, shuffle=shuffle, seed=7, drop_last=drop_last
            )
            loader = DataLoader(ODD, batch_size=2, sampler=sampler)
            reference: DistributedSampler[Any] = DistributedSampler(
                ODD, num_replicas=2, rank=rank, shuffle=shuffle, seed=7, drop_last=drop_last
            )
            for epoch in range(3):
                reference.set_epoch(epoch)
                expected = [int(i) for i in reference]
                run.loop.load_state_dict({"epoch": epoch, "batch": 0, "data_seed": 3})
                got = [int(x) for batch in run.batches(loader) for x in batch[0].flatten()]
                assert got == expected, (rank, epoch)
                assert len(got) == sampler.num_samples
                run.loop.load_state_dict({"epoch": epoch, "batch": 2, "data_seed": 3})
                rest = [int(x) for batch in run.batches(loader) for x in batch[0].flatten()]
                assert rest == expected[4:]

"""run.batches() refuses any order it could not reproduce after a restore (issue 8 item 13)."""

from __future__ import annotations

from collections.abc import Iterator

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


DATA = TensorDataset(torch.arange(12.0).unsqueeze(1))


@pytest.mark.parametrize(
    ("sampler", "name"),
    [
        (WeightedRandomSampler([1.0] * 12, 12), "WeightedRandomSampler"),
        (EvensFirst(12), "EvensFirst"),
        (DistributedSampler(DATA, num_replicas=2, rank=0), "DistributedSampler"),
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

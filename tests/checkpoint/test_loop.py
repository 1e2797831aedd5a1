"""Retune's data order: seeded per epoch, reachable at any batch without loading the ones before."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from retune.checkpoint import iterate_batches, num_batches
from retune.errors import InvalidArgument


class Counting(Dataset[int]):
    def __init__(self, size: int) -> None:
        self.size = size
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        self.loaded.append(index)
        return index


def _flat(batches: object) -> list[list[int]]:
    return [b.tolist() for b in batches]  # type: ignore[attr-defined]


def test_order_depends_on_seed_and_epoch_only() -> None:
    loader = DataLoader(Counting(50), batch_size=8, shuffle=True)
    first = _flat(iterate_batches(loader, base_seed=3, epoch=0))
    assert first == _flat(iterate_batches(loader, base_seed=3, epoch=0))
    assert first != _flat(iterate_batches(loader, base_seed=3, epoch=1))
    assert first != _flat(iterate_batches(loader, base_seed=4, epoch=0))
    assert sorted(sum(first, [])) == list(range(50))


def test_starting_mid_epoch_gives_the_tail_without_loading_skipped_items() -> None:
    data = Counting(50)
    loader = DataLoader(data, batch_size=8, shuffle=True)
    full = _flat(iterate_batches(loader, base_seed=1, epoch=2))
    data.loaded.clear()
    tail = _flat(iterate_batches(loader, base_seed=1, epoch=2, start_batch=4))
    assert tail == full[4:]
    assert sorted(data.loaded) == sorted(sum(full[4:], []))


def test_drop_last_workers_and_plain_order() -> None:
    loader = DataLoader(Counting(50), batch_size=8, shuffle=True, drop_last=True)
    batches = _flat(iterate_batches(loader, base_seed=0, epoch=0))
    assert len(batches) == 6 == num_batches(loader) and all(len(b) == 8 for b in batches)
    workers = DataLoader(Counting(50), batch_size=8, shuffle=True, drop_last=True, num_workers=2)
    assert _flat(iterate_batches(workers, base_seed=0, epoch=0)) == batches
    plain = DataLoader(Counting(10), batch_size=4)
    assert _flat(iterate_batches(plain, base_seed=0, epoch=5)) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    assert num_batches(plain) == 3


def test_iterating_draws_nothing_from_the_global_rng() -> None:
    loader = DataLoader(TensorDataset(torch.arange(20)), batch_size=4, shuffle=True)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(iterate_batches(loader, base_seed=0, epoch=0))
    assert torch.equal(torch.rand(3), expected)


def test_iterable_datasets_are_refused() -> None:
    class Stream(IterableDataset[int]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(range(5))

    with pytest.raises(InvalidArgument, match="map-style dataset"):
        list(iterate_batches(DataLoader(Stream(), batch_size=2), base_seed=0, epoch=0))

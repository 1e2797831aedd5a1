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


def _tensor_batches(loader: DataLoader[object], **kwargs: int) -> list[list[torch.Tensor]]:
    return [list(b) for b in iterate_batches(loader, **kwargs)]


def test_tail_of_a_tensor_dataset_is_bitwise_the_full_epochs_tail() -> None:
    x, y = torch.randn(37, 3), torch.arange(37)
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True)
    full = _tensor_batches(loader, base_seed=9, epoch=3)
    assert len(full) == num_batches(loader) == 8
    for start in (0, 1, 7, 8, 20):
        tail = _tensor_batches(loader, base_seed=9, epoch=3, start_batch=start)
        assert len(tail) == len(full[start:])
        for got, want in zip(tail, full[start:], strict=True):
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_the_permutation_is_the_documented_one() -> None:
    from retune.checkpoint import epoch_seed

    loader = DataLoader(Counting(30), batch_size=30, shuffle=True)
    (batch,) = _flat(iterate_batches(loader, base_seed=5, epoch=2))
    generator = torch.Generator().manual_seed(epoch_seed(5, 2))
    assert batch == torch.randperm(30, generator=generator).tolist()
    assert epoch_seed(5, 2) == epoch_seed(5, 2) != epoch_seed(5, 3)
    assert 0 <= epoch_seed(-1, 10**9) < 2**63


def _collate(items: list[int]) -> dict[str, torch.Tensor]:
    return {"ids": torch.tensor(items) * 10}


def test_workers_collate_and_worker_init_are_the_loaders() -> None:
    data = Counting(23)
    plain = DataLoader(data, batch_size=4, shuffle=True, collate_fn=_collate)
    workers = DataLoader(
        data, batch_size=4, shuffle=True, collate_fn=_collate, num_workers=2, prefetch_factor=3
    )
    expected = [b["ids"] for b in iterate_batches(plain, base_seed=2, epoch=1, start_batch=2)]
    got = [b["ids"] for b in iterate_batches(workers, base_seed=2, epoch=1, start_batch=2)]
    assert len(got) == len(expected) == 4
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_orders_retune_cannot_reproduce_are_refused() -> None:
    from torch.utils.data import SubsetRandomSampler, WeightedRandomSampler

    data = Counting(10)
    refused = [
        DataLoader(data, batch_size=2, sampler=WeightedRandomSampler([1.0] * 10, 10)),
        DataLoader(data, batch_size=2, sampler=SubsetRandomSampler(range(5))),
        DataLoader(data, batch_size=None),
        DataLoader(data, batch_sampler=[[0, 1], [2, 3]]),
    ]
    for loader in refused:
        with pytest.raises(InvalidArgument, match=r"run\.batches\(\)"):
            iterate_batches(loader, base_seed=0, epoch=0)
    sampled = DataLoader(data, batch_size=2, sampler=torch.utils.data.RandomSampler(data, True))
    with pytest.raises(InvalidArgument, match="replacement"):
        iterate_batches(sampled, base_seed=0, epoch=0)
    with pytest.raises(InvalidArgument, match="start_batch"):
        iterate_batches(DataLoader(data, batch_size=2), base_seed=0, epoch=0, start_batch=-1)
    with pytest.raises(InvalidArgument, match="DataLoader"):
        iterate_batches([1, 2, 3], base_seed=0, epoch=0)  # type: ignore[arg-type]


def test_skipped_batches_of_a_sequential_loader_are_never_loaded() -> None:
    data = Counting(40)
    loader = DataLoader(data, batch_size=4, shuffle=False)
    assert _flat(iterate_batches(loader, base_seed=0, epoch=0, start_batch=9)) == [[36, 37, 38, 39]]
    assert data.loaded == [36, 37, 38, 39]

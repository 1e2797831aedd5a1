from __future__ import annotations

import numpy as np
import pytest

from retune._downsample import minmax_indices


def test_short_series_are_returned_whole() -> None:
    assert minmax_indices(np.arange(5.0), 10).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n", [1001, 1_000_000])
def test_every_bucket_extreme_survives(n: int) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=n)
    values[n // 3] = 50.0
    values[n // 2] = -50.0
    values[n - 1] = np.inf
    keep = minmax_indices(values, 2000)
    assert len(keep) <= 2000
    assert np.all(np.diff(keep) > 0)
    assert {n // 3, n // 2, n - 1} <= set(keep.tolist())


def test_nan_is_kept() -> None:
    values = np.zeros(10_000)
    values[1234] = np.nan
    keep = minmax_indices(values, 100)
    assert 1234 in keep.tolist() and len(keep) <= 100


def test_too_few_points_is_an_error() -> None:
    with pytest.raises(ValueError):
        minmax_indices(np.zeros(10), 1)

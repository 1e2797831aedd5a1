"""Min/max bucket downsampling: fewer points, and no spike lost."""

from __future__ import annotations

import numpy as np

__all__ = ["minmax_indices"]


def minmax_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices (sorted) of at most ``max_points`` points that keep every bucket's extremes.

    The series is cut into equal buckets; each keeps its minimum and maximum, and its first
    NaN if it has one, so spikes, +/-inf and NaN all survive. ``max_points >= 3`` when NaN are
    present, ``>= 2`` otherwise. O(n) with numpy.
    """
    n = len(values)
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    if n <= max_points:
        return np.arange(n)
    nan = np.isnan(values)
    has_nan = bool(nan.any())
    per_bucket = 3 if has_nan else 2
    buckets = max(1, max_points // per_bucket)
    size = -(-n // buckets)  # ceil
    buckets = -(-n // size)
    padded = buckets * size
    pad = padded - n

    def _grid(array: np.ndarray, fill: float) -> np.ndarray:
        return np.concatenate([array, np.full(pad, fill)]).reshape(buckets, size)

    finite_low = np.where(nan, np.inf, values)
    finite_high = np.where(nan, -np.inf, values)
    offsets = np.arange(buckets) * size
    picks = [
        offsets + np.argmin(_grid(finite_low, np.inf), axis=1),
        offsets + np.argmax(_grid(finite_high, -np.inf), axis=1),
    ]
    if has_nan:
        nan_grid = _grid(nan.astype(np.float64), 0.0)
        first_nan = np.argmax(nan_grid, axis=1)
        has = nan_grid[np.arange(buckets), first_nan] > 0
        picks.append((offsets + first_nan)[has])
    indices = np.unique(np.concatenate(picks))
    return indices[indices < n]

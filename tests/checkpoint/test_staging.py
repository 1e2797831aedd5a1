"""Staging buffers: consecutive copying encodes reuse the CPU memory the previous one wrote from.

Phase 1 of a background save copies every array so training may change the live ones; copying
into fresh memory pays a page fault per page. :class:`retune.checkpoint.Staging` keeps the
buffers between saves. What must hold: a reused buffer never changes a checkpoint already
written, each checkpoint decodes to the state it was taken from, and buffers come back whole
when an encode fails midway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retune.checkpoint import ObjectStore, Staging, decode_state, encode_in_memory
from retune.errors import InvalidArgument


def _state(value: float) -> dict[str, Any]:
    return {
        "w": torch.full((300, 100), value),
        "w2": torch.full((300, 100), -value),  # same dtype and size as w: its own buffer
        "h": torch.full((50,), value, dtype=torch.float16),
        "a": np.full(40_000, value),
        "step": int(value),
    }


def _pointers(staging: Staging) -> set[int]:
    return {
        b.ctypes.data if isinstance(b, np.ndarray) else b.data_ptr()
        for buffers in staging._free.values()
        for b in buffers
    }


def test_a_second_encode_copies_into_the_first_s_buffers_and_both_decode_exactly(
    tmp_path: Path,
) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    staging = Staging()
    live = _state(1.0)
    first = encode_in_memory(live, staging=staging)
    assert staging.nbytes == 0  # every buffer is in use by the first state
    for tensor in (live["w"], live["w2"], live["h"]):
        tensor.fill_(7.0)  # training goes on: the copy must not see it
    live["a"].fill(7.0)
    manifest1, _ = first.write(objects)
    first.release()
    held = staging.nbytes
    assert held == 2 * 300 * 100 * 4 + 50 * 2 + 40_000 * 8
    pointers = _pointers(staging)

    live = _state(2.0)
    second = encode_in_memory(live, staging=staging)
    assert staging.nbytes == 0 and pointers  # all taken again
    manifest2, _ = second.write(objects)
    second.release()
    assert _pointers(staging) == pointers  # the same memory, not fresh allocations

    for manifest, value in ((manifest1, 1.0), (manifest2, 2.0)):
        state = decode_state(manifest, objects)
        assert torch.equal(state["w"], torch.full((300, 100), value))
        assert torch.equal(state["w2"], torch.full((300, 100), -value))
        assert torch.equal(state["h"], torch.full((50,), value, dtype=torch.float16))
        assert np.array_equal(state["a"], np.full(40_000, value)) and state["step"] == value


def test_an_encode_that_fails_midway_gives_its_buffers_back() -> None:
    staging = Staging()
    encode_in_memory(_state(1.0), staging=staging).release()
    held = staging.nbytes
    with pytest.raises(InvalidArgument, match="cannot checkpoint object"):
        encode_in_memory({**_state(3.0), "zz": object()}, staging=staging)
    assert staging.nbytes == held


def test_an_encode_without_copies_takes_no_staging_buffers() -> None:
    staging = Staging()
    encoded = encode_in_memory(_state(1.0), copy=False, staging=staging)
    encoded.release()
    assert staging.nbytes == 0


def test_buffers_of_sizes_no_longer_in_the_state_are_freed_not_kept() -> None:
    """An array that grows between saves (a history, a resized layer) must not leave one
    buffer behind per save: the pool holds the last save's arrays only."""
    staging = Staging()
    for size in range(1_000, 11_000, 1_000):
        encode_in_memory(
            {"history": np.zeros(size), "w": torch.ones(500)}, staging=staging
        ).release()
        assert staging.nbytes == size * 8 + 500 * 4

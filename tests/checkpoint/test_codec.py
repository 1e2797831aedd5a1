"""State trees <-> manifest + blobs: exact round trips, dedup, packing, clear refusals."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from retune.checkpoint import ObjectStore, decode_state, encode_state, manifest_blobs
from retune.errors import CheckpointCorrupt, InvalidArgument


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 300), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(300, 2)
    )
    opt = torch.optim.Adam(model.parameters())
    for _ in range(3):
        model(torch.randn(4, 8)).sum().backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model, opt


def _bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy()) if flat.numel() else b""


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and _bytes(a) == _bytes(b)  # bitwise: NaN payloads and -0.0 included
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))  # type: ignore[arg-type]
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_model_optimizer_rng_and_user_state_round_trip_exactly(tmp_path: Path) -> None:
    model, opt = _trained()
    tree = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),  # int keys in "state"
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
        "user": {
            "best": torch.tensor(0.25),
            "values": [1, 2.5, math.nan, math.inf, -math.inf, "x", None, True, b"\x00\x01"],
            7: (torch.zeros(0, 3), np.float32(2.5), np.arange(6).reshape(2, 3)),
            "odd": [
                torch.randn(3, 4).to(torch.bfloat16),
                torch.tensor([True, False]),
                torch.randn(4, 5).t(),
                torch.randn(2, dtype=torch.complex64),
                torch.float16,
                torch.device("cpu"),
            ],
        },
    }
    objects = ObjectStore(str(tmp_path / "objects"))
    manifest, nbytes = encode_state(tree, objects)
    assert nbytes > 300 * 8 * 4
    stored = json.loads(json.dumps(manifest, allow_nan=False))  # plain JSON, no NaN literals
    back = decode_state(stored, objects)
    assert _equal(tree, back)
    restored_model, restored_opt = _trained()
    restored_model.load_state_dict(back["model"])
    restored_opt.load_state_dict(back["optimizer"])
    assert back["model"]["0.weight"].is_contiguous()


def test_identical_tensors_are_stored_once(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    frozen = torch.randn(512, 512)  # 1 MiB: one blob of its own
    first, _ = encode_state({"backbone": frozen, "head": torch.randn(512, 512)}, objects)
    count = len(list(objects.keys()))
    second, _ = encode_state({"backbone": frozen.clone(), "head": torch.randn(512, 512)}, objects)
    assert len(list(objects.keys())) == count + 1  # only the new head
    assert manifest_blobs(first) & manifest_blobs(second)


def test_small_tensors_are_packed(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    manifest, _ = encode_state({f"bias{i}": torch.randn(10) for i in range(200)}, objects)
    assert len(manifest_blobs(manifest)) == 1
    back = decode_state(manifest, objects)
    assert len(back) == 200


def test_unsupported_values_are_refused_with_their_path(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    with pytest.raises(InvalidArgument, match=r"cannot checkpoint object at state\['user'\]\[1\]"):
        encode_state({"user": [1, object()]}, objects)
    with pytest.raises(InvalidArgument, match="must be a str or int"):
        encode_state({(1, 2): 3}, objects)


def test_a_corrupt_or_missing_blob_names_the_checkpoint(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    manifest, _ = encode_state({"w": torch.randn(256, 256)}, objects)
    (key,) = manifest_blobs(manifest)
    path = tmp_path / "objects" / key[:2] / key[2:]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointCorrupt, match=f"checkpoint c9 cannot be restored: blob {key} is corrupt"
    ):
        decode_state(manifest, objects, label="c9")
    path.unlink()
    with pytest.raises(CheckpointCorrupt, match="missing"):
        decode_state(manifest, objects, label="c9")


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointCorrupt, match="format 99"):
        decode_state({"format": 99, "root": None}, ObjectStore(str(tmp_path / "o")))


def test_memory_fsspec_store(tmp_path: Path) -> None:
    objects = ObjectStore("memory://codec-test")
    tensor = torch.randn(300, 300)
    manifest, _ = encode_state({"t": tensor}, objects)
    assert torch.equal(decode_state(manifest, objects)["t"], tensor)

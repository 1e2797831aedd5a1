"""State trees <-> manifest + blobs: exact round trips, dedup, packing, clear refusals."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

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
    flat = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy()) if flat.numel() else b""


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and _bytes(a) == _bytes(b)  # bitwise: NaN payloads and -0.0 included
        )
    if isinstance(a, (np.ndarray, np.generic)):
        return type(a) is type(b) and a.dtype == b.dtype and a.tobytes() == b.tobytes()  # type: ignore[union-attr]
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
    with pytest.raises(InvalidArgument, match="dict keys must be str or int"):
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


def test_scheduler_and_optimizer_state_restore_training_exactly(tmp_path: Path) -> None:
    model, opt = _trained()
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.step()
        scheduler.step()
    objects = ObjectStore(str(tmp_path / "objects"))
    tree = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": scheduler.state_dict()}
    back = decode_state(encode_state(tree, objects)[0], objects)
    assert set(back["opt"]["state"]) == set(opt.state_dict()["state"])
    assert all(isinstance(k, int) for k in back["opt"]["state"])
    assert back["sched"] == scheduler.state_dict()

    model2, opt2 = _trained()
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["opt"])
    x = torch.randn(4, 8)
    for m, o in ((model, opt), (model2, opt2)):
        m.eval()
        o.zero_grad()
        m(x).sum().backward()  # type: ignore[no-untyped-call]
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_nan_payloads_signed_zeros_and_numpy_types_survive(tmp_path: Path) -> None:
    words = np.array([0x7FC00001, 0x7F800001, 0xFFC00000, 0x80000000], dtype=np.uint32)
    payloads = torch.from_numpy(words.view(np.int32))
    odd_floats = payloads.view(torch.float32)  # quiet/signalling NaNs with payloads, -0.0
    tree = {
        "f32": odd_floats,
        "f16": torch.tensor([math.nan, -0.0, math.inf], dtype=torch.float16),
        "np": np.array([np.nan, -0.0]),
        "scalars": (np.float64(1.5), np.int8(-3), np.bool_(True), np.float32(math.nan)),
        "big_int": 2**70,
    }
    objects = ObjectStore(str(tmp_path / "objects"))
    back = decode_state(encode_state(tree, objects)[0], objects)
    assert torch.equal(back["f32"].view(torch.int32), payloads)
    assert _equal(tree, back)
    assert [type(v) for v in back["scalars"]] == [np.float64, np.int8, np.bool_, np.float32]
    assert back["big_int"] == 2**70


def test_decoded_values_are_writable_and_keep_requires_grad(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    tree: dict[str, Any] = {
        "big": torch.randn(300, 300),
        "small": torch.randn(3),
        "array": np.arange(4.0),
        "param": torch.nn.Parameter(torch.randn(2)),
    }
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about non-writable buffers
        back = decode_state(encode_state(tree, objects)[0], objects)
    back["big"].add_(1)
    back["small"].add_(1)
    back["array"] += 1
    assert back["param"].requires_grad and not back["big"].requires_grad
    again = decode_state(encode_state(tree, objects)[0], objects)  # the blob did not change
    assert torch.equal(again["big"], tree["big"])


def test_views_conjugates_and_repeated_tensors(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    base = torch.randn(200, 300)
    shared = torch.randn(400, 400)
    complex_ = torch.randn(300, 300, dtype=torch.complex64)
    tree = {
        "slice": base[::2, 1::3],
        "expanded": torch.randn(1, 300).expand(400, 300),
        "conj": complex_.conj(),
        "neg": torch.randn(300, 300).neg().conj(),
        "twice": [shared, shared],
    }
    manifest, _ = encode_state(tree, objects)
    back = decode_state(manifest, objects)
    assert _equal(tree, back)
    assert torch.equal(back["conj"], complex_.conj().resolve_conj())
    back["twice"][0].zero_()  # restored tensors do not alias each other
    assert torch.equal(back["twice"][1], shared)


def test_pack_below_zero_stores_every_tensor_alone(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    tree = {f"t{i}": torch.full((4,), float(i)) for i in range(5)}
    manifest, nbytes = encode_state(tree, objects, pack_below=0)
    assert len(manifest_blobs(manifest)) == 5 and nbytes == 5 * 16
    assert _equal(decode_state(manifest, objects), tree)


def test_tensors_are_refused_with_their_path_when_not_dense(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    sparse = torch.eye(3).to_sparse()
    with pytest.raises(InvalidArgument, match=r"state\['user'\]\['s'\]"):
        encode_state({"user": {"s": sparse}}, objects)
    with pytest.raises(
        InvalidArgument, match=r"cannot checkpoint builtin_function_or_method at state\[3\]\[0\]"
    ):
        encode_state({3: [len]}, objects)
    assert list(objects.iter_hashes()) == []  # nothing written before the refusal


def test_malformed_manifests_are_corrupt_checkpoints(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    manifest, _ = encode_state({"w": torch.randn(100, 100)}, objects)
    node = manifest["root"]["items"][0][1]
    bad = json.loads(json.dumps(manifest))
    bad["root"]["items"][0][1]["shape"] = [7, 7]
    with pytest.raises(
        CheckpointCorrupt, match=r"checkpoint c1 cannot be restored: .*does not fit"
    ):
        decode_state(bad, objects, label="c1")
    bad["root"]["items"][0][1] = {"t": "tensor"}
    with pytest.raises(CheckpointCorrupt, match="c1 cannot be restored: None is not a torch dtype"):
        decode_state(bad, objects, label="c1")
    bad["root"]["items"][0][1] = {"t": "pickle"}
    with pytest.raises(CheckpointCorrupt, match="unknown entry kind 'pickle'"):
        decode_state(bad, objects, label="c1")
    with pytest.raises(CheckpointCorrupt, match="upgrade Retune"):
        decode_state({"format": 2, "root": None}, objects)
    assert node["nbytes"] == 100 * 100 * 4


def test_missing_pack_is_a_corrupt_checkpoint(tmp_path: Path) -> None:
    objects = ObjectStore("memory://" + str(tmp_path / "packs"))
    manifest, _ = encode_state({"a": torch.ones(3), "b": b"raw bytes"}, objects)
    (key,) = manifest_blobs(manifest)
    objects.delete(key)
    with pytest.raises(CheckpointCorrupt, match=f"checkpoint c2 cannot be restored: blob {key}"):
        decode_state(manifest, objects, label="c2")


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_round_trip_through_urls(tmp_path: Path, scheme: str) -> None:
    objects = ObjectStore(f"{scheme}://{tmp_path / 'objects'}")
    model, opt = _trained()
    tree = {"model": model.state_dict(), "opt": opt.state_dict(), "n": (1, 2.0, None)}
    manifest, _ = encode_state(tree, objects)
    assert _equal(decode_state(manifest, ObjectStore(objects.url)), tree)


def test_importing_the_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, retune.checkpoint as c\n"
        "assert 'torch' not in sys.modules\n"
        "o = c.ObjectStore('memory://no-torch')\n"
        "m, _ = c.encode_state({'a': np.arange(3), 'b': [1.5, float('nan')]}, o)\n"
        "back = c.decode_state(m, o)\n"
        "assert back['a'].tolist() == [0, 1, 2] and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arrays", [3, 40])  # 12 MB: copied in line; 160 MB: on several threads
def test_an_in_memory_copy_holds_the_state_of_its_moment(tmp_path: Path, arrays: int) -> None:
    """``encode_in_memory(copy=True)`` (a background save's phase 1) keeps the bytes the
    arrays had when it returned, whichever way it copied them; later changes do not leak in."""
    from retune.checkpoint import encode_in_memory

    generator = torch.Generator().manual_seed(arrays)
    live: dict[str, Any] = {
        "tensors": [torch.randn(1024, 512, generator=generator) for _ in range(arrays)],
        "array": np.arange(1_000_000, dtype=np.float64),
        "view": torch.randn(64, 64, generator=generator)[:, 3:40],  # strided: its own copy
    }
    expected = {
        "tensors": [t.clone() for t in live["tensors"]],
        "array": live["array"].copy(),
        "view": live["view"].clone(),
    }
    encoded = encode_in_memory(live, copy=True)
    for tensor in live["tensors"]:
        tensor.add_(1.0)
    live["array"] += 1.0
    manifest, _ = encoded.write(ObjectStore(str(tmp_path / "objects")))
    restored = decode_state(manifest, ObjectStore(str(tmp_path / "objects")))
    assert all(
        torch.equal(got, want)
        for got, want in zip(restored["tensors"], expected["tensors"], strict=True)
    )
    assert np.array_equal(restored["array"], expected["array"])
    assert torch.equal(restored["view"], expected["view"])

"""A hand-edited or damaged manifest can only fail as CheckpointCorrupt: it never reaches an
arbitrary object, never allocates what its blobs cannot back, never raises a raw error."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retune.checkpoint import ObjectStore, decode_state, encode_state
from retune.errors import CheckpointCorrupt


def _manifest(objects: ObjectStore) -> dict[str, Any]:
    tree = {
        "w": torch.randn(200, 200),  # a blob of its own
        "b": torch.arange(6, dtype=torch.int16).reshape(2, 3),  # packed
        "a": np.arange(5, dtype=np.float32),
        "s": np.float64(2.5),
        "raw": b"bytes",
        "d": torch.float16,
        "dev": torch.device("cpu"),
        "n": [float("nan"), (1, "x", None), {3: True}],
    }
    manifest, _ = encode_state(tree, objects)
    back: dict[str, Any] = json.loads(json.dumps(manifest))  # what the store gives back
    return back


def _entry(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    return dict(manifest["root"]["items"])[key]  # type: ignore[no-any-return]


@pytest.fixture
def objects(tmp_path: Path) -> ObjectStore:
    return ObjectStore(str(tmp_path / "objects"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"t": "dtype", "v": "load"}, "'load' is not a torch dtype"),
        ({"t": "dtype", "v": "os"}, "'os' is not a torch dtype"),
        ({"t": "dtype", "v": "Tensor"}, "'Tensor' is not a torch dtype"),
        ({"t": "dtype", "v": "qint8"}, "'qint8' is not a torch dtype"),
        ({"t": "device", "v": "cuda:0; rm -rf"}, "is not a device"),
        ({"t": "float", "v": "1e308"}, "not nan, inf or -inf"),
        ({"t": "pickle", "v": "x"}, "unknown entry kind 'pickle'"),
        ({"t": "dict", "items": [[[1], 2]]}, "a dict key is"),
        ({"t": "list", "items": 3}, "no list of items"),
    ],
)
def test_a_manifest_cannot_name_arbitrary_objects(
    objects: ObjectStore, edit: dict[str, Any], message: str
) -> None:
    manifest = _manifest(objects)
    manifest["root"]["items"][0][1] = edit
    with pytest.raises(CheckpointCorrupt, match=f"c1 cannot be restored: .*{message}"):
        decode_state(manifest, objects, label="c1")


@pytest.mark.parametrize(
    ("key", "field", "value", "message"),
    [
        ("w", "nbytes", 10 * 2**40, "160000 bytes, the manifest says 10995116277760"),
        ("w", "shape", [10 * 2**40], "the manifest says 160000: it does not fit"),
        ("w", "shape", [7, 7], "does not fit"),
        ("w", "shape", [-200, -200], "not an int >= 0"),
        ("w", "shape", [200, 200.0], "not an int >= 0"),
        ("w", "dtype", "float64", "does not fit"),
        ("w", "device", "nowhere", "is not a device"),
        ("b", "offset", -8, "offset is -8"),
        ("b", "offset", 10**9, "outside its"),
        ("a", "dtype", "O", "'O' is not a numpy dtype"),
        ("a", "dtype", "|O8", "is not a numpy dtype"),
        ("a", "dtype", "<M8[s]", "is not a numpy dtype"),
        ("a", "dtype", [["f", "<f4"]], "is not a numpy dtype"),
        ("raw", "nbytes", -1, "nbytes is -1"),
    ],
)
def test_sizes_offsets_shapes_and_dtypes_are_checked_before_allocating(
    objects: ObjectStore, key: str, field: str, value: Any, message: str
) -> None:
    manifest = _manifest(objects)
    _entry(manifest, key)[field] = value
    with pytest.raises(CheckpointCorrupt, match=f"c1 cannot be restored: .*{message}"):
        decode_state(manifest, objects, label="c1")


def test_a_blob_smaller_than_its_entry_is_refused_before_reading(objects: ObjectStore) -> None:
    manifest = _manifest(objects)
    entry = _entry(manifest, "w")
    entry["shape"], entry["nbytes"] = [400, 200], 320_000
    with pytest.raises(CheckpointCorrupt, match="has 160000 bytes, the manifest says 320000"):
        decode_state(manifest, objects, label="c1")


def test_the_valid_manifest_still_decodes(objects: ObjectStore) -> None:
    back = decode_state(_manifest(objects), objects)
    assert back["d"] is torch.float16 and back["dev"] == torch.device("cpu")
    assert back["b"].tolist() == [[0, 1, 2], [3, 4, 5]] and back["s"] == np.float64(2.5)


# -- fuzzing: any mutation of a valid manifest decodes or is CheckpointCorrupt ---------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["", "load", "os", "O", "<f4", "float32", "cpu", "nan", "tensor", "dict",
                     "pickle", "../../etc", "0" * 64, "a" * 64, "bytes", "ndarray", "npscalar"]),
)  # fmt: skip
_FIELDS = st.sampled_from(
    ["t", "v", "items", "dtype", "shape", "nbytes", "blob", "pack", "offset", "device"]
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_FIELDS, inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


_BASE: dict[str, Any] = {}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_manifests_decode_or_are_corrupt(tmp_path_factory: Any, data: Any) -> None:
    if not _BASE:
        folder = tmp_path_factory.mktemp("fuzz")
        _BASE["objects"] = ObjectStore(str(folder / "objects"))
        _BASE["manifest"] = _manifest(_BASE["objects"])
    objects: ObjectStore = _BASE["objects"]
    manifest = copy.deepcopy(_BASE["manifest"])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(manifest)
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        parent: Any = manifest
        for part in path[:-1]:
            parent = parent[part]
        if not path:
            manifest = data.draw(_VALUES)
            continue
        last = path[-1]
        if action == "replace":
            parent[last] = data.draw(_VALUES)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][data.draw(st.sampled_from(["t", "v", "offset", "shape"]))] = data.draw(
                _VALUES
            )
        elif isinstance(parent[last], list):
            parent[last].append(data.draw(_VALUES))
    with contextlib.suppress(CheckpointCorrupt):  # anything else fails the test
        decode_state(manifest, objects, label="c1")
    assert not list(objects.temporaries())
    assert os.path.isdir(objects.url)

"""The content-addressed blob store, on a local folder, file:// and memory://."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from retune.checkpoint import ObjectStore, digest
from retune.errors import CheckpointCorrupt


@pytest.fixture(params=["path", "file", "memory"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "path":
        return ObjectStore(str(tmp_path / "objects"))
    if request.param == "file":
        return ObjectStore(f"file://{tmp_path / 'objects'}")
    return ObjectStore(f"memory://retune-test-{uuid.uuid4().hex}")


def test_put_get_and_dedup(objects: ObjectStore) -> None:
    key = objects.put(b"hello")
    assert key == digest(b"hello") and objects.exists(key)
    assert objects.get(key) == b"hello"
    assert objects.put(b"hello") == key
    objects.put(b"world")
    assert sorted(objects.keys()) == sorted([key, digest(b"world")])
    assert objects.size(key) == 5
    objects.delete(key)
    assert not objects.exists(key) and list(objects.keys()) == [digest(b"world")]


def test_missing_blob_is_a_clear_error(objects: ObjectStore) -> None:
    with pytest.raises(CheckpointCorrupt, match=f"blob {digest(b'x')} is missing"):
        objects.get(digest(b"x"))


def test_corrupt_blob_is_detected(tmp_path: Path) -> None:
    objects = ObjectStore(str(tmp_path / "objects"))
    key = objects.put(b"some tensor bytes")
    path = tmp_path / "objects" / key[:2] / key[2:]
    path.write_bytes(b"some tensor bytez")
    with pytest.raises(CheckpointCorrupt, match=f"blob {key} is corrupt"):
        objects.get(key)


def test_not_a_key_is_refused(objects: ObjectStore) -> None:
    with pytest.raises(CheckpointCorrupt, match="not a blob key"):
        objects.get("../../etc/passwd")

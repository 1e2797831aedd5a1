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


def test_url_and_memoryview_puts(objects: ObjectStore) -> None:
    data = bytearray(range(256)) * 1000
    key = objects.put(memoryview(data))
    assert objects.url.endswith("objects") or objects.url.startswith("memory://")
    assert list(objects.iter_hashes()) == [key]
    assert objects.get(key) == bytes(data)


def test_size_of_a_missing_blob_is_a_clear_error(objects: ObjectStore) -> None:
    with pytest.raises(CheckpointCorrupt, match=f"blob {digest(b'y')} is missing"):
        objects.size(digest(b"y"))
    objects.delete(digest(b"y"))  # deleting a missing blob is fine


def test_existing_blobs_are_not_rewritten_but_damaged_ones_are(tmp_path: Path) -> None:
    objects = ObjectStore(f"file://{tmp_path / 'objects'}")
    key = objects.put(b"0123456789")
    path = tmp_path / "objects" / key[:2] / key[2:]
    inode = path.stat().st_ino
    objects.put(b"0123456789")
    assert path.stat().st_ino == inode  # deduplicated: not written again
    path.write_bytes(b"01234")  # truncated on disk
    objects.put(b"0123456789")
    assert objects.get(key) == b"0123456789"
    assert list(objects.temporaries()) == []


def test_layout_is_two_character_fan_out_and_local_writes_leave_no_temporaries(
    tmp_path: Path,
) -> None:
    objects = ObjectStore(str(tmp_path / "objects"), fsync=False)
    keys = [objects.put(str(i).encode()) for i in range(20)]
    for key in keys:
        assert (tmp_path / "objects" / key[:2] / key[2:]).is_file()
    assert sorted(objects.iter_hashes()) == sorted(keys)
    assert list(objects.temporaries()) == []


def test_concurrent_puts_of_the_same_blob(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    objects = ObjectStore(str(tmp_path / "objects"))
    data = b"x" * 1_000_000
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: objects.put(data), range(16)))
    assert keys == {digest(data)}
    assert objects.get(digest(data)) == data
    assert list(objects.temporaries()) == []


def test_an_unknown_filesystem_is_store_unavailable() -> None:
    from retune.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="cannot open the object store"):
        ObjectStore("nosuchprotocol://bucket/objects")


def test_an_unwritable_folder_is_store_unavailable(tmp_path: Path) -> None:
    from retune.errors import StoreUnavailable

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="cannot create the object folder"):
        ObjectStore(str(blocker / "objects"))

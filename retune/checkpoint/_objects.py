"""A content-addressed blob store: bytes keyed by their sha256, at a folder or any fsspec URL.

Blobs are written atomically (temporary file, fsync, rename) and verified on every read. A blob
that already exists is not written again, which is how identical tensors are stored once.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retune.errors import CheckpointCorrupt, StoreUnavailable

__all__ = ["ObjectStore", "digest"]


def digest(data: bytes | memoryview) -> str:
    """The key of a blob: the sha256 hex digest of its bytes."""
    return hashlib.sha256(data).hexdigest()


class ObjectStore:
    """Blobs under ``url``: a local folder (plain path or ``file://``) or any fsspec URL.

    Thread-safe: blobs are immutable and every write goes through a unique temporary name.
    ``fsync=True`` (default) makes every :meth:`put` durable before it returns, on local disks.
    """

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self.url = url
        self._fsync = fsync
        local = url.removeprefix("file://") if url.startswith("file://") else url
        self._local: Path | None = None
        self._fs: Any = None
        if "://" not in local:
            self._local = Path(local).expanduser().resolve()
            try:
                self._local.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreUnavailable(f"cannot create the object folder {local}: {e}") from e
        else:
            try:
                import fsspec

                self._fs, self._root = fsspec.core.url_to_fs(url)
            except (ImportError, ValueError) as e:
                raise StoreUnavailable(f"cannot open object store {url!r}: {e}") from e
        self._unsynced_dirs: set[Path] = set()
        self._lock = threading.Lock()

    def _relative(self, key: str) -> str:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise CheckpointCorrupt(f"{key!r} is not a blob key")
        return f"{key[:2]}/{key[2:]}"

    def _path(self, key: str) -> str:
        relative = self._relative(key)
        if self._local is not None:
            return str(self._local / relative)
        return f"{self._root.rstrip('/')}/{relative}"

    def exists(self, key: str) -> bool:
        path = self._path(key)
        return os.path.exists(path) if self._local is not None else bool(self._fs.exists(path))

    def put(self, data: bytes | memoryview, key: str | None = None) -> str:
        """Store ``data`` (if absent) and return its key; ``key`` may be given if known."""
        key = key or digest(data)
        if self.exists(key):
            return key
        path = self._path(key)
        try:
            if self._local is not None:
                self._put_local(Path(path), data)
            else:
                temporary = f"{path}.tmp-{uuid.uuid4().hex}"
                self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                self._fs.pipe_file(temporary, bytes(data))
                self._fs.mv(temporary, path)
        except OSError as e:
            raise StoreUnavailable(f"cannot write blob {key} to {self.url}: {e}") from e
        return key

    def _put_local(self, path: Path, data: bytes | memoryview) -> None:
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
        with open(temporary, "wb") as handle:
            handle.write(data)
            if self._fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
        if self._fsync:
            with self._lock:
                self._unsynced_dirs.add(path.parent)

    def sync(self) -> None:
        """Make every rename since the last call durable (fsync of the touched folders).

        Call it before recording anything that refers to the blobs just written.
        """
        with self._lock:
            folders, self._unsynced_dirs = self._unsynced_dirs, set()
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def get(self, key: str) -> bytes:
        """The blob's bytes, verified; ``CheckpointCorrupt`` when missing or altered."""
        path = self._path(key)
        try:
            if self._local is not None:
                with open(path, "rb") as handle:
                    data = handle.read()
            else:
                data = self._fs.cat_file(path)
        except FileNotFoundError as e:
            raise CheckpointCorrupt(f"blob {key} is missing from {self.url}") from e
        except OSError as e:
            raise CheckpointCorrupt(f"blob {key} cannot be read from {self.url}: {e}") from e
        actual = digest(data)
        if actual != key:
            raise CheckpointCorrupt(f"blob {key} is corrupt: its bytes hash to {actual}")
        return data

    def map(self, key: str) -> memoryview | None:
        """The blob mapped copy-on-write into memory, verified; ``None`` for remote stores.

        No copy is made: pages come from the OS page cache as they are touched, and writes
        to the mapping stay private to this process.
        """
        if self._local is None:
            return None
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size == 0:
                    return None
                mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
        except FileNotFoundError as e:
            raise CheckpointCorrupt(f"blob {key} is missing from {self.url}") from e
        except OSError as e:
            raise CheckpointCorrupt(f"blob {key} cannot be read from {self.url}: {e}") from e
        view = memoryview(mapped)
        actual = digest(view)
        if actual != key:
            raise CheckpointCorrupt(f"blob {key} is corrupt: its bytes hash to {actual}")
        return view

    def read_into(self, key: str, buffer: memoryview) -> None:
        """Fill ``buffer`` (exactly the blob's size) with the blob's bytes, verified.

        One copy from the file into the caller's memory (a tensor's storage, say); hashing and
        reading release the GIL, so several blobs can be read at once from threads.
        """
        if self._local is None:
            data = self.get(key)
            if len(data) != buffer.nbytes:
                raise CheckpointCorrupt(
                    f"blob {key} has {len(data)} bytes, expected {buffer.nbytes}"
                )
            buffer[:] = data
            return
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as handle:
                read = handle.readinto(buffer)
                extra = handle.read(1)
        except FileNotFoundError as e:
            raise CheckpointCorrupt(f"blob {key} is missing from {self.url}") from e
        except OSError as e:
            raise CheckpointCorrupt(f"blob {key} cannot be read from {self.url}: {e}") from e
        if read != buffer.nbytes or extra:
            raise CheckpointCorrupt(
                f"blob {key} is corrupt: it does not have {buffer.nbytes} bytes"
            )
        actual = digest(buffer)
        if actual != key:
            raise CheckpointCorrupt(f"blob {key} is corrupt: its bytes hash to {actual}")

    def size(self, key: str) -> int:
        path = self._path(key)
        return os.path.getsize(path) if self._local is not None else int(self._fs.size(path))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if self._local is not None:
                os.remove(path)
            else:
                self._fs.rm_file(path)
        except FileNotFoundError:
            pass

    def keys(self) -> Iterator[str]:
        """Every blob key in the store (temporary files of interrupted writes excluded)."""
        if self._local is not None:
            for folder in sorted(self._local.iterdir()):
                if folder.is_dir() and len(folder.name) == 2:
                    for item in folder.iterdir():
                        if ".tmp-" not in item.name:
                            yield folder.name + item.name
            return
        for path in self._fs.find(self._root):
            parts = str(path).rstrip("/").split("/")
            if len(parts) >= 2 and ".tmp-" not in parts[-1] and len(parts[-2]) == 2:
                yield parts[-2] + parts[-1]

    def temporaries(self) -> Iterator[str]:
        """Paths of temporary files left by writes that were killed (local stores)."""
        if self._local is None:
            return
        for folder in self._local.iterdir():
            if folder.is_dir():
                for item in folder.iterdir():
                    if ".tmp-" in item.name:
                        yield str(item)

"""A content-addressed blob store: bytes keyed by their sha256, at a folder or any fsspec URL.

Layout: ``<root>/ab/cdef...`` (the first two hex digits fan out into folders). Blobs are
immutable: written once, atomically, and verified on every read. A blob that already exists is
not written again, which is how identical tensors are stored once.
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

_HEX = frozenset("0123456789abcdef")


def digest(data: bytes | memoryview) -> str:
    """The key of a blob: the sha256 hex digest of its bytes (releases the GIL when large)."""
    return hashlib.sha256(data).hexdigest()


class ObjectStore:
    """Blobs under ``url``: a local folder (plain path or ``file://``) or any fsspec URL.

    Contract:

    * :meth:`put` returns the blob's key (its sha256 hex digest) and skips the write when a
      blob with that key and size already exists.
    * On a local disk a write is atomic: a temporary file in the blob's folder, flushed and
      fsynced, then ``os.replace``; with ``fsync=True`` the folder is fsynced too, so the blob
      survives a power cut once :meth:`put` (or :meth:`sync` after ``put(..., sync=False)``)
      returns. Other fsspec filesystems write a temporary name and move it (best effort).
    * :meth:`get` / :meth:`read_into` / :meth:`map` verify the bytes against the key; a missing
      or altered blob raises :class:`CheckpointCorrupt` naming the key. Callers add which
      checkpoint it belongs to.
    * Filesystem errors become :class:`StoreUnavailable` (cannot write, list or open) or
      :class:`CheckpointCorrupt` (cannot read a blob), raised ``from`` the original error.
    * Thread-safe: every write goes through its own temporary name.
    """

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self._url = url
        self._fsync = fsync
        local = url.removeprefix("file://")
        self._local: Path | None = None
        self._fs: Any = None
        self._root = ""
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
            except (ImportError, ValueError, OSError) as e:
                raise StoreUnavailable(
                    f"cannot open the object store {url!r}: {e} (is its fsspec backend installed?)"
                ) from e
        self._unsynced_dirs: set[Path] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The location this store was opened with, as given."""
        return self._url

    def __repr__(self) -> str:
        return f"ObjectStore({self._url!r})"

    # -- paths ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        if len(key) != 64 or not _HEX.issuperset(key):
            raise CheckpointCorrupt(f"{key!r} is not a blob key (64 lowercase hex digits)")
        if self._local is not None:
            return str(self._local / key[:2] / key[2:])
        return f"{self._root.rstrip('/')}/{key[:2]}/{key[2:]}"

    # -- queries -------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether a blob with this key is stored (its bytes are not checked)."""
        path = self._path(key)
        try:
            return os.path.exists(path) if self._local is not None else bool(self._fs.exists(path))
        except OSError as e:
            raise StoreUnavailable(f"cannot look up blob {key} in {self._url}: {e}") from e

    def size(self, key: str) -> int:
        """The stored blob's size in bytes; ``CheckpointCorrupt`` when it is missing."""
        path = self._path(key)
        try:
            return os.path.getsize(path) if self._local is not None else int(self._fs.size(path))
        except FileNotFoundError as e:
            raise CheckpointCorrupt(f"blob {key} is missing from {self._url}") from e
        except OSError as e:
            raise StoreUnavailable(f"cannot stat blob {key} in {self._url}: {e}") from e

    def iter_hashes(self) -> Iterator[str]:
        """Every blob key in the store; temporary files of interrupted writes are skipped."""
        try:
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
        except OSError as e:
            raise StoreUnavailable(f"cannot list the blobs in {self._url}: {e}") from e

    def keys(self) -> Iterator[str]:
        """Same as :meth:`iter_hashes`."""
        return self.iter_hashes()

    def temporaries(self) -> Iterator[str]:
        """Paths of temporary files left by writes that were killed (local stores only)."""
        if self._local is None:
            return
        for folder in self._local.iterdir():
            if folder.is_dir():
                for item in folder.iterdir():
                    if ".tmp-" in item.name:
                        yield str(item)

    # -- writes --------------------------------------------------------------------------

    def put(self, data: bytes | memoryview, key: str | None = None, *, sync: bool = True) -> str:
        """Store ``data`` unless already stored; return its key.

        ``key`` may be passed when the caller already hashed ``data`` (it is trusted). With
        ``sync=False`` the folder fsync is deferred to the next :meth:`sync` call, so a batch
        of puts pays for it once.
        """
        key = key or digest(data)
        nbytes = data.nbytes if isinstance(data, memoryview) else len(data)
        path = self._path(key)
        try:
            if self._local is not None:
                if not self._is_stored(Path(path), nbytes):
                    self._put_local(Path(path), data)
                    if sync:
                        self.sync()
            elif not self._fs.exists(path):
                self._put_remote(path, data)
        except OSError as e:
            raise StoreUnavailable(f"cannot write blob {key} to {self._url}: {e}") from e
        return key

    @staticmethod
    def _is_stored(path: Path, nbytes: int) -> bool:
        # a blob of the wrong size (damaged on disk) is rewritten rather than trusted
        try:
            return path.stat().st_size == nbytes
        except FileNotFoundError:
            return False

    def _put_local(self, path: Path, data: bytes | memoryview) -> None:
        folder = path.parent
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            with self._lock:
                self._unsynced_dirs.add(folder.parent)  # the new fan-out folder's entry
        temporary = folder / f"{path.name}.tmp-{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                if self._fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        with self._lock:
            self._unsynced_dirs.add(folder)

    def _put_remote(self, path: str, data: bytes | memoryview) -> None:
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with self._fs.open(temporary, "wb") as handle:
            handle.write(data)
        self._fs.mv(temporary, path)

    def sync(self) -> None:
        """Make every rename since the last call durable (fsync of the touched folders).

        A no-op for ``fsync=False`` and for non-local stores. Call it before recording
        anything that refers to blobs written with ``put(..., sync=False)``.
        """
        with self._lock:
            folders, self._unsynced_dirs = self._unsynced_dirs, set()
        if not self._fsync:
            return
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            try:
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise StoreUnavailable(f"cannot fsync the object folder {folder}: {e}") from e

    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing blob is not an error."""
        path = self._path(key)
        try:
            if self._local is not None:
                os.remove(path)
            else:
                self._fs.rm_file(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreUnavailable(f"cannot delete blob {key} from {self._url}: {e}") from e

    # -- reads ---------------------------------------------------------------------------

    def _verify(self, key: str, data: bytes | memoryview) -> None:
        actual = digest(data)
        if actual != key:
            raise CheckpointCorrupt(f"blob {key} is corrupt: its bytes hash to {actual}")

    def _unreadable(self, key: str, error: OSError) -> CheckpointCorrupt:
        if isinstance(error, FileNotFoundError):
            return CheckpointCorrupt(f"blob {key} is missing from {self._url}")
        return CheckpointCorrupt(f"blob {key} cannot be read from {self._url}: {error}")

    def get(self, key: str) -> bytes:
        """The blob's bytes, verified; ``CheckpointCorrupt`` when missing or altered."""
        path = self._path(key)
        try:
            if self._local is not None:
                with open(path, "rb") as handle:
                    data = handle.read()
            else:
                data = bytes(self._fs.cat_file(path))
        except OSError as e:
            raise self._unreadable(key, e) from e
        self._verify(key, data)
        return data

    def map(self, key: str) -> memoryview | None:
        """The blob mapped copy-on-write into memory, verified; ``None`` for remote stores
        and empty blobs.

        No copy is made up front: pages come from the OS page cache as they are touched, and
        writes to the mapping stay private to this process (the file never changes).
        """
        if self._local is None:
            return None
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size == 0:
                    self._verify(key, b"")
                    return None
                mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise self._unreadable(key, e) from e
        view = memoryview(mapped)
        self._verify(key, view)
        return view

    def read_into(self, key: str, buffer: memoryview) -> None:
        """Fill ``buffer`` (exactly the blob's size) with the blob's bytes, verified.

        One copy, from the file into the caller's memory (a tensor's storage, say); reading
        and hashing release the GIL, so several blobs can be read at once from threads.
        """
        if self._local is None:
            data = self.get(key)
            if len(data) != buffer.nbytes:
                raise CheckpointCorrupt(
                    f"blob {key} is corrupt: it has {len(data)} bytes, expected {buffer.nbytes}"
                )
            buffer[:] = data
            return
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as handle:
                read = 0
                while read < buffer.nbytes:
                    got = handle.readinto(buffer[read:])
                    if not got:
                        break
                    read += got
                extra = handle.read(1)
        except OSError as e:
            raise self._unreadable(key, e) from e
        if read != buffer.nbytes or extra:
            raise CheckpointCorrupt(
                f"blob {key} is corrupt: it does not have the expected {buffer.nbytes} bytes"
            )
        self._verify(key, buffer)

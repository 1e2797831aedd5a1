"""A content-addressed blob store: bytes keyed by their sha256, at a folder or any fsspec URL.

Layout: ``<root>/ab/cdef...`` (the first two hex digits fan out into folders). Blobs are
immutable: written once, atomically, and verified on every read. A blob that already exists is
not written again, which is how identical tensors are stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retune.errors import CheckpointCorrupt, StoreUnavailable

try:  # POSIX advisory locks; elsewhere gc relies on its grace period alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["BlobFile", "ObjectStore", "digest"]

_HEX = frozenset("0123456789abcdef")
_META = ".retune"  # the location's own bookkeeping: gc.lock and the ledgers
_LEDGERS = "ledgers"


@dataclass(frozen=True)
class BlobFile:
    """A file in the location: a blob (``key`` set) or an interrupted write's temporary."""

    path: str
    key: str | None
    nbytes: int
    mtime: float


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
    * ``create=False`` opens an existing location only (restores never create folders): a
      missing local folder raises :class:`CheckpointCorrupt`.
    * Garbage collection support (see :mod:`retune.checkpoint._gc`): :meth:`saving` holds a
      shared lock on ``.retune/gc.lock`` while a save runs, :meth:`exclusive` takes it
      exclusively; :meth:`record_refs` / :meth:`ledgers` / :meth:`compact_ledger` keep each
      store's list of the keys its checkpoints refer to.
    """

    def __init__(self, url: str, *, fsync: bool = True, create: bool = True) -> None:
        self._url = url
        self._fsync = fsync
        local = url.removeprefix("file://")
        self._local: Path | None = None
        self._fs: Any = None
        self._root = ""
        if "://" not in local:
            self._local = Path(local).expanduser().resolve()
            if not create and not self._local.is_dir():
                raise CheckpointCorrupt(f"the object folder {local} does not exist")
            try:
                if create:
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
        """Paths of temporary files left by writes that were killed."""
        for entry in self.files():
            if entry.key is None:
                yield entry.path

    def files(self) -> Iterator[BlobFile]:
        """Every blob and interrupted-write temporary with its size and modification time."""
        try:
            if self._local is not None:
                for folder in sorted(self._local.iterdir()):
                    if not (folder.is_dir() and len(folder.name) == 2):
                        continue
                    for item in folder.iterdir():
                        try:
                            info = item.stat()
                        except FileNotFoundError:  # removed meanwhile
                            continue
                        yield self._entry(str(item), folder.name, item.name, info.st_size,
                                          info.st_mtime)  # fmt: skip
                return
            for path, info in self._fs.find(self._root, detail=True).items():
                parts = str(path).rstrip("/").split("/")
                if len(parts) < 2 or len(parts[-2]) != 2:
                    continue
                mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
                stamp = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0)
                yield self._entry(str(path), parts[-2], parts[-1], int(info.get("size") or 0),
                                  stamp)  # fmt: skip
        except OSError as e:
            raise StoreUnavailable(f"cannot list the blobs in {self._url}: {e}") from e

    @staticmethod
    def _entry(path: str, folder: str, name: str, nbytes: int, mtime: float) -> BlobFile:
        key = folder + name
        is_blob = ".tmp-" not in name and len(key) == 64 and _HEX.issuperset(key)
        return BlobFile(path, key if is_blob else None, nbytes, mtime)

    def remove_file(self, path: str) -> None:
        """Remove a file listed by :meth:`files` (missing is not an error)."""
        try:
            if self._local is not None:
                os.remove(path)
            else:
                self._fs.rm_file(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreUnavailable(f"cannot delete {path} from {self._url}: {e}") from e

    # -- the location's bookkeeping: gc lock and ledgers ---------------------------------

    def _meta(self, *parts: str) -> str:
        if self._local is not None:
            return str(self._local.joinpath(_META, *parts))
        return "/".join([self._root.rstrip("/"), _META, *parts])

    @contextlib.contextmanager
    def _flock(self, mode: int, wait_seconds: float | None) -> Iterator[bool]:
        if self._local is None or fcntl is None:
            yield True  # no lock exists here: gc's grace period is the protection
            return
        path = Path(self._meta("gc.lock"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreUnavailable(f"cannot open the lock {path}: {e}") from e
        try:
            if wait_seconds is None:
                fcntl.flock(fd, mode)
                acquired = True
            else:
                deadline = time.monotonic() + wait_seconds
                while True:
                    try:
                        fcntl.flock(fd, mode | fcntl.LOCK_NB)
                        acquired = True
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            acquired = False
                            break
                        time.sleep(0.05)
            yield acquired
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Hold the location's shared save lock (a save, from its first blob to its manifest
        row). Blocks while a garbage collection holds it exclusively."""
        with self._flock(fcntl.LOCK_SH if fcntl else 0, None):
            yield

    @contextlib.contextmanager
    def exclusive(self, wait_seconds: float) -> Iterator[bool]:
        """Try for ``wait_seconds`` to hold the lock exclusively (no save running); yields
        whether it was acquired. Remote locations have no lock and always yield ``True``."""
        with self._flock(fcntl.LOCK_EX if fcntl else 0, wait_seconds) as acquired:
            yield acquired

    @property
    def has_lock(self) -> bool:
        """Whether saves and collections here exclude each other (local POSIX folders)."""
        return self._local is not None and fcntl is not None

    def _write_meta(self, path: str, text: str) -> None:
        if self._local is not None:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
            try:
                with open(temporary, "w", encoding="ascii") as handle:
                    handle.write(text)
                    if self._fsync:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(temporary, target)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            with self._lock:
                self._unsynced_dirs.add(target.parent)
            return
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self._fs.pipe_file(path, text.encode("ascii"))

    def _list_meta(self, path: str) -> list[str]:
        if self._local is not None:
            folder = Path(path)
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if not self._fs.exists(path):
            return []
        return sorted(
            str(p).rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(path, detail=False)
        )

    def _read_meta(self, path: str) -> str:
        if self._local is not None:
            return Path(path).read_text(encoding="ascii", errors="replace")
        return bytes(self._fs.cat_file(path)).decode("ascii", errors="replace")

    def has_ledger(self, store_id: str) -> bool:
        """Whether the store ``store_id`` has recorded its keys here."""
        try:
            return bool(self._list_meta(self._meta(_LEDGERS, store_id)))
        except OSError as e:
            raise StoreUnavailable(f"cannot read the ledgers in {self._url}: {e}") from e

    def record_refs(self, store_id: str, label: str, keys: set[str], *, name: str = "") -> None:
        """Add ``keys`` to the ledger of store ``store_id`` (``label``: a readable name for
        it); durable once :meth:`sync` returns."""
        text = "".join(f"{key}\n" for key in sorted(keys))
        try:
            folder = self._meta(_LEDGERS, store_id)
            self._write_meta(f"{folder}/store", label + "\n")
            self._write_meta(f"{folder}/{name or uuid.uuid4().hex}.keys", text)
        except OSError as e:
            raise StoreUnavailable(f"cannot record blob keys in {self._url}: {e}") from e

    def ledgers(self) -> dict[str, tuple[str, set[str]]]:
        """Every store's ledger here: ``{store id: (label, keys)}``."""
        result: dict[str, tuple[str, set[str]]] = {}
        try:
            root = self._meta(_LEDGERS)
            for store_id in self._list_meta(root):
                folder = f"{root}/{store_id}"
                label, keys = store_id, set()
                for name in self._list_meta(folder):
                    if name == "store":
                        label = self._read_meta(f"{folder}/store").strip() or store_id
                    elif name.endswith(".keys"):
                        keys.update(self._read_meta(f"{folder}/{name}").split())
                result[store_id] = (label, keys)
        except OSError as e:
            raise StoreUnavailable(f"cannot read the ledgers in {self._url}: {e}") from e
        return result

    def compact_ledger(self, store_id: str, label: str, keys: set[str]) -> None:
        """Replace the ledger of ``store_id`` by exactly ``keys`` (hold :meth:`exclusive`)."""
        try:
            folder = self._meta(_LEDGERS, store_id)
            old = [n for n in self._list_meta(folder) if n.endswith(".keys")]
            self.record_refs(store_id, label, keys, name=f"compact-{uuid.uuid4().hex}")
            self.sync()
            for name in old:
                path = f"{folder}/{name}"
                if self._local is not None:
                    Path(path).unlink(missing_ok=True)
                else:
                    self._fs.rm_file(path)
        except OSError as e:
            raise StoreUnavailable(f"cannot compact the ledger in {self._url}: {e}") from e

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

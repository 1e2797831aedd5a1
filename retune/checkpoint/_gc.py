"""Garbage collection of checkpoint blobs: delete what no checkpoint needs, and nothing else.

Safety rules (each has a test in ``tests/checkpoint/test_gc.py``):

* **Only this store's location.** The sweep looks at one object location, the one passed in
  (the store's own, by default ``objects/`` beside a SQLite file). Locations recorded in
  manifests are never swept.
* **Never another store's blob.** Several stores may share one object location. Every save
  records the keys its checkpoint refers to in a *ledger* inside the location
  (``.retune/ledgers/<store id>/``) before its manifest row is written. A blob listed in any
  other store's ledger is kept; this store's own ledger is compacted to what its manifests
  refer to at each collection. The first time a store saves into a location it enters every
  key its existing manifests refer to, so checkpoints written by older versions are covered
  once the store has saved (or been collected) with this version.
* **Never a live save.** Saves hold a shared lock on ``.retune/gc.lock`` in the location from
  their first blob until their manifest row is committed; a collection takes the lock
  exclusively, so it sees every save either finished (its manifest is read) or not started.
  A lock held by a killed process is released by the OS. When saves keep the lock for longer
  than ``wait_seconds``, nothing is deleted and :attr:`GcReport.busy` says so.
* **A grace period.** Blobs and temporary files younger than ``grace_seconds`` (default one
  hour) are never deleted, whatever the ledgers say, which also covers writers that do not
  take the lock (other fsspec filesystems, where no lock exists: there the grace period is the
  only protection against a concurrent save, so run ``retune gc`` when no training writes).
* **Interrupted writes.** ``*.tmp-*`` files left by killed saves are counted, and removed when
  older than the grace period or when the lock proves no save is running.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retune.checkpoint._codec import manifest_hashes
from retune.checkpoint._objects import ObjectStore
from retune.errors import CheckpointCorrupt, InvalidArgument, redact

if TYPE_CHECKING:
    from retune.store import Store

__all__ = ["DEFAULT_GRACE_SECONDS", "GcReport", "collect_garbage", "store_identity"]

DEFAULT_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class GcReport:
    """What one collection found and did (or, with ``dry_run``, would do).

    ``deleted`` / ``freed_bytes``: unreferenced blobs removed. ``kept``: blobs kept because a
    manifest of this store refers to them. ``young``: unreferenced blobs kept because they are
    younger than the grace period. ``other_stores``: unreferenced-here blobs kept because
    another store's ledger lists them; ``stores`` labels those stores. ``temporaries`` /
    ``temporaries_bytes``: interrupted-write files removed; ``temporaries_kept``: ones kept
    (young, and a save may be running). ``busy``: a save held the lock for the whole wait, so
    nothing was deleted.
    """

    location: str
    dry_run: bool
    deleted: int = 0
    freed_bytes: int = 0
    kept: int = 0
    young: int = 0
    other_stores: int = 0
    temporaries: int = 0
    temporaries_bytes: int = 0
    temporaries_kept: int = 0
    busy: bool = False
    stores: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (``retune gc --json``)."""
        data = asdict(self)
        data["stores"] = list(self.stores)
        return data


def collect_garbage(
    store: Store,
    objects: ObjectStore | str,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    wait_seconds: float = 10.0,
) -> GcReport:
    """Delete the blobs of ``objects`` (this store's own location, an ObjectStore or its URL)
    that no checkpoint of any run of ``store`` refers to, no other store sharing the location
    has recorded, and that are older than ``grace_seconds``; remove interrupted-write
    temporaries the same way. With ``dry_run`` nothing is removed and the report says what
    would be.

    Raises :class:`InvalidArgument` for a negative ``grace_seconds`` / ``wait_seconds`` and
    :class:`StoreUnavailable` when the location cannot be listed or written. Never raises for
    a busy location: the report's ``busy`` is set instead.
    """
    for name, value in (("grace_seconds", grace_seconds), ("wait_seconds", wait_seconds)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(objects, str):
        url = objects
        try:
            objects = ObjectStore(url, create=False)  # gc never creates a location
        except CheckpointCorrupt:  # no such folder: nothing to collect
            return GcReport(location=url, dry_run=dry_run)
    location = objects.url
    store_id, label = store_identity(store.url)
    with objects.exclusive(wait_seconds) as no_save_running:
        if not no_save_running:
            return GcReport(location=location, dry_run=dry_run, busy=True)
        used: set[str] = set()
        for manifest in store.all_manifests():  # read under the lock: every finished save
            used |= manifest_hashes(manifest)
        ledgers = objects.ledgers()
        others = {sid: entry for sid, entry in ledgers.items() if sid != store_id}
        protected: set[str] = set().union(*(keys for _, keys in others.values()))
        now = time.time()
        young_before = now - grace_seconds
        counts = dict.fromkeys(
            ("deleted", "freed_bytes", "kept", "young", "other_stores", "temporaries",
             "temporaries_bytes", "temporaries_kept"), 0
        )  # fmt: skip
        present: set[str] = set()
        doomed = []
        for entry in objects.files():
            if entry.key is None:  # an interrupted write
                if entry.mtime < young_before or objects.has_lock:
                    counts["temporaries"] += 1
                    counts["temporaries_bytes"] += entry.nbytes
                    doomed.append(entry.path)
                else:
                    counts["temporaries_kept"] += 1
                continue
            present.add(entry.key)
            if entry.key in used:
                counts["kept"] += 1
            elif entry.key in protected:
                counts["other_stores"] += 1
            elif entry.mtime >= young_before:
                counts["young"] += 1
            else:
                counts["deleted"] += 1
                counts["freed_bytes"] += entry.nbytes
                doomed.append(entry.path)
        if not dry_run:
            objects.compact_ledger(store_id, label, used & present)
            for path in doomed:
                objects.remove_file(path)
    return GcReport(
        location=location,
        dry_run=dry_run,
        stores=tuple(sorted(label for label, _ in others.values())),
        deleted=counts["deleted"],
        freed_bytes=counts["freed_bytes"],
        kept=counts["kept"],
        young=counts["young"],
        other_stores=counts["other_stores"],
        temporaries=counts["temporaries"],
        temporaries_bytes=counts["temporaries_bytes"],
        temporaries_kept=counts["temporaries_kept"],
    )


def store_identity(url: str) -> tuple[str, str]:
    """``(id, label)`` naming a store in the ledgers of an object location: the label is the
    store's URL with any password removed (a SQLite path made absolute), the id a hash of it."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        label = "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).expanduser().resolve())
    else:
        label = redact(url)  # ledgers live beside blobs: never a password there
    return hashlib.sha256(label.encode()).hexdigest()[:16], label

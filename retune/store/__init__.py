"""The store: one storage interface (:class:`Store`) and its backends.

``open_store(url)`` picks the backend from the URL: ``sqlite:///path`` (the default is
``./.retune/retune.db``) or ``postgresql://...``. A plain path means a SQLite file.
Reading surfaces open with ``open_store(url, create=False)`` so that a mistyped path never
creates a store. ``redact(text)`` (from :mod:`retune.errors`) hides a URL's password.
"""

from __future__ import annotations

from retune.errors import StoreUnavailable, redact
from retune.store._base import Store
from retune.store._liveness import (
    INTERRUPTED_WHILE_APPLYING,
    STALE_AFTER,
    current_user,
    in_use_message,
    is_live,
    is_stale,
    process_identity,
)
from retune.store._records import (
    LIVE_STATUSES,
    RUN_STATUSES,
    CheckpointRecord,
    CommandRecord,
    EventRecord,
    MetricChunk,
    MetricSeries,
    NodeRecord,
    RunRecord,
)
from retune.store._url import DEFAULT_STORE, is_known_scheme, objects_url_for, resolve_store_url

__all__ = [
    "DEFAULT_STORE",
    "INTERRUPTED_WHILE_APPLYING",
    "STALE_AFTER",
    "LIVE_STATUSES",
    "RUN_STATUSES",
    "CheckpointRecord",
    "CommandRecord",
    "EventRecord",
    "MetricChunk",
    "MetricSeries",
    "NodeRecord",
    "RunRecord",
    "Store",
    "current_user",
    "in_use_message",
    "is_live",
    "is_stale",
    "objects_url_for",
    "open_store",
    "process_identity",
    "redact",
    "resolve_store_url",
    "upgrade_store",
]


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """Open the store at ``url`` (else ``$RETUNE_STORE``, else the default).

    Args:
        url: a path, ``sqlite:///PATH`` or ``postgresql[+driver]://...``.
        create: when true (training, writing commands) a missing store is created, folders
            included. Reading surfaces pass ``create=False``: nothing is created, not even an
            empty file, and a missing store raises ``StoreNotFound``.

    A SQLite store whose file or folder is not writable (a read-only mount) opens read-only:
    reads work, writes raise ``StoreUnavailable`` saying so (``store.read_only`` tells).
    PostgreSQL connections give up after ``connect_timeout`` (5 s unless the URL sets one).

    Raises:
        StoreNotFound: ``create=False`` and there is no store at ``url``.
        StoreUnavailable: a bad URL, an unreachable server or an unreadable database.
        SchemaMismatch: the schema is older or newer than this Retune's.

    Error messages never contain the URL's password.
    """
    resolved = resolve_store_url(url)
    if not is_known_scheme(resolved):
        raise StoreUnavailable(
            f"unsupported store URL {resolved!r}: use a path, sqlite:///PATH or postgresql://..."
        )
    from retune.store._sql import SqlStore

    return SqlStore(resolved, create=create)


def upgrade_store(url: str | None = None) -> tuple[str | None, str]:
    """Migrate the store's schema to this Retune's version; returns ``(before, after)``."""
    resolved = resolve_store_url(url)
    if not is_known_scheme(resolved):
        raise StoreUnavailable(f"unsupported store URL {resolved!r}")
    from retune.store._sql import SqlStore

    store = SqlStore(resolved, upgrade=True)
    try:
        return store.revision_at_open, store.revision
    finally:
        store.close()

"""The store: one storage interface (:class:`Store`) and its backends.

``open_store(url)`` picks the backend from the URL: ``sqlite:///path`` (the default is
``./.retune/retune.db``) or ``postgresql://...``. A plain path means a SQLite file.
"""

from __future__ import annotations

from retune.errors import StoreUnavailable
from retune.store._base import Store
from retune.store._records import (
    LIVE_STATUSES,
    RUN_STATUSES,
    CheckpointRecord,
    CommandRecord,
    EventRecord,
    MetricChunk,
    MetricSeriesData,
    NodeRecord,
    RunRecord,
)
from retune.store._url import DEFAULT_STORE, is_known_scheme, objects_url_for, resolve_store_url

__all__ = [
    "DEFAULT_STORE",
    "LIVE_STATUSES",
    "RUN_STATUSES",
    "CheckpointRecord",
    "CommandRecord",
    "EventRecord",
    "MetricChunk",
    "MetricSeriesData",
    "NodeRecord",
    "RunRecord",
    "Store",
    "objects_url_for",
    "open_store",
    "resolve_store_url",
    "upgrade_store",
]


def open_store(url: str | None = None) -> Store:
    """Open the store at ``url`` (else ``$RETUNE_STORE``, else the default), creating a new one.

    Raises ``StoreUnavailable`` for a bad URL or an unreadable database and ``SchemaMismatch``
    when the schema is older or newer than this Retune's.
    """
    resolved = resolve_store_url(url)
    if not is_known_scheme(resolved):
        raise StoreUnavailable(
            f"unsupported store URL {resolved!r}: use a path, sqlite:///PATH or postgresql://..."
        )
    from retune.store._sql import SqlStore

    return SqlStore(resolved)


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

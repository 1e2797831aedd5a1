"""One reading connection per store for the notebook's views (jobs, charts).

Views redraw from background threads and outlive the run they show (``finish()`` closes a
store the run opened), so they read through their own store, opened once per URL and kept
for the life of the kernel. The store's contract makes it safe to share between threads.
"""

from __future__ import annotations

import threading

from retune.store import Store, open_store

__all__ = ["reader"]

_stores: dict[str, Store] = {}
_lock = threading.Lock()


def reader(url: str) -> Store:
    """The shared reading store for ``url`` (opened without creating anything)."""
    with _lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = open_store(url, create=False)
        return store

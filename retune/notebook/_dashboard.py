"""``run.dashboard()``: the dashboard page of a run, inline.

One dashboard server per store per kernel, started on first use on a daemon thread (the
first free port from ``port`` on) and kept for the life of the kernel, so the page stays
usable after the run ends. The page is shown in an ``IFrame``; it talks to the server at
``127.0.0.1``, which is where the browser showing the notebook must run (a local Jupyter).
"""

from __future__ import annotations

import threading
from typing import Any

from retune.errors import InvalidArgument, RetuneError

__all__ = ["dashboard", "dashboard_url"]

_servers: dict[str, str] = {}  # store URL -> base URL of its server
_lock = threading.Lock()
TRIES = 20


def dashboard_url(store_url: str, port: int = 8765) -> str:
    """The base URL of this kernel's dashboard server for ``store_url`` (started if needed)."""
    from retune.server import serve_in_thread
    from retune.store import open_store

    with _lock:
        if store_url in _servers:
            return _servers[store_url]
        for candidate in range(port, port + TRIES):
            store = open_store(store_url, create=False)
            try:
                _server, url = serve_in_thread(store, port=candidate)
            except RetuneError:
                store.close()
                continue
            _servers[store_url] = url
            return url
    raise InvalidArgument(
        f"the dashboard could not be served: ports {port}-{port + TRIES - 1} are in use"
    )


def dashboard(run: Any, port: int = 8765, *, height: int = 720) -> Any:
    """An ``IPython.display.IFrame`` showing ``run``'s dashboard page (``run`` a live
    ``Run``); raises ``InvalidArgument`` when no port is free."""
    from urllib.parse import quote

    from IPython.display import IFrame

    base = dashboard_url(run.store.url, port)
    return IFrame(f"{base}runs/{quote(run.id)}", width="100%", height=height)

"""The dashboard: ``retune ui`` or ``retune.init(..., ui=True)``.

:func:`create_app` builds the app over a store (tested in-process); :func:`serve` runs it with
uvicorn; :func:`check_bind` enforces the binding rules (loopback, or a token).
"""

from __future__ import annotations

from typing import Any

from retune.server._serve import check_bind, serve, serve_in_thread
from retune.store import Store

__all__ = ["check_bind", "create_app", "serve", "serve_in_thread"]


def create_app(
    store: Store,
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: set[str] | None = None,
) -> Any:
    """The dashboard app (FastAPI) over ``store``; FastAPI is imported only when called."""
    from retune.server._app import create_app as build

    return build(store, read_only=read_only, token=token, allowed_hosts=allowed_hosts)

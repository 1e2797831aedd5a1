"""Where the store is: ``store=`` argument, else ``$RETUNE_STORE``, else ``./.retune/retune.db``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_STORE", "objects_url_for", "resolve_store_url"]

DEFAULT_STORE = "./.retune/retune.db"
_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://")


def resolve_store_url(url: str | None = None) -> str:
    """The SQLAlchemy URL of the store. A plain path means a SQLite file at that path."""
    raw = url or os.environ.get("RETUNE_STORE") or DEFAULT_STORE
    if "://" in raw:
        return raw
    return f"sqlite:///{Path(raw).expanduser().resolve()}"


def objects_url_for(store_url: str) -> str:
    """Default blob location: ``objects/`` beside a SQLite file, else ``./.retune/objects``.

    ``$RETUNE_OBJECTS`` overrides it (any fsspec URL).
    """
    env = os.environ.get("RETUNE_OBJECTS")
    if env:
        return env
    prefix = "sqlite:///"
    if store_url.startswith(prefix) and store_url != "sqlite:///:memory:":
        return str(Path(store_url[len(prefix) :]).parent / "objects")
    return str(Path(DEFAULT_STORE).parent.resolve() / "objects")


def is_known_scheme(url: str) -> bool:
    return url.startswith(_SCHEMES)

"""Running the dashboard: the binding rules and uvicorn, in the foreground or on a thread."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from retune.errors import InvalidArgument
from retune.server._security import is_loopback
from retune.store import Store

__all__ = ["check_bind", "serve", "serve_in_thread"]


def check_bind(host: str, token: str | None) -> str | None:
    """The token to use for ``host``: loopback needs none; any other host needs one.

    ``token="auto"`` generates one (printed with the URL, as Jupyter does). A non-loopback host
    without a token is refused: it would let anyone on the network drive your runs.
    """
    if token == "auto":
        return secrets.token_urlsafe(24)
    if token:
        return token
    if is_loopback(host):
        return None
    raise InvalidArgument(
        f"refusing to serve on {host} without a token: anyone who can reach it could change "
        "your runs; add --token VALUE (or --token auto), or bind 127.0.0.1"
    )


def _url(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _server(store: Store, host: str, port: int, token: str | None, read_only: bool) -> Any:
    try:
        import uvicorn
    except ImportError as e:
        raise InvalidArgument("the dashboard needs its extra: pip install 'retune[ui]'") from e
    from retune.server._app import create_app

    app = create_app(store, read_only=read_only, token=token, allowed_hosts={host})
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    return uvicorn.Server(config)


def serve(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    read_only: bool = False,
) -> None:
    """Serve until Ctrl-C; prints the URL (with the token when there is one)."""
    token = check_bind(host, token)
    server = _server(store, host, port, token, read_only)
    print(f"retune: dashboard at {_url(host, port, token)}", flush=True)
    server.run()


def serve_in_thread(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    read_only: bool = False,
) -> tuple[Any, str]:
    """Start serving on a daemon thread; returns (server, url) once it accepts connections."""
    token = check_bind(host, token)
    server = _server(store, host, port, token, read_only)
    thread = threading.Thread(target=server.run, name="retune-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise InvalidArgument(f"the dashboard could not start on {host}:{port} (port in use?)")
    return server, _url(host, port, token)

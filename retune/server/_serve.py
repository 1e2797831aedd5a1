"""Running the dashboard: the binding rules and uvicorn, in the foreground or on a thread."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

from retune.errors import InvalidArgument
from retune.server._security import host_names, is_loopback
from retune.store import Store

__all__ = ["check_bind", "serve", "serve_in_thread"]


def check_bind(host: str, token: str | None, allowed_hosts: Iterable[str] = ()) -> str | None:
    """The token to use for ``host``: loopback needs none; any other host needs one.

    ``token="auto"`` generates one (printed with the URL, as Jupyter does). A non-loopback host
    without a token is refused: it would let anyone on the network drive your runs. A token is
    printable ASCII without blanks (it travels in headers, URLs and cookies).

    ``allowed_hosts`` are the extra names clients use to reach the server (``--allowed-host
    box.lan``); they need a token too, and must be bare host names or addresses. Raises
    :class:`InvalidArgument` for each of these refusals.
    """
    names = host_names(allowed_hosts)  # validates them
    if token == "auto":
        return secrets.token_urlsafe(24)
    if token:
        if not all(33 <= ord(c) <= 126 for c in token):
            raise InvalidArgument("a token must be printable ASCII without blanks")
        return token
    if names - {n for n in names if is_loopback(n)}:
        raise InvalidArgument(
            "--allowed-host needs a token: other machines could reach the dashboard under "
            "those names; add --token VALUE (or --token auto)"
        )
    if is_loopback(host):
        return None
    raise InvalidArgument(
        f"refusing to serve on {host} without a token: anyone who can reach it could change "
        "your runs; add --token VALUE (or --token auto), or bind 127.0.0.1"
    )


def _url(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _server(
    store: Store,
    host: str,
    port: int,
    token: str | None,
    *,
    read_only: bool,
    allowed_hosts: Iterable[str] = (),
    own_process: bool,
) -> Any:
    """A uvicorn server for the app. Only a process of its own (``retune ui``) lets uvicorn
    configure logging: its ``dictConfig`` closes every handler the process has, so inside a
    training script or a notebook it would close the user's handlers (and abseil's, which
    then closes the stream it writes to). There uvicorn's loggers only get their level and
    reach the user's handlers through the root logger."""
    try:
        import uvicorn
    except ImportError as e:
        raise InvalidArgument("the dashboard needs its extra: pip install 'retune[ui]'") from e
    from retune.server._app import create_app

    app = create_app(store, read_only=read_only, token=token, allowed_hosts={host, *allowed_hosts})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        log_config=uvicorn.config.LOGGING_CONFIG if own_process else None,
    )
    return uvicorn.Server(config)


def serve(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    read_only: bool = False,
    allowed_hosts: Iterable[str] = (),
) -> None:
    """Serve until Ctrl-C; prints the URL (with the token when there is one).

    The server answers for loopback names, ``host`` itself and ``allowed_hosts`` (the names
    other machines reach it under, ``retune ui --allowed-host NAME``; they need a token).
    """
    allowed_hosts = tuple(allowed_hosts)
    token = check_bind(host, token, allowed_hosts)
    server = _server(
        store, host, port, token, read_only=read_only, allowed_hosts=allowed_hosts,
        own_process=True,
    )  # fmt: skip
    print(f"retune: dashboard at {_url(host, port, token)}", flush=True)
    server.run()


def serve_in_thread(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    read_only: bool = False,
    allowed_hosts: Iterable[str] = (),
) -> tuple[Any, str]:
    """Start serving on a daemon thread; returns (server, url) once it accepts connections."""
    allowed_hosts = tuple(allowed_hosts)
    token = check_bind(host, token, allowed_hosts)
    server = _server(
        store, host, port, token, read_only=read_only, allowed_hosts=allowed_hosts,
        own_process=False,
    )  # fmt: skip
    thread = threading.Thread(target=server.run, name="retune-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise InvalidArgument(f"the dashboard could not start on {host}:{port} (port in use?)")
    return server, _url(host, port, token)

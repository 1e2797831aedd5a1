"""Who may talk to the dashboard: loopback by default, a token otherwise, same-origin writes.

* ``Host`` must name this server (loopback names, or the bound host): a page on another domain
  that resolves to 127.0.0.1 (DNS rebinding) is refused.
* Requests that change anything must be ``application/json`` and, when the browser sends an
  ``Origin``, come from this server's own origin: another web page cannot drive a run.
* With a token, every request must carry it: ``Authorization: Bearer T``, ``?token=T`` (which
  sets a cookie so the page's own requests carry it), or that cookie.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["LOOPBACK_NAMES", "SecurityPolicy", "is_loopback"]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
COOKIE = "retune_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _refuse(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]")[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class SecurityPolicy:
    """The checks above, as a Starlette middleware callable."""

    def __init__(self, *, token: str | None, allowed_hosts: set[str]) -> None:
        self.token = token
        self.allowed_hosts = {h.lower() for h in allowed_hosts} | set(LOOPBACK_NAMES)

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        host = _hostname(request.headers.get("host", ""))
        if host not in self.allowed_hosts:
            return _refuse(421, "bad_host", f"this server does not answer for host {host!r}")
        set_cookie = False
        if self.token is not None:
            given = self._token_of(request)
            if given is None or not hmac.compare_digest(given, self.token):
                return _refuse(401, "unauthorized", "a valid token is required (?token=...)")
            set_cookie = request.query_params.get("token") is not None
        if request.method not in _SAFE_METHODS:
            origin = request.headers.get("origin")
            own = request.headers.get("host", "").lower()
            if origin is not None and urlsplit(origin).netloc.lower() != own:
                return _refuse(403, "forbidden_origin", f"requests from {origin} are refused")
            content_type = request.headers.get("content-type", "")
            if not content_type.startswith("application/json"):
                return _refuse(415, "unsupported_media_type", "send JSON (application/json)")
        response = await call_next(request)
        if set_cookie and self.token is not None:
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response

    def _token_of(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.query_params.get("token") or request.cookies.get(COOKIE)

"""Who may talk to the dashboard: loopback by default, a token otherwise, same-origin writes.

* ``Host`` must name this server: a loopback name, the bound host, or a name given with
  ``--allowed-host`` (which needs a token). A page on another domain that resolves to 127.0.0.1
  (DNS rebinding) is refused with 421.
* Requests that change anything must be ``application/json`` and come from this server's own
  page: when the browser sends Fetch Metadata (``Sec-Fetch-Site``), only ``same-origin`` (or
  ``none``, typed by the user) is accepted; when it sends an ``Origin``, it must be this server's
  own. A client that is not a browser (curl, scripts) sends neither and is accepted. Reads are
  not restricted this way: browsers keep their answers from other sites' pages.
* With a token, every request must carry it: ``Authorization: Bearer T`` (which then decides
  alone), or ``?token=T`` (which sets a cookie so the page's own requests carry it), or that
  cookie. Tokens are compared as bytes in constant time; any octets a client sends (non-ASCII
  too) are simply a wrong token, 401.

Every refusal is a JSON ``{"error": code, "message": ...}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from retune.errors import InvalidArgument

__all__ = ["LOOPBACK_NAMES", "SecurityPolicy", "host_names", "is_loopback"]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
COOKIE = "retune_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BROWSER_SITES_ALLOWED = frozenset({"same-origin", "none"})
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def host_names(names: Iterable[str]) -> set[str]:
    """``names`` as the ``Host`` header writes them (lower case, IPv6 in brackets).

    Raises :class:`InvalidArgument` for anything that is not a bare host name or IP address
    (a URL, a port, a wildcard): ``box.lan``, ``10.0.0.5`` and ``fe80::1`` are fine.
    """
    out = set()
    for name in names:
        bare = name.strip().lower().strip("[]")
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            if not bare.isascii() or not _HOST_NAME.fullmatch(bare):
                raise InvalidArgument(
                    f"{name!r} is not a host name (give a bare name or address, e.g. box.lan)"
                ) from None
            out.add(bare)
            continue
        out.add(f"[{address}]" if address.version == 6 else str(address))
    return out


def _refuse(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]")[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _octets(text: str, *, from_header: bool) -> bytes:
    """The bytes a client sent: Starlette decodes headers as latin-1, the query as UTF-8."""
    if from_header:
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            pass
    return text.encode("utf-8", "surrogatepass")


class SecurityPolicy:
    """The checks above, as a Starlette middleware callable."""

    def __init__(self, *, token: str | None, allowed_hosts: set[str]) -> None:
        self.token = token
        self._token = token.encode("utf-8") if token is not None else None
        self.allowed_hosts = host_names(allowed_hosts) | set(LOOPBACK_NAMES)

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        host = _hostname(request.headers.get("host", ""))
        if host not in self.allowed_hosts:
            return _refuse(421, "bad_host", f"this server does not answer for host {host!r}")
        set_cookie = False
        if self._token is not None:
            given = self._token_of(request)
            if given is None or not hmac.compare_digest(given, self._token):
                return _refuse(401, "unauthorized", "a valid token is required (?token=...)")
            set_cookie = request.query_params.get("token") is not None
        if request.method not in _SAFE_METHODS:
            refused = self._cross_site(request)
            if refused is not None:
                return refused
            content_type = request.headers.get("content-type", "")
            if not content_type.startswith("application/json"):
                return _refuse(415, "unsupported_media_type", "send JSON (application/json)")
        response = await call_next(request)
        if set_cookie and self.token is not None:
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response

    @staticmethod
    def _cross_site(request: Request) -> Response | None:
        site = request.headers.get("sec-fetch-site")
        if site is not None and site.strip().lower() not in _BROWSER_SITES_ALLOWED:
            message = f"requests from another site are refused (Sec-Fetch-Site: {site})"
            return _refuse(403, "forbidden_origin", message)
        origin = request.headers.get("origin")
        own = request.headers.get("host", "").strip().lower()
        # an Origin is scheme://host[:port]; compared as text, so a malformed one is refused
        if origin is not None and origin.strip().lower().partition("://")[2] != own:
            return _refuse(403, "forbidden_origin", f"requests from {origin} are refused")
        return None

    def _token_of(self, request: Request) -> bytes | None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            return _octets(value.strip(), from_header=True) if scheme.lower() == "bearer" else None
        query = request.query_params.get("token")
        if query is not None:
            return _octets(query, from_header=False)
        cookie = request.cookies.get(COOKIE)
        return _octets(cookie, from_header=True) if cookie is not None else None

"""The dashboard's HTTP app: a JSON API over the store, live updates, and the pages.

``create_app(store)`` builds it; it talks only to the store, so it can be restarted while runs
train, and shows any number of runs. Errors are ``{"error": code, "message": ...}`` with the
status from :mod:`retune.errors` (one mapping, in :func:`_retune_error`).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import mimetypes
import re
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from retune import _json
from retune.control import current_user, submit
from retune.control._explore import describe_exploration, list_explorations
from retune.errors import InvalidArgument, NodeNotFound, RetuneError, redact
from retune.server._security import SecurityPolicy
from retune.session._snapshot import MetricSeries, read_snapshot
from retune.store import LIVE_STATUSES, RunRecord, Store, is_stale

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
# plotly.js's basic bundle (scatter, bar, pie: 1.2 MB), served as /static/plotly.min.js: the
# dashboard draws line charts only; where it comes from: vendor/README.md
PLOTLY = Path(__file__).parent / "vendor" / "plotly-basic.min.js"
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1  # command ids are 32-bit on PostgreSQL
_NODE = re.compile(r"n?([0-9]{1,18})", re.ASCII)
_HTTP_CODES = {400: "invalid_argument", 404: "not_found", 405: "method_not_allowed"}
_log = logging.getLogger("retune.server")
Step = Annotated[int | None, Query(ge=-INT64_MAX, le=INT64_MAX)]


class TagsIn(BaseModel):
    """New tags for a run: ``{"tags": [...]}`` replaces them; ``add`` / ``remove`` edit them."""

    tags: list[str] | None = None
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class NoteIn(BaseModel):
    """A run's new note (``""`` clears it)."""

    note: str


class CommandIn(BaseModel):
    """A command from the dashboard: ``{"kind": "set", "payload": {"values": {"lr": 1e-3}}}``."""

    kind: str = Field(examples=["set"])
    payload: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class _Asset:
    """A static file held in memory: its bytes, gzipped once, and the stat they were read at."""

    stamp: tuple[int, int]  # (mtime_ns, size): a file edited in place is read again
    raw: bytes
    gzipped: bytes | None  # None where gzip would not make it smaller


_ASSETS: dict[Path, _Asset] = {}
_ASSET_LOCKS: dict[Path, threading.Lock] = {}


def _asset(path: Path) -> _Asset:
    """``path``'s bytes, and its gzip (level 6), read and compressed once per version of the
    file (mtime and size) and then served from memory. Blocks: call it off the event loop."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _ASSET_LOCKS.setdefault(path, threading.Lock()):  # concurrent first reads: one gzip
        asset = _ASSETS.get(path)
        if asset is None or asset.stamp != stamp:
            raw = path.read_bytes()
            packed = gzip.compress(raw, compresslevel=6, mtime=0)
            asset = _Asset(stamp, raw, packed if len(packed) < len(raw) else None)
            _ASSETS[path] = asset
        return asset


def _prime_assets() -> None:
    """Read and gzip what a page asks for next (its modules, stylesheet, then plotly.min.js)
    ahead of the requests, so the first page a fresh server shows does not wait for them."""
    for path in [*sorted(STATIC.glob("*.js")), *sorted(STATIC.glob("*.css")), PLOTLY]:
        _asset(path)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (named, and not with ``q=0``)."""
    for part in accept_encoding.split(","):
        name, _, params = part.partition(";")
        if name.strip().lower() not in {"gzip", "x-gzip"}:
            continue
        weight = params.strip().lower()
        if weight.startswith("q="):
            try:
                return float(weight[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def _json_response(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(_json.jsonable(data), status_code=status)


def _live_status(run: RunRecord, now: float) -> str:
    return "stale" if run.heartbeat_at is not None and is_stale(run, now) else run.status


def _hparams(tunables: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's current hyperparameters, flat: ``{"lr": 0.1}``, or one entry per param group
    (``lr[body]``, ``lr[1]``) when the groups differ."""
    out: dict[str, Any] = {}
    for entry in tunables:
        name, value, groups = entry.get("name"), entry.get("value"), entry.get("groups")
        if not isinstance(name, str):
            continue
        if groups and isinstance(value, list) and len(value) == len(groups):
            if all(v == value[0] for v in value):
                out[name] = value[0]
            else:
                for index, (group, item) in enumerate(zip(groups, value, strict=True)):
                    out[f"{name}[{group if group else index}]"] = item
        else:
            out[name] = value
    return out


def _run_summary(run: RunRecord, last: dict[str, tuple[int, float]], now: float) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.name,
        "status": _live_status(run, now),
        "stored_status": run.status,
        "step": run.step,
        "created_at": run.created_at,
        "duration": run.duration,
        "heartbeat_at": run.heartbeat_at,
        "last_metrics": {k: v for k, (_, v) in last.items()},
        "hparams": _hparams(run.tunables),
        "tags": list(run.tags),
        "note": run.note,
    }


def _series(series: MetricSeries) -> dict[str, Any]:
    return {
        "steps": series.steps.tolist(),
        "values": [None if math.isnan(v) else v for v in series.values.tolist()],  # NaN: null
        "nonfinite": series.nonfinite.nonzero()[0].tolist(),
        "nodes": series.nodes.tolist(),
        "times": series.times.tolist(),
    }


def _redacted(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (keys too)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {_redacted(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def _node(ref: str) -> int:
    """A node reference from a URL (``n3`` or ``3``, ASCII digits only) -> 3."""
    match = _NODE.fullmatch(ref.strip())
    if match is None:
        raise NodeNotFound(f"{ref!r} is not a node (nodes are written n1, n2, ...)")
    return int(match.group(1))


def _check_payload(value: Any, where: str = "payload", depth: int = 0) -> None:
    """Refuse what no command can mean before it reaches validation: integers beyond 64 bits
    (``10**400`` parses as JSON), a ``group`` written with non-ASCII digits (``"²"``), and NUL
    characters (PostgreSQL cannot store them).
    """
    if depth > 32:
        raise InvalidArgument(f"{where} is nested too deeply")
    if isinstance(value, bool):
        return
    if isinstance(value, str) and "\x00" in value:
        raise InvalidArgument(f"{where}: NUL characters are not allowed")
    if isinstance(value, int) and not -INT64_MAX <= value <= INT64_MAX:
        raise InvalidArgument(f"{where}: integers must fit in 64 bits")
    if isinstance(value, Mapping):
        group = value.get("group") if depth == 0 else None
        if isinstance(group, str) and group.isdigit() and not group.isascii():
            raise InvalidArgument(f"group must be an index (ASCII digits) or a name, got {group!r}")
        for key, item in value.items():
            _check_payload(key, f"{where} (a name)", depth + 1)
            _check_payload(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_payload(item, f"{where}[{index}]", depth + 1)


async def _contain(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Anything that escapes the handlers is a bug: answer a JSON 500 that holds no details
    (they may hold paths or secrets), log the traceback redacted, and keep the connection."""
    if "\x00" in request.scope["path"] or any(
        "\x00" in k or "\x00" in v for k, v in request.query_params.multi_items()
    ):  # PostgreSQL refuses NUL in text: refuse it here, the same on every backend
        message = "NUL characters are not allowed in a URL"
        return JSONResponse({"error": "invalid_argument", "message": message}, status_code=400)
    try:
        return await call_next(request)
    except Exception as error:  # the one place every unexpected error ends
        trace = "".join(traceback.format_exception(error))
        _log.error("%s %s failed:\n%s", request.method, request.url.path, redact(trace))
        return JSONResponse({"error": "internal_error", "message": "internal error (a bug in "
                             "Retune; the server log has details)"}, status_code=500)  # fmt: skip


def create_app(
    store: Store,
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: set[str] | None = None,
) -> FastAPI:
    """The dashboard app over ``store``. ``read_only`` refuses every command."""
    app = FastAPI(
        title="Retune", version="0.1.0", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    policy = SecurityPolicy(token=token, allowed_hosts=allowed_hosts or set())
    app.middleware("http")(policy)
    app.middleware("http")(_contain)  # added last: the outermost layer

    @app.exception_handler(RetuneError)
    async def _retune_error(_request: Request, error: RetuneError) -> JSONResponse:
        return JSONResponse(error.to_dict(), status_code=error.http_status)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, error: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, f"http_{error.status_code}")
        return JSONResponse({"error": code, "message": str(error.detail)},
                            status_code=error.status_code, headers=error.headers)  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []))
        message = f"{where}: {first.get('msg', 'invalid request')}"
        return JSONResponse({"error": "invalid_argument", "message": message}, status_code=400)

    async def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def best_metrics(records: list[RunRecord], keys: list[str]) -> dict[str, dict[str, Any]]:
        from retune.session._tree import summarize

        return {
            r.id: {key: summarize(store.read_metric(r.id, key).values, key)["best"] for key in keys}
            for r in records
        }

    @app.get("/api/runs", summary="Runs, newest first")
    async def runs(
        name: str | None = None,
        status: str | None = None,
        best: Annotated[
            list[str] | None, Query(description="metrics whose best value to add: best=val/loss")
        ] = None,
    ) -> JSONResponse:
        records = await blocking(store.list_runs, name=name)
        last = await blocking(store.last_metrics, [r.id for r in records])  # one query for all
        now = time.time()
        out = [_run_summary(r, last[r.id], now) for r in records]
        if best:
            if len(best) > 16:
                raise InvalidArgument("ask for the best value of at most 16 metrics at once")
            found = await blocking(best_metrics, records, best)
            for summary in out:
                summary["best_metrics"] = found[summary["id"]]
        if status is not None:
            out = [r for r in out if r["status"] == status]
        return _json_response(out)

    @app.get("/api/runs/{run}", summary="One run: configuration, tunables, status")
    async def run_detail(run: str) -> JSONResponse:
        record = await blocking(store.get_run, run)
        last = (await blocking(store.last_metrics, [record.id]))[record.id]
        data = _run_summary(record, last, time.time())
        # the recorded command line may name a store URL: never show its password
        data.update(config=_redacted(record.config), meta=_redacted(record.meta),
                    tunables=record.tunables, error=record.error, read_only=read_only)  # fmt: skip
        return _json_response(data)

    @app.get("/api/runs/{run}/tree", summary="The tuning tree")
    async def tree(run: str) -> JSONResponse:
        snapshot = await blocking(read_snapshot, store, run)
        return _json_response({"nodes": [n.to_dict() for n in snapshot.tree()]})

    @app.get(
        "/api/runs/{run}/tree.svg",
        summary="The tuning tree as an SVG picture (steps on x, one lane per branch)",
        response_class=Response,
        responses={200: {"content": {"image/svg+xml": {}}, "description": "the picture"}},
    )
    async def tree_picture(
        run: str,
        color_by: Annotated[
            str | None, Query(description="colour nodes by this metric's last value")
        ] = None,
        goal: Annotated[
            Literal["min", "max"] | None, Query(description="which end of color_by is best")
        ] = None,
        collapse: Annotated[
            bool | None, Query(description="fold chains (default: above 120 nodes)")
        ] = None,
        width: Annotated[int | None, Query(ge=200, le=100_000)] = None,
    ) -> Response:
        from retune.viz import tree_svg

        svg = await blocking(tree_svg, store, run, color_by=color_by, goal=goal, width=width,
                             collapse_chains=collapse)  # fmt: skip
        # the picture holds no script; if a name ever slipped through, nothing could run
        headers = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                   "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}  # fmt: skip
        return Response(svg, media_type="image/svg+xml", headers=headers)

    def read_metric(  # noqa: PLR0917 - the query parameters, passed along
        run: str, key: str, branch: str | None, start: int | None, end: int | None, max_points: int
    ) -> dict[str, Any]:
        from retune.session._tree import branch_mask, path_to

        record = store.get_run(run)
        data = store.read_metric(record.id, key, start=start, end=end)
        if not len(data.steps) and key not in store.metric_keys(record.id):
            raise InvalidArgument(f"run {record.name} has no metric {key!r}")
        series = data
        if branch is not None:
            path = path_to(tuple(store.list_nodes(record.id)), _node(branch))
            mask = branch_mask(path, series.nodes, series.steps)
            index = mask.nonzero()[0]
            index = index[series.steps[index].argsort(kind="stable")]
            series = series.take(index)
        total = len(series)
        picked = series.select(max_points=max_points)
        return {"key": key, "total": total, **_series(picked)}

    def read_branches(run: str, key: str, node: list[str], max_points: int) -> dict[str, Any]:
        from retune.session._tree import branch_mask, path_to

        record = store.get_run(run)
        data = store.read_metric(record.id, key)
        nodes = tuple(store.list_nodes(record.id))
        out = {}
        for ref in node[:64]:
            path = path_to(nodes, _node(ref))
            index = branch_mask(path, data.nodes, data.steps).nonzero()[0]
            index = index[data.steps[index].argsort(kind="stable")]
            series = data.take(index)
            out[ref] = {"total": len(series), **_series(series.select(max_points=max_points))}
        return {"key": key, "branches": out}

    @app.get("/api/runs/{run}/metric", summary="A metric, downsampled by min/max buckets")
    async def metric_by_query(  # noqa: PLR0917 - FastAPI passes query parameters by name
        run: str,
        key: Annotated[str, Query(description="the metric's name; any text, e.g. val/loss")],
        branch: str | None = None,
        start: Step = None,
        end: Step = None,
        max_points: int = Query(2000, ge=3, le=100_000),
    ) -> JSONResponse:
        return _json_response(await blocking(read_metric, run, key, branch, start, end, max_points))

    @app.get(
        "/api/runs/{run}/metrics/{key:path}",
        summary="A metric, downsampled (the name in the path; names such as val/loss work)",
    )
    async def metric(  # noqa: PLR0917 - FastAPI passes query parameters by name
        run: str,
        key: str,
        branch: str | None = None,
        start: Step = None,
        end: Step = None,
        max_points: int = Query(2000, ge=3, le=100_000),
    ) -> JSONResponse:
        return _json_response(await blocking(read_metric, run, key, branch, start, end, max_points))

    @app.get(
        "/api/runs/{run}/branches",
        summary="A metric along several branches at once (one read), each downsampled",
    )
    async def branches_by_query(
        run: str,
        key: Annotated[str, Query(description="the metric's name; any text, e.g. val/loss")],
        node: Annotated[list[str], Query(description="branch end nodes: node=n3&node=n7")],
        max_points: int = Query(2000, ge=3, le=100_000),
    ) -> JSONResponse:
        return _json_response(await blocking(read_branches, run, key, node, max_points))

    @app.get(
        "/api/runs/{run}/branches/{key:path}",
        summary="A metric along several branches (the name in the path)",
    )
    async def branches(
        run: str,
        key: str,
        node: Annotated[list[str], Query(description="branch end nodes: node=n3&node=n7")],
        max_points: int = Query(2000, ge=3, le=100_000),
    ) -> JSONResponse:
        return _json_response(await blocking(read_branches, run, key, node, max_points))

    def read_compare(run: str, nodes: str, metric: list[str] | None, max_points: int,
                     rows: int) -> dict[str, Any]:  # fmt: skip
        from retune._compare import compare

        refs = [_node(ref) for ref in nodes.split(",") if ref.strip()]
        result = compare(store, run, refs, metrics=metric or None)
        return result.to_dict(max_points=max_points, rows=rows)

    @app.get(
        "/api/runs/{run}/compare",
        summary="Nodes side by side: the hyperparameter diff and each branch's metrics by step",
    )
    async def compare_nodes(
        run: str,
        nodes: Annotated[str, Query(description="the nodes, comma-separated: n3,n5,n7 or 3,5,7")],
        metric: Annotated[
            list[str] | None, Query(description="only these metrics (repeatable); default all")
        ] = None,
        max_points: int = Query(2000, ge=3, le=100_000),
        rows: int = Query(10, ge=0, le=1000),
    ) -> JSONResponse:
        return _json_response(await blocking(read_compare, run, nodes, metric, max_points, rows))

    @app.get("/api/runs/{run}/metrics", summary="The run's metric keys")
    async def metric_keys(run: str) -> JSONResponse:
        record = await blocking(store.get_run, run)
        return _json_response(await blocking(store.metric_keys, record.id))

    @app.get("/api/runs/{run}/commands", summary="The audit log: every command and its outcome")
    async def commands(run: str) -> JSONResponse:
        record = await blocking(store.get_run, run)
        return _json_response([c.__dict__ for c in await blocking(store.list_commands, record.id)])

    @app.post("/api/runs/{run}/commands", status_code=202, summary="Send a command to a run")
    async def send(run: str, command: CommandIn, request: Request) -> JSONResponse:
        if read_only:
            return JSONResponse(
                {"error": "read_only", "message": "this dashboard is read-only"}, status_code=403
            )
        # who: the token holder off loopback, else the OS user the dashboard runs as
        user = "token" if token is not None else current_user()
        _check_payload(command.kind, "kind")
        _check_payload(command.payload)
        record = await blocking(submit, store, run, command.kind, command.payload,
                                source="ui", user=user)  # fmt: skip
        return _json_response(record.__dict__, status=202)

    def refuse_read_only() -> JSONResponse | None:
        if read_only:
            return JSONResponse(
                {"error": "read_only", "message": "this dashboard is read-only"}, status_code=403
            )
        return None

    @app.put("/api/runs/{run}/tags", summary="Replace, add or remove a run's tags")
    async def put_tags(run: str, body: TagsIn) -> JSONResponse:
        if (refused := refuse_read_only()) is not None:
            return refused
        for tag in [*(body.tags or []), *body.add, *body.remove]:
            _check_payload(tag, "tags")
        record = await blocking(store.get_run, run)
        updated = await blocking(store.set_run_tags, record.id, body.tags,
                                 add=body.add, remove=body.remove)  # fmt: skip
        return _json_response({"id": updated.id, "tags": list(updated.tags)})

    @app.put("/api/runs/{run}/note", summary="Replace a run's note")
    async def put_note(run: str, body: NoteIn) -> JSONResponse:
        if (refused := refuse_read_only()) is not None:
            return refused
        _check_payload(body.note, "note")
        record = await blocking(store.get_run, run)
        updated = await blocking(store.set_run_note, record.id, body.note)
        return _json_response({"id": updated.id, "note": updated.note})

    @app.get("/api/commands/{command_id}", summary="One command")
    async def command_detail(
        command_id: Annotated[int, PathParam(ge=0, le=INT32_MAX)],
    ) -> JSONResponse:
        return _json_response((await blocking(store.get_command, command_id)).__dict__)

    @app.get("/api/runs/{run}/explorations", summary="The run's explorations, oldest first")
    async def explorations(run: str) -> JSONResponse:
        record = await blocking(store.get_run, run)
        return _json_response(await blocking(list_explorations, store, record.id))

    @app.get("/api/commands/{command_id}/exploration", summary="One exploration's state")
    async def exploration(
        command_id: Annotated[int, PathParam(ge=0, le=INT32_MAX)],
    ) -> JSONResponse:
        return _json_response(await blocking(describe_exploration, store, command_id))

    @app.get("/api/events", summary="Server-Sent Events: a 'runs' event whenever anything moves")
    async def events(
        request: Request, interval: float = Query(0.5, ge=0.1, le=5)
    ) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            previous = ""
            while not await request.is_disconnected():
                records = await blocking(store.list_runs)
                state = [[r.id, r.status, r.step, r.heartbeat_at] for r in records]
                commands_seen = []
                for r in records:
                    if r.status in LIVE_STATUSES:
                        latest = await blocking(store.list_commands, r.id)
                        commands_seen.append([r.id, [[c.id, c.status] for c in latest[-5:]]])
                fingerprint = json.dumps([state, commands_seen])
                if fingerprint != previous:
                    previous = fingerprint
                    yield f"event: runs\ndata: {fingerprint}\n\n"
                else:
                    yield ": keep-alive\n\n"
                await asyncio.sleep(interval)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    primed: list[asyncio.Future[None]] = []  # once per app: the files are cached per process

    async def page() -> HTMLResponse:
        """The one HTML page (from memory, read off the event loop); the first request also
        reads and gzips the files the page asks for next."""
        if not primed:
            # a failure is dropped here: the request for that file reports it
            primed.append(asyncio.get_running_loop().run_in_executor(None, _prime_assets))
            primed[0].add_done_callback(lambda done: done.cancelled() or done.exception())
        asset = await blocking(_asset, STATIC / "index.html")
        return HTMLResponse(asset.raw)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return await page()

    @app.get("/runs/{run}", include_in_schema=False)
    async def run_page(run: str) -> HTMLResponse:
        return await page()

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        """A static file, from memory in one piece (sent in 64 KiB chunks, plotly took dozens
        of hops between the event loop and a thread, each waiting for the GIL while the API
        reads ran), gzipped when the client accepts it."""
        if name == "plotly.min.js":
            path = PLOTLY
        else:
            path = STATIC / name
            if path.parent != STATIC or not path.is_file():
                return JSONResponse(
                    {"error": "not_found", "message": f"no static file {name!r}"}, status_code=404
                )
        asset = await blocking(_asset, path)
        headers = {"Cache-Control": "max-age=3600", "Vary": "Accept-Encoding"}
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if asset.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return Response(asset.gzipped, media_type=media_type, headers=headers)
        return Response(asset.raw, media_type=media_type, headers=headers)

    return app

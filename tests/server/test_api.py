"""The dashboard's API, in-process against a real SQLite store; every route and its errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

import retune
from retune.server import check_bind, create_app
from retune.store import Store, open_store
from tests._wait import eventually

ORIGIN = "http://testserver"
HOSTS = {"testserver"}  # the test client's Host header
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def runs(store: Store) -> Iterator[dict[str, Any]]:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with retune.init("done", model=model, optimizer=opt, store=store) as finished:
        for i in range(1, 101):
            finished.step(loss=1.0 / i if i != 50 else math.nan)
        finished.checkpoint()
    live = retune.init("live", model=model, optimizer=opt, store=store, flush_interval=0.05)
    live.step(loss=1.0)
    live.flush()
    yield {"finished": finished.id, "live": live.id, "live_run": live}
    live.finish()


@pytest.fixture
def client(store: Store) -> TestClient:
    return TestClient(create_app(store, allowed_hosts=HOSTS))


def _error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"]
    return str(body["message"])


def test_runs_list_and_filters(client: TestClient, runs: dict[str, Any]) -> None:
    listed = client.get("/api/runs").json()
    assert [r["name"] for r in listed] == ["live", "done"]
    assert listed[1]["step"] == 100 and listed[1]["status"] == "finished"
    assert listed[1]["last_metrics"]["loss"] == pytest.approx(0.01)
    assert [r["name"] for r in client.get("/api/runs?status=running").json()] == ["live"]
    assert client.get("/api/runs?name=nope").json() == []


def test_run_detail_tree_and_keys(client: TestClient, runs: dict[str, Any]) -> None:
    detail = client.get(f"/api/runs/{runs['finished']}").json()
    assert detail["name"] == "done" and detail["read_only"] is False
    assert {t["name"] for t in detail["tunables"]} >= {"lr", "momentum"}
    tree = client.get("/api/runs/done/tree").json()["nodes"]
    assert tree[0]["id"] == "n1" and tree[0]["checkpoints"] == ["c1"]
    assert client.get("/api/runs/done/metrics").json() == ["loss"]
    for path in ("/api/runs/nope", "/api/runs/nope/tree", "/api/runs/nope/metrics",
                 "/api/runs/nope/commands", "/api/runs/nope/metrics/loss"):  # fmt: skip
        _error(client.get(path), 404, "run_not_found")


def test_metric_series_downsampled_with_nan_kept(client: TestClient, runs: dict[str, Any]) -> None:
    full = client.get("/api/runs/done/metrics/loss").json()
    assert full["total"] == 100 and full["steps"] == list(range(1, 101))
    assert full["values"][49] is None and full["nonfinite"] == [49]
    small = client.get("/api/runs/done/metrics/loss?max_points=10").json()
    assert len(small["steps"]) <= 10 and 50 in small["steps"] and 1 in small["steps"]
    window = client.get("/api/runs/done/metrics/loss?start=10&end=12").json()
    assert window["steps"] == [10, 11, 12]
    branch = client.get("/api/runs/done/metrics/loss?branch=n1").json()
    assert branch["total"] == 100
    _error(client.get("/api/runs/done/metrics/nope"), 400, "invalid_argument")
    _error(client.get("/api/runs/done/metrics/loss?max_points=1"), 400, "invalid_argument")
    _error(client.get("/api/runs/done/metrics/loss?branch=n9"), 404, "node_not_found")


def test_branches_of_a_metric_in_one_request(client: TestClient, runs: dict[str, Any]) -> None:
    body = client.get("/api/runs/done/branches/loss?node=n1&max_points=20").json()
    assert body["key"] == "loss" and body["branches"]["n1"]["total"] == 100
    assert len(body["branches"]["n1"]["steps"]) <= 20
    _error(client.get("/api/runs/done/branches/loss"), 400, "invalid_argument")
    _error(client.get("/api/runs/done/branches/loss?node=n7"), 404, "node_not_found")
    _error(client.get("/api/runs/done/branches/loss?node=x"), 404, "node_not_found")
    _error(client.get("/api/runs/nope/branches/loss?node=n1"), 404, "run_not_found")


def test_commands_are_validated_and_recorded(client: TestClient, runs: dict[str, Any]) -> None:
    sent = client.post("/api/runs/live/commands", json={"kind": "set", "payload": {"values": {"lr": 0.01}}},
                       headers={"Origin": ORIGIN})  # fmt: skip
    assert sent.status_code == 202 and sent.json()["status"] == "pending"
    assert sent.json()["source"] == "ui"
    message = _error(client.post("/api/runs/live/commands", json={"kind": "set", "payload": {"values": {"lr": -1}}}),
                     422, "command_rejected")  # fmt: skip
    assert message == "lr must be >= 0, got -1"
    _error(
        client.post("/api/runs/live/commands", json={"kind": "explode"}), 422, "command_rejected"
    )
    _error(client.post("/api/runs/done/commands", json={"kind": "pause"}), 409, "run_not_live")
    _error(client.post("/api/runs/nope/commands", json={"kind": "pause"}), 404, "run_not_found")
    _error(client.post("/api/runs/live/commands", json={"payload": {}}), 400, "invalid_argument")
    audit = client.get("/api/runs/live/commands").json()
    assert [c["status"] for c in audit] == ["pending", "rejected", "rejected"]
    assert client.get(f"/api/commands/{sent.json()['id']}").json()["kind"] == "set"
    _error(client.get("/api/commands/999"), 400, "invalid_argument")


def test_cross_site_and_rebinding_requests_are_refused(
    client: TestClient, runs: dict[str, Any]
) -> None:
    body = {"kind": "pause"}
    _error(client.post("/api/runs/live/commands", json=body, headers={"Origin": "http://evil.example"}),
           403, "forbidden_origin")  # fmt: skip
    _error(client.post("/api/runs/live/commands", content='{"kind": "pause"}',
                       headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")  # fmt: skip
    _error(client.get("/api/runs", headers={"Host": "evil.example"}), 421, "bad_host")
    assert client.get("/api/runs/live/commands").json() == []


def test_read_only_and_token(store: Store, runs: dict[str, Any]) -> None:
    read_only = TestClient(create_app(store, read_only=True, allowed_hosts=HOSTS))
    _error(read_only.post("/api/runs/live/commands", json={"kind": "pause"}), 403, "read_only")
    assert read_only.get("/api/runs/live").json()["read_only"] is True
    guarded = TestClient(create_app(store, token="s3cret", allowed_hosts=HOSTS))
    _error(guarded.get("/api/runs"), 401, "unauthorized")
    assert guarded.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    first = guarded.get("/?token=s3cret")
    assert first.status_code == 200 and "retune_token" in first.cookies
    assert guarded.get("/api/runs").status_code == 200  # the cookie now carries it
    _error(
        TestClient(create_app(store, token="s3cret", allowed_hosts=HOSTS)).get(
            "/api/runs?token=wrong"
        ),
        401,
        "unauthorized",
    )


def test_binding_rules() -> None:
    assert check_bind("127.0.0.1", None) is None
    assert check_bind("::1", None) is None
    with pytest.raises(
        retune.InvalidArgument, match=r"refusing to serve on 0\.0\.0\.0 without a token"
    ):
        check_bind("0.0.0.0", None)
    assert check_bind("0.0.0.0", "t") == "t"
    assert len(check_bind("0.0.0.0", "auto") or "") > 20


def test_pages_static_files_and_openapi(client: TestClient, runs: dict[str, Any]) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "/static/app.js" in client.get("/runs/done").text
    # the page's modules are served; the charts module fetches plotly with the first chart
    for module in ("app", "util", "charts", "runs", "run", "meta", "treepic"):
        assert client.get(f"/static/{module}.js").status_code == 200, module
    assert "/static/plotly.min.js" in client.get("/static/charts.js").text
    plotly = client.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    _error(client.get("/static/nope.js"), 404, "not_found")
    schema = client.get("/api/openapi.json").json()
    assert "/api/runs/{run}/commands" in schema["paths"]


@pytest.mark.parametrize(
    "name",
    ["..%2F_app.py", "%2e%2e%2f_app.py", "..%5C_app.py", "vendor%2Fplotly-basic.min.js",
     "plotly-basic.min.js", "%3Cscript%3E.js", "caf%C3%A9.js", "app.js%00.txt", "_app.py"],
)  # fmt: skip
def test_hostile_static_names_read_nothing_outside_the_static_files(
    client: TestClient, name: str
) -> None:
    """Only the dashboard's own files (and plotly.min.js) are served from memory: a name that
    climbs out, names the vendor folder or the package's Python, or is markup or non-ASCII,
    is refused (404; 400 for a NUL), is never cached, and the refusal is JSON, never a page."""
    from retune.server import _app

    cached = set(_app._ASSETS)
    response = client.get(f"/static/{name}")
    assert response.status_code in (400, 404)
    static = _app.STATIC.resolve()
    assert all(p.resolve().parent == static or p == _app.PLOTLY for p in _app._ASSETS)
    assert set(_app._ASSETS) - cached <= {p for p in _app._ASSETS if p.resolve().parent == static}
    assert response.headers["content-type"].startswith("application/json")


def test_the_page_preloads_every_module_the_dashboard_imports() -> None:
    """index.html's modulepreload list is written by hand: it must name every module that a
    module imports (else that one loads a level later, after its importer)."""
    import re

    from retune.server._app import STATIC

    imported = {
        name
        for module in STATIC.glob("*.js")
        for name in re.findall(r"""from\s+["']\./([\w.-]+\.js)["']""", module.read_text())
    }
    preloaded = set(
        re.findall(r'rel="modulepreload" href="/static/([\w.-]+\.js)"',
                   (STATIC / "index.html").read_text())
    )  # fmt: skip
    assert imported and imported <= preloaded, imported - preloaded


@pytest.mark.parametrize("name", ["plotly.min.js", "run.js", "style.css"])
def test_static_files_are_gzipped_only_when_the_client_accepts_it(
    client: TestClient, name: str
) -> None:
    plain = client.get(f"/static/{name}", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"
    assert plain.headers["cache-control"] == "max-age=3600"
    for accept, packed in [("gzip", True), ("br, gzip;q=0.5", True), ("deflate", False),
                           ("gzip;q=0", False), ("x-gzip", True)]:  # fmt: skip
        with client.stream("GET", f"/static/{name}", headers={"Accept-Encoding": accept}) as got:
            raw = b"".join(got.iter_raw())  # the bytes as sent, not decoded by the client
            assert got.status_code == 200
            assert got.headers["content-type"] == plain.headers["content-type"]
        if packed:
            assert got.headers["content-encoding"] == "gzip", accept
            assert len(raw) < len(plain.content) and gzip.decompress(raw) == plain.content
        else:
            assert "content-encoding" not in got.headers and raw == plain.content, accept


def test_plotly_is_the_vendored_basic_bundle_whose_hash_its_readme_records(
    client: TestClient,
) -> None:
    from retune.server._app import PLOTLY

    served = client.get("/static/plotly.min.js")
    assert served.status_code == 200 and served.content == PLOTLY.read_bytes()
    assert served.content.startswith(b"/**\n* plotly.js (basic - minified) v")
    readme = (PLOTLY.parent / "README.md").read_text()
    assert f"file sha256: `{hashlib.sha256(served.content).hexdigest()}`" in readme
    assert (PLOTLY.parent / "LICENSE.plotly.js").read_text().startswith("MIT License")


def test_a_static_file_edited_while_serving_is_read_again(tmp_path: Path) -> None:
    from retune.server._app import _asset

    path = tmp_path / "page.js"
    path.write_text("let a = 1;\n" * 100)
    first = _asset(path)
    assert _asset(path) is first  # read and compressed once
    assert first.gzipped is not None and gzip.decompress(first.gzipped) == first.raw
    path.write_text("let b = 2;\n" * 200)
    assert _asset(path).raw == path.read_bytes()
    path.write_text("x")  # gzip would be larger: served as it is
    assert _asset(path).gzipped is None


def test_a_page_request_reads_and_gzips_the_files_it_will_ask_for_next(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retune.server import _app

    monkeypatch.setattr(_app, "_ASSETS", {})  # as in a fresh server process
    client = TestClient(create_app(store, allowed_hosts=HOSTS))
    assert client.get("/static/app.js").status_code == 200
    assert set(_app._ASSETS) == {_app.STATIC / "app.js"}  # a file request reads only its file
    assert client.get("/runs/anything").status_code == 200
    wanted = {_app.STATIC / "run.js", _app.STATIC / "style.css", _app.PLOTLY}
    eventually(lambda: wanted <= set(_app._ASSETS), timeout=30, what="files read ahead")


def test_events_reject_a_bad_interval(client: TestClient) -> None:
    _error(client.get("/api/events?interval=0"), 400, "invalid_argument")


def test_init_with_ui_serves_the_dashboard(store_url: str) -> None:
    import httpx

    from tests.server._net import free_port

    port = free_port()
    with retune.init("served", store=store_url, ui=port) as run:
        run.step(loss=1.0)
        run.flush()
        listed = httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=5).json()
        assert [r["name"] for r in listed] == ["served"]
        run.ui_server.should_exit = True


def _sse_events(url: str, wanted: int, between: Any, timeout: float = 30.0) -> list[str]:
    """The data of the first ``wanted`` ``runs`` events, calling ``between()`` after each one.

    Fails (never hangs) when they do not come: a read times out after 5 s of silence, and the
    whole wait is bounded by ``timeout``; keep-alives arrive every interval so both are checked.
    """
    import httpx

    seen: list[str] = []
    deadline = time.monotonic() + timeout
    event = None
    with httpx.stream("GET", url, timeout=5) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            assert time.monotonic() < deadline, f"only {len(seen)} of {wanted} events in time"
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "runs":
                seen.append(line.removeprefix("data:").strip())
                if len(seen) == wanted:
                    return seen
                between()
    raise AssertionError(f"the stream ended after {len(seen)} of {wanted} events")


def test_server_sent_events_announce_every_change(store_url: str, runs: dict[str, Any]) -> None:
    from tests.server._fuzz import live_dashboard

    live = runs["live_run"]

    def train_a_step() -> None:
        live.step(loss=0.5)
        live.flush()

    with live_dashboard(store_url) as base:
        first, second = _sse_events(f"{base}/api/events?interval=0.1", 2, train_a_step)
    state = {row[0]: row for row in json.loads(first)[0]}
    assert state[runs["live"]][2] == 1 and state[runs["finished"]][1] == "finished"
    assert {row[0]: row for row in json.loads(second)[0]}[runs["live"]][2] == 2


# ---- metric names with "/" and friends (issue 8, item 12) -------------------------------------


@pytest.fixture
def slashed(store: Store) -> str:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("slashed", model=model, optimizer=opt, store=store) as run:
        for i in range(1, 11):
            run.step(**{"val/loss": float(i), "a%2Fb": -float(i), "..": 1.0, "q?x#y": 2.0})
    return run.id


@pytest.mark.parametrize("key", ["val/loss", "a%2Fb", "q?x#y", ".."])
def test_any_metric_name_is_served_by_query(client: TestClient, slashed: str, key: str) -> None:
    from urllib.parse import quote

    series = client.get("/api/runs/slashed/metric", params={"key": key}).json()
    assert series["key"] == key and series["total"] == 10
    both = client.get("/api/runs/slashed/branches", params={"key": key, "node": "n1"}).json()
    assert both["key"] == key and both["branches"]["n1"]["total"] == 10
    # in a path, ".." is resolved away by clients and "%2F" cannot be told from "/" by every
    # server (Starlette's test client decodes twice): names like these need the query form
    if key not in {"..", "a%2Fb"}:
        by_path = client.get(f"/api/runs/slashed/metrics/{quote(key, safe='')}").json()
        assert by_path["key"] == key and by_path["total"] == 10
        by_path = client.get(f"/api/runs/slashed/branches/{quote(key, safe='')}?node=n1").json()
        assert by_path["branches"]["n1"]["total"] == 10


def test_a_slash_in_a_metric_name_reaches_the_path_routes(client: TestClient, slashed: str) -> None:
    assert client.get("/api/runs/slashed/metrics/val/loss").json()["total"] == 10
    assert client.get("/api/runs/slashed/branches/val/loss?node=n1").json()["key"] == "val/loss"
    _error(client.get("/api/runs/slashed/metric", params={"key": "val/nope"}), 400,
           "invalid_argument")  # fmt: skip
    _error(client.get("/api/runs/slashed/metric"), 400, "invalid_argument")


# ---- 4xx with a reason, never 5xx (issue 8, item 16) -----------------------------------------

BIG = "9" * 30  # beyond 64 bits


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/api/commands/{BIG}", 400, "invalid_argument"),
        (f"/api/commands/-{BIG}", 400, "invalid_argument"),
        ("/api/commands/%C2%B2", 400, "invalid_argument"),  # ²
        (f"/api/runs/done/metrics/loss?start={BIG}", 400, "invalid_argument"),
        (f"/api/runs/done/metrics/loss?end=-{BIG}", 400, "invalid_argument"),
        ("/api/runs/done/metrics/loss?start=%D9%A3", 400, "invalid_argument"),  # ٣
        ("/api/runs/done/metrics/loss?branch=n%C2%B2", 404, "node_not_found"),
        ("/api/runs/done/metrics/loss?branch=n%D9%A3", 404, "node_not_found"),  # int() takes it
        (f"/api/runs/done/metrics/loss?branch=n{BIG}", 404, "node_not_found"),
        ("/api/runs/done/branches/loss?node=%C2%B2", 404, "node_not_found"),
        ("/api/runs/done/branches/loss?node=n%D9%A3", 404, "node_not_found"),
        (f"/api/runs/done/branches/loss?node={BIG}", 404, "node_not_found"),
        ("/api/nope", 404, "not_found"),
    ],
)
def test_bad_numbers_in_urls_are_4xx_with_a_reason(
    client: TestClient, runs: dict[str, Any], path: str, status: int, code: str
) -> None:
    _error(client.get(path), status, code)


@pytest.mark.parametrize(
    "command",
    [
        {"kind": "set", "payload": {"values": {"lr": int(BIG)}}},
        {"kind": "set", "payload": {"values": {"lr": -int(BIG)}}},
        {"kind": "set", "payload": {"values": {"lr": 10**400}}},
        {"kind": "set", "payload": {"values": {"lr": 0.01}, "group": "²"}},
        {"kind": "set", "payload": {"values": {"lr": 0.01}, "group": "٣"}},
        {"kind": "set", "payload": {"values": {"lr": 0.01}, "group": int(BIG)}},
        {"kind": "scale", "payload": {"factors": {"lr": 10**400}}},
        {"kind": "scale", "payload": {"factors": {"lr": 2}, "group": "²"}},
        {"kind": "restore", "payload": {"target": "c²"}},
        {"kind": "restore", "payload": {"target": "n٣"}},
        {"kind": "restore", "payload": {"target": f"c{BIG}"}},
        {"kind": "restore", "payload": {"target": "latest", "set": {"lr": 10**400}}},
    ],
)
def test_bad_numbers_in_commands_are_4xx_with_a_reason(
    client: TestClient, runs: dict[str, Any], command: dict[str, Any]
) -> None:
    body = json.dumps(command)  # Python's json writes 10**400 as digits, as any client may
    response = client.post("/api/runs/live/commands", content=body,
                           headers={**JSON, "Origin": ORIGIN})  # fmt: skip
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"] in {"invalid_argument", "command_rejected"}
    assert response.json()["message"]
    pending = [c for c in client.get("/api/runs/live/commands").json() if c["status"] != "rejected"]
    assert pending == []


@pytest.mark.parametrize(
    "body", ["{", "\\xff", "[" * 100_000 + "]" * 100_000, '{"kind": 1}', "null"]
)
def test_malformed_bodies_are_400_with_a_reason(
    client: TestClient, runs: dict[str, Any], body: str
) -> None:
    response = client.post("/api/runs/live/commands", content=body,
                           headers={**JSON, "Origin": ORIGIN})  # fmt: skip
    _error(response, 400, "invalid_argument")


def test_a_bug_is_a_json_500_without_secrets_and_the_connection_stays(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """What escapes every handler (a bug) is answered, not dropped: a JSON 500 holding no
    details, and a log line with the traceback whose store URLs show no password."""
    import httpx
    import uvicorn

    from tests.server._net import free_port

    app = create_app(store)
    secret_url = "postgresql+psycopg://mia:s3cret@db:5432/retune"

    def bug() -> None:  # a route with a bug in it, added to the real app
        raise RuntimeError(f"cannot reach {secret_url}")

    app.add_api_route("/api/bug", bug)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="critical"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 30
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline
                time.sleep(0.02)
            with caplog.at_level("ERROR", logger="retune.server"):
                response = http.get("/api/bug")
            assert response.status_code == 500
            assert response.json()["error"] == "internal_error"
            assert "s3cret" not in response.text and "mia" not in response.text
            assert http.get("/api/runs").status_code == 200  # the same connection still serves
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert "RuntimeError" in caplog.text and "mia:***@db" in caplog.text
    assert "s3cret" not in caplog.text


def test_a_store_password_in_the_recorded_command_line_is_never_served(
    client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "postgresql+psycopg://mia:s3cret@db:5432/retune"
    monkeypatch.setattr("sys.argv", ["train.py", "--store", secret])
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("argv", model=model, optimizer=opt, store=store, config={"db": secret}):
        pass
    detail = client.get("/api/runs/argv")
    assert detail.status_code == 200
    assert "s3cret" not in detail.text
    assert detail.json()["config"]["db"] == "postgresql+psycopg://mia:***@db:5432/retune"


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs?name=%00",
        "/api/runs/%00",
        "/api/runs/done/metric?key=a%00b",
        "/api/runs/done/metrics/a%00b",
        "/api/runs/done/branches?key=%00&node=n1",
        f"/api/commands/{2**31}",  # command ids are 32-bit on PostgreSQL
    ],
)
def test_what_postgresql_cannot_hold_is_refused_on_every_backend(
    client: TestClient, runs: dict[str, Any], path: str
) -> None:
    """Found by the fuzz on PostgreSQL: NUL in text and ids beyond 32 bits were 503s."""
    _error(client.get(path), 400, "invalid_argument")


@pytest.mark.parametrize(
    "command",
    [
        {"kind": "x\u0000"},
        {"kind": "checkpoint", "payload": {"tag": "a\u0000b"}},
        {"kind": "set", "payload": {"values": {"l\u0000r": 0.1}}},
    ],
)
def test_nul_in_a_command_is_refused(
    client: TestClient, runs: dict[str, Any], command: dict[str, Any]
) -> None:
    _error(client.post("/api/runs/live/commands", json=command, headers={"Origin": ORIGIN}), 400,
           "invalid_argument")  # fmt: skip
    assert client.get("/api/runs/live/commands").json() == []


def test_tags_and_note_are_edited_over_http_and_refused_when_read_only(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'notes.db'}")
    run = store.create_run("tagged", config={}, meta={}, tunables=[])
    client = TestClient(create_app(store), base_url="http://127.0.0.1")
    put = client.put(f"/api/runs/{run.id}/tags", json={"tags": ["b", "a"], "add": ["c"]})
    assert put.status_code == 200 and put.json()["tags"] == ["a", "b", "c"]
    put = client.put("/api/runs/tagged/tags", json={"remove": ["b"]})
    assert put.json()["tags"] == ["a", "c"]
    assert client.put(f"/api/runs/{run.id}/note", json={"note": "ok"}).json()["note"] == "ok"
    bad = client.put(f"/api/runs/{run.id}/tags", json={"add": ["two words"]})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_argument"
    listed = client.get("/api/runs?best=loss").json()[0]
    assert (listed["tags"], listed["note"], listed["best_metrics"]) == (
        ["a", "c"],
        "ok",
        {"loss": None},
    )
    read_only = TestClient(create_app(store, read_only=True), base_url="http://127.0.0.1")
    refused = read_only.put(f"/api/runs/{run.id}/note", json={"note": "no"})
    assert refused.status_code == 403 and refused.json()["error"] == "read_only"
    assert store.get_run(run.id).note == "ok"

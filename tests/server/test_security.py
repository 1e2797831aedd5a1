"""Security regression tests for the dashboard (issue 8, items 16 and 17).

Host rebinding, cross-site writes with and without ``Origin`` (Fetch Metadata), token handling
(wrong, non-ASCII; header, query, cookie), ``--allowed-host`` names, path traversal in every id
route, and stored XSS through run, metric and tunable names and config values rendered in real
Debian Chromium.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import retune
from retune.server import check_bind, create_app
from retune.server._headless import CHROMIUM, CHROMIUM_ARGS
from retune.store import Store, open_store
from tests.server._fuzz import live_dashboard

ORIGIN = "http://testserver"
HOSTS = {"testserver"}
PAUSE = {"kind": "pause"}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def live(store: Store) -> Iterator[Any]:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("done", model=model, optimizer=opt, store=store) as done:
        done.step(loss=1.0)
        done.checkpoint()
    run = retune.init("live", model=model, optimizer=opt, store=store, flush_interval=0.05)
    run.step(loss=1.0)
    run.flush()
    yield run
    run.finish()


def _error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"]


def _commands(store: Store, run: Any) -> list[str]:
    return [c.kind for c in store.list_commands(run.id)]


# ---- Host rebinding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.com", "evil.com:8765", "127.0.0.1.evil.com", "localhost.evil.com", ""]
)
def test_a_foreign_host_name_is_refused(store: Store, live: Any, host: str) -> None:
    client = TestClient(create_app(store, allowed_hosts=HOSTS))
    _error(client.get("/api/runs", headers={"Host": host}), 421, "bad_host")
    _error(client.post("/api/runs/live/commands", json=PAUSE,
                       headers={"Host": host, "Origin": f"http://{host}"}), 421, "bad_host")  # fmt: skip
    assert _commands(store, live) == []


def test_loopback_names_are_always_answered(store: Store, live: Any) -> None:
    client = TestClient(create_app(store))
    for host in ("127.0.0.1:8765", "localhost", "[::1]:8765"):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 200


def test_allowed_host_names_are_answered_with_a_token(store: Store, live: Any) -> None:
    """``retune ui --host 0.0.0.0 --token T --allowed-host box.lan``: LAN clients get in."""
    app = create_app(store, token="T", allowed_hosts={"box.lan", "10.0.0.5"})
    client = TestClient(app, base_url="http://box.lan:8765")
    auth = {"Authorization": "Bearer T"}
    assert client.get("/api/runs", headers=auth).status_code == 200
    ip = client.get("/api/runs", headers={**auth, "Host": "10.0.0.5:8765"})
    assert ip.status_code == 200
    _error(client.get("/api/runs", headers={**auth, "Host": "evil.com"}), 421, "bad_host")
    sent = client.post("/api/runs/live/commands", json=PAUSE,
                       headers={**auth, "Origin": "http://box.lan:8765"})  # fmt: skip
    assert sent.status_code == 202, sent.text


def test_serving_under_other_names_needs_a_token() -> None:
    with pytest.raises(retune.InvalidArgument, match="--allowed-host needs a token"):
        check_bind("127.0.0.1", None, allowed_hosts=["box.lan"])
    assert check_bind("0.0.0.0", "T", allowed_hosts=["box.lan"]) == "T"
    with pytest.raises(retune.InvalidArgument, match="not a host name"):
        check_bind("0.0.0.0", "T", allowed_hosts=["http://box.lan/"])


def test_retune_ui_answers_for_its_allowed_hosts(tmp_path: Path) -> None:
    """What a LAN client of ``retune ui --host 0.0.0.0 --token T --allowed-host box.lan`` sees
    (bound to loopback here; a client reaching it as box.lan sends ``Host: box.lan:PORT``)."""
    import subprocess
    import sys

    from tests.server._net import free_port

    port = free_port()
    store = str(tmp_path / "lan.db")
    args = [sys.executable, "-m", "retune", "ui", "--store", store, "--port", str(port)]
    refused = subprocess.run([*args, "--allowed-host", "box.lan"], capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith("retune: error: --allowed-host needs a token")
    ui = subprocess.Popen([*args, "--token", "T", "--allowed-host", "box.lan", "--allowed-host",
                           "10.0.0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/api/runs"
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(url, headers={"Host": f"box.lan:{port}"}, timeout=2,
                                     params={"token": "T"})  # fmt: skip
                break
            except httpx.TransportError:
                assert ui.poll() is None and time.monotonic() < deadline, "retune ui did not start"
                time.sleep(0.1)
        assert response.status_code == 200, response.text
        ip = httpx.get(url, headers={"Host": f"10.0.0.5:{port}", "Authorization": "Bearer T"})
        assert ip.status_code == 200
        _error(httpx.get(url, headers={"Host": "evil.com", "Authorization": "Bearer T"}), 421,
               "bad_host")  # fmt: skip
    finally:
        ui.kill()
        ui.communicate()


# ---- cross-site writes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},  # no Origin: Fetch Metadata alone decides
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": ORIGIN},  # contradictory: refused
        {"Origin": "http://evil.example"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "http://["},  # urlsplit raises on these: must be a refusal, not a 500
        {"Origin": "http://[::1"},
        {"Origin": "http://testserver/path"},
    ],
)
def test_cross_site_writes_are_refused(store: Store, live: Any, headers: dict[str, str]) -> None:
    client = TestClient(create_app(store, allowed_hosts=HOSTS))
    _error(client.post("/api/runs/live/commands", json=PAUSE, headers=headers), 403,
           "forbidden_origin")  # fmt: skip
    assert _commands(store, live) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts: no browser, no Origin, no Fetch Metadata
        {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed by the user
    ],
)
def test_same_origin_writes_are_accepted(store: Store, live: Any, headers: dict[str, str]) -> None:
    client = TestClient(create_app(store, allowed_hosts=HOSTS))
    assert client.post("/api/runs/live/commands", json=PAUSE, headers=headers).status_code == 202
    assert _commands(store, live) == ["pause"]


def test_cross_site_reads_of_the_api_are_allowed_but_not_writes(store: Store, live: Any) -> None:
    client = TestClient(create_app(store, allowed_hosts=HOSTS))
    assert client.get("/api/runs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


# ---- tokens ----------------------------------------------------------------------------------


def _guarded(store: Store) -> TestClient:
    return TestClient(create_app(store, token="s3cret", allowed_hosts=HOSTS))


@pytest.mark.parametrize("given", ["wrong", "s3cre", "s3crett", "", "ü", "s3cretü", "\u2603"])
@pytest.mark.parametrize("where", ["header", "query", "cookie"])
def test_a_wrong_token_is_401(store: Store, live: Any, given: str, where: str) -> None:
    client = _guarded(store)
    # raw bytes: a client may send any octets; Starlette decodes them as latin-1
    if where == "header":
        response = client.get(
            "/api/runs", headers=[(b"Authorization", b"Bearer " + given.encode())]
        )
    elif where == "query":
        response = client.get(f"/api/runs?token={quote(given)}")
    else:
        response = client.get("/api/runs", headers=[(b"Cookie", b"retune_token=" + given.encode())])
    _error(response, 401, "unauthorized")


@pytest.mark.parametrize("where", ["header", "query", "cookie"])
def test_the_right_token_is_accepted_anywhere(store: Store, live: Any, where: str) -> None:
    client = _guarded(store)
    if where == "header":
        response = client.get("/api/runs", headers={"Authorization": "Bearer s3cret"})
    elif where == "query":
        response = client.get("/api/runs?token=s3cret")
        assert "retune_token" in response.cookies
    else:
        client.cookies.set("retune_token", "s3cret")
        response = client.get("/api/runs")
    assert response.status_code == 200


def test_a_wrong_header_token_is_not_rescued_by_the_query(store: Store, live: Any) -> None:
    client = _guarded(store)
    response = client.get("/api/runs?token=s3cret", headers={"Authorization": "Bearer nope"})
    _error(response, 401, "unauthorized")


def test_a_non_ascii_token_over_real_http_is_401_not_a_reset(store_url: str, live: Any) -> None:
    with live_dashboard(store_url, token="s3cret") as base:
        for headers in (
            [(b"Authorization", "Bearer ü☃".encode())],
            [(b"Cookie", "retune_token=ü☃".encode())],
            [(b"Authorization", b"Bearer \xff\xfe")],
        ):
            response = httpx.get(f"{base}/api/runs", headers=headers, timeout=10)
            _error(response, 401, "unauthorized")
        _error(httpx.get(f"{base}/api/runs?token=%C3%BC%FF", timeout=10), 401, "unauthorized")


def test_a_token_must_be_printable_ascii() -> None:
    assert check_bind("0.0.0.0", "T-_.~0") == "T-_.~0"
    for bad in ("ü", "a b", "a\nb"):
        with pytest.raises(retune.InvalidArgument, match="printable ASCII"):
            check_bind("0.0.0.0", bad)


# ---- path traversal --------------------------------------------------------------------------

TRAVERSALS = [
    "..", "../..", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e",
    "..\\..\\windows", "%00", "/etc/passwd", "~", "%252e%252e",
]  # fmt: skip


def test_path_traversal_in_every_id_route(store: Store, live: Any, tmp_path: Path) -> None:
    client = TestClient(create_app(store, allowed_hosts=HOSTS))
    schema = client.get("/api/openapi.json").json()
    templates = [p for p in schema["paths"] if "{" in p]
    templates += ["/runs/{run}", "/static/{name}"]
    assert len(templates) >= 8
    secret = "root:" if Path("/etc/passwd").exists() else None
    for template in templates:
        for evil in TRAVERSALS:
            path = template
            for name in ("run", "key", "command_id", "name"):
                path = path.replace("{" + name + "}", evil).replace("{" + name + ":path}", evil)
            for method in ("GET", "POST"):
                response = client.request(method, path, json=PAUSE, params={"node": "n1"})
                where = f"{method} {path}"
                assert response.status_code < 500, f"{where}: {response.text}"
                if response.status_code >= 400:
                    assert response.json()["message"], where
                if secret is not None:
                    assert secret not in response.text, where
                assert "SecurityPolicy" not in response.text, where  # no source file leaked
    assert _commands(store, live) == []


# ---- stored XSS in a real browser -------------------------------------------------------------

XSS_RUN = "<img src=x onerror=window.__xss=1>"
XSS_METRIC = "<img src=x onerror=window.__xss=2>"
XSS_TUNABLE = "<img src=x onerror=window.__xss=3>"


@pytest.fixture
def hostile_store(store_url: str) -> Iterator[str]:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = {"note": "<script>window.__xss=4</script>", "<b>key</b>": "<i>v</i>"}
    run = retune.init(XSS_RUN, model=model, optimizer=opt, store=store_url, config=config)
    knob = run.tunable(XSS_TUNABLE, 1.0, bounds=(0, 10))
    for i in range(1, 21):
        run.step(**{"loss": 1.0 / i, "<b>x</b>": float(i), XSS_METRIC: float(i),
                    "val/loss": 2.0 / i, "<a href=javascript:window.__xss=5>y</a>": knob.value})  # fmt: skip
    run.checkpoint()
    run.flush()
    yield store_url
    run.finish()


@pytest.mark.slow
def test_hostile_names_render_as_text_in_chromium(hostile_store: str) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI needs Debian's chromium: run `make test`")
        pytest.skip("Debian chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with live_dashboard(hostile_store) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        dialogs: list[str] = []

        def dialog(d: Any) -> None:
            dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.goto(base)
        page.wait_for_selector("#runs tr[data-run]")
        assert page.inner_text("#runs tbody a") == XSS_RUN
        page.click("#runs tbody a")
        for key in ("loss", "<b>x</b>", XSS_METRIC, "val/loss"):
            page.wait_for_selector(f'.chart[data-key="{_css(key)}"] .main-svg', timeout=30_000)
        titles = page.eval_on_selector_all(
            ".chart-card .chart-title", "els => els.map(e => e.textContent)"
        )
        assert {"<b>x</b>", XSS_METRIC, "val/loss"} <= set(titles)
        legend = page.eval_on_selector_all(
            ".chart .legendtext", "els => els.map(e => e.textContent)"
        )
        assert all(t == "n1" for t in legend)  # one trace per chart: plotly hides the legend
        assert page.inner_text("#crumb").startswith(XSS_RUN)
        panel = page.inner_text("#tunables")
        assert XSS_TUNABLE in panel
        page.click('.node[data-node="n1"]')
        page.wait_for_selector("#restore-here")
        # markup became text: no element was made from a name, no handler ran
        assert (
            page.evaluate(
                "document.querySelectorAll('#main img, .chart b, .chart i, a[href^=javascript]').length"
            )
            == 0
        )
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__xss") is None
        assert dialogs == []
        browser.close()


def _css(key: str) -> str:
    return key.replace("\\", "\\\\").replace('"', '\\"')

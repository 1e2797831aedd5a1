"""The dashboard in real headless Chromium, against `retune ui`, while a real training runs.

Needs Debian's chromium (``make test`` installs it). Outside CI a machine without it skips these
tests with the reason; in CI (``CI=true``) a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import retune
from retune.server._headless import CHROMIUM, CHROMIUM_ARGS
from retune.store import open_store

TRAINER = Path(__file__).parents[1] / "control" / "trainer.py"

pytestmark = pytest.mark.slow

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the dashboard tests: run `make test`")
    pytest.skip("Debian chromium is not installed (make test installs it)", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests._wait import eventually  # noqa: E402
from tests.server._net import free_port  # noqa: E402


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[dict[str, Any]]:
    store = str(tmp_path / "ui.db")
    trainer = subprocess.Popen(
        [sys.executable, str(TRAINER), store, "e2e", "1000000", "0.01"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    eventually(lambda: _step(store) >= 5, timeout=60)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "retune", "ui", "--port", str(port), "--store", store],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: _answers(url), timeout=60)
    try:
        yield {"store": store, "url": url, "trainer": trainer}
    finally:
        for proc in (trainer, ui):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _step(store: str) -> int:
    try:
        return open_store(store).get_run("e2e").step
    except retune.RetuneError:
        return 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/runs", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def _points(page: Page) -> int:
    return int(page.get_attribute('.chart[data-key="loss"]', "data-points") or 0)


def test_watch_steer_and_branch_from_the_browser(dashboard: dict[str, Any], page: Page) -> None:
    store, url = dashboard["store"], dashboard["url"]
    page.goto(url)
    page.wait_for_selector("#runs tr[data-run] >> text=e2e")
    page.click("text=e2e")
    page.wait_for_selector('.chart[data-key="loss"] .main-svg')
    first = _points(page)
    eventually(lambda: _points(page) > first, timeout=60)  # the charts grow

    # a bad value shows the error and nothing is applied
    page.fill('input[data-name="lr"][data-group="0"]', "-1")
    page.click("#apply")
    page.wait_for_selector("#error >> text=lr must be >= 0")
    run = open_store(store).get_run("e2e")
    assert [e["value"] for e in run.tunables if e["name"] == "lr"] == [[0.1, 0.05]]
    assert [c.status for c in open_store(store).list_commands(run.id)] == ["rejected"]

    # lr changed in the panel is applied in the trainer
    page.fill('input[data-name="lr"][data-group="0"]', "0.02")
    page.click("#apply")
    page.wait_for_selector("#command-status li.cmd-applied", timeout=30_000)
    applied = open_store(store).list_commands(run.id)[-1]
    assert (applied.status, applied.source, applied.result["diff"]) == (
        "applied", "ui", {"lr[body]": [0.1, 0.02]},
    )  # fmt: skip
    # the trainer logs optimizer.param_groups[0]["lr"] every step: the optimizer holds it
    eventually(lambda: _step(store) > (applied.applied_step or 0) + 3, timeout=60)
    lr = retune.load("e2e", store=store).metric("lr")
    after = lr.values[lr.steps > (applied.applied_step or 0)]
    assert len(after) and set(after.tolist()) == {0.02}

    # "restore here" on the root creates a new branch that appears in the tree
    page.click('.node[data-node="n1"]')
    page.fill("#restore-values", "clip_norm=0.5")
    page.click("#restore-here")
    page.wait_for_selector('.node[data-node="n3"]', timeout=30_000)
    nodes = open_store(store).list_nodes(run.id)
    assert [(n.id, n.parent, n.change_kind) for n in nodes] == [(1, None, "start"), (2, 1, "set"),
                                                                  (3, 1, "restore")]  # fmt: skip
    assert nodes[2].diff == {"clip_norm": [1.0, 0.5]}

    # the optimizer itself holds what the store says: stop, and read the trainer's last word
    retune.connect("e2e", store=store).stop(wait=True)
    out, _ = dashboard["trainer"].communicate(timeout=60)
    groups = json.loads(out.strip().splitlines()[-1])
    assert [g["lr"] for g in groups] == [0.1, 0.05]  # the restore went back to before the set


def test_a_foreign_origin_is_refused(dashboard: dict[str, Any], page: Page) -> None:
    store, url = dashboard["store"], dashboard["url"]
    page.goto("about:blank")
    status = page.evaluate(
        """async (url) => {
            try {
                const r = await fetch(url + "/api/runs/e2e/commands", {method: "POST",
                    headers: {"Content-Type": "application/json"}, body: '{"kind": "pause"}'});
                return r.status;
            } catch (e) { return "blocked: " + e; }
        }""",
        url,
    )
    refused = httpx.post(f"{url}/api/runs/e2e/commands", json={"kind": "pause"},
                         headers={"Origin": "http://evil.example"})  # fmt: skip
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden_origin"
    assert status == 403 or str(status).startswith("blocked")
    assert open_store(store).list_commands(open_store(store).get_run("e2e").id) == []


def test_a_non_loopback_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retune", "ui", "--host", "0.0.0.0", "--store", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("retune: error: refusing to serve on 0.0.0.0 without a token")


def test_the_control_panel_shows_the_live_value_of_each_tunable(
    dashboard: dict[str, Any], page: Page
) -> None:
    """The trainer writes the optimizer's current values into the run's record at each flush
    (a scheduler moving lr); the panel shows the record's value as it changes, and a value
    being typed is never overwritten."""
    store, url = dashboard["store"], dashboard["url"]
    page.goto(f"{url}/runs/e2e")
    live = 'td.live[data-name="lr"][data-group="1"]'
    page.wait_for_selector(f"{live} >> text=0.05")
    page.fill('input[data-name="clip_norm"]', "0.7")  # a half-typed edit
    opened = open_store(store)
    record = opened.get_run("e2e")
    moved = [dict(t, value=[0.1, 0.0125]) if t["name"] == "lr" else t for t in record.tunables]
    opened.update_run(record.id, tunables=moved)  # as the trainer's flush writes it
    page.wait_for_selector(f"{live} >> text=0.0125", timeout=30_000)
    assert page.input_value('input[data-name="clip_norm"]') == "0.7"


def test_every_chart_draws_and_a_failed_one_shows_its_own_error(tmp_path: Path, page: Page) -> None:
    from tests.server._fuzz import HOSTILE_METRICS, live_dashboard, populate

    url = f"sqlite:///{tmp_path / 'charts.db'}"
    populate(url, "charts")
    with live_dashboard(url) as base:
        # the request of one chart fails (as a flaky proxy would); every other chart draws
        page.route(lambda u: "/branches?key=a%252Fb&" in u,
                   lambda route: route.fulfill(status=502, body="bad gateway"))  # fmt: skip
        page.goto(f"{base}/runs/charts")
        for key in ("loss", "val/loss", "<b>x</b>", "ü/ß ?#"):
            page.wait_for_selector(f'.chart[data-key="{key}"] .main-svg', timeout=30_000)
            assert int(page.get_attribute(f'.chart[data-key="{key}"]', "data-points") or 0) == 40
        error = page.wait_for_selector('.chart[data-key="a%2Fb"] .chart-error')
        assert error is not None and "HTTP 502" in error.inner_text()
        assert set(HOSTILE_METRICS) <= set(
            page.eval_on_selector_all(".chart", "els => els.map(e => e.dataset.key)")
        )


def test_a_command_being_applied_shows_applying_then_its_outcome(
    tmp_path: Path, page: Page
) -> None:
    """A trainer claims a command (pending -> applying) before it applies it; the panel must
    keep following it until it is applied or rejected, not report it as rejected."""
    from tests.server._fuzz import live_dashboard

    url = f"sqlite:///{tmp_path / 'held.db'}"
    store = open_store(url)
    record = store.create_run("held", config={}, meta={}, tunables=[], root_values={})
    with live_dashboard(url) as base:
        page.goto(f"{base}/runs/{record.id}")
        page.click("#checkpoint")
        pending = page.wait_for_selector("#command-status li.cmd-pending")
        assert pending is not None
        command_id = int(pending.get_attribute("data-command") or 0)
        assert store.claim_command(command_id) is not None  # as the training process does
        page.wait_for_selector("#command-status li.cmd-applying >> text=applying")
        store.resolve_command(command_id, status="applied", applied_step=0, node=1)
        page.wait_for_selector("#command-status li.cmd-applied >> text=applied at step 0")
        assert page.inner_text("#error") == ""
    store.close()

"""``retune report`` writes one file that opens in Debian's Chromium with the network blocked
and shows the tree and a chart per metric, and nothing in it runs or loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retune.server._headless import CHROMIUM, CHROMIUM_ARGS
from tests.viz.conftest import BigRun

pytestmark = pytest.mark.slow  # one Chromium, one CLI subprocess: ~6 s

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the report test: run `make test`")
    pytest.skip("Debian chromium is not installed (make test installs it)", allow_module_level=True)

from playwright.sync_api import ConsoleMessage, Request, Route, sync_playwright  # noqa: E402


def test_report_opens_offline_with_the_tree_and_charts(big_run: BigRun, tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    done = subprocess.run([sys.executable, "-m", "retune", "report", big_run.run_id, "-o",
                           str(out), "--store", big_run.url], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    blocked: list[str] = []
    failed: list[str] = []

    def block(route: Route) -> None:  # the network is closed: only the file itself may load
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    def record_failure(request: Request) -> None:
        failed.append(request.url)

    errors: list[str] = []  # a load the page's CSP refused would show here

    def record_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(offline=True)
        context.route("**/*", block)
        page = context.new_page()
        page.on("requestfailed", record_failure)
        page.on("console", record_console)
        page.goto(out.as_uri())
        drawn = page.evaluate("""() => ({
          trees: document.querySelectorAll('svg.retune-tree').length,
          nodes: document.querySelectorAll('svg.retune-tree .rt-node').length,
          edges: document.querySelectorAll('svg.retune-tree .rt-edge').length,
          charts: [...document.querySelectorAll('svg.retune-chart')].map((c) => ({
            key: c.dataset.key, lines: c.querySelectorAll('.rt-line').length,
            changes: c.querySelectorAll('.rt-change').length,
            width: c.getBoundingClientRect().width })),
          treeWidth: document.querySelector('svg.retune-tree').getBoundingClientRect().width,
          scripts: document.querySelectorAll('script').length,
          audit: [...document.querySelectorAll('#audit li')].map((li) => li.textContent),
          best: document.querySelectorAll('#best tbody tr').length,
          config: document.querySelector('#config').innerText,
        })""")
        browser.close()
    assert drawn["trees"] == 1 and drawn["nodes"] == 500 and drawn["edges"] == 499
    assert drawn["treeWidth"] > 500
    # names with "/" and markup, as written (a byte XML cannot hold shows as U+FFFD)
    keys = sorted(k.replace("\x01", "\ufffd") for k in big_run.keys)
    assert sorted(c["key"] for c in drawn["charts"]) == keys
    for chart in drawn["charts"]:
        assert chart["lines"] > 0 and chart["changes"] > 100 and chart["width"] > 200, chart
    assert blocked == [] and failed == [] and errors == []  # it asked for nothing
    assert drawn["scripts"] == 0  # the hostile names stayed text
    assert '<script>alert("x")</script>' in drawn["config"]
    assert drawn["best"] == 2
    applied, rejected, pending = drawn["audit"]
    assert "mia (cli) asked to set lr<script>" in applied
    assert "Applied at step 40, on new node n2 (lr<script>" in applied
    assert rejected.endswith("Rejected: momentum: unknown tunable.")
    assert "asked to restore n3@100 with lr" in pending and "Not applied yet (pending)" in pending

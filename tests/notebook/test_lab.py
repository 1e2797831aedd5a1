"""The example notebook in a real JupyterLab, in Debian's Chromium: the inline chart gains
points while the background training runs, and the tree picture appears with its three
nodes. One Lab session (its start-up is slow); bounded waits on what the page shows.

Needs Debian's chromium; outside CI a machine without it skips, in CI it is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab")
pytest.importorskip("sklearn")
pytest.importorskip("torch")

from retune.server._headless import CHROMIUM, CHROMIUM_ARGS
from retune.store import open_store

# JupyterLab's start and its first page load are slow on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the notebook test: run `make test`")
    pytest.skip("Debian chromium is not installed (make test installs it)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.notebook._lab import Lab, play  # noqa: E402


def test_the_notebook_in_jupyterlab(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'retune.db'}"
    with Lab(tmp_path, store_url) as lab, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            seen = play(page, lab, shots=tmp_path)
        finally:
            browser.close()
    # the chart grew, redraw after redraw, while the job's view said it was running
    assert len(seen.chart_steps) >= 3
    assert seen.chart_steps == sorted(set(seen.chart_steps))
    assert seen.tree_nodes == 3  # n1, the set's n2 and the restore's n3
    assert seen.job_state == "stopped"
    with open_store(store_url, create=False) as store:
        run = store.get_run("digits-notebook")
        assert run.status == "stopped"
        assert {c.source for c in store.list_commands(run.id)} == {"notebook"}
        assert len(store.list_nodes(run.id)) == 3
    assert all(shot.stat().st_size > 10_000 for shot in seen.screenshots)

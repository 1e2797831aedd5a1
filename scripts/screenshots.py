"""Regenerate the dashboard screenshots in docs/img (``make screenshots``).

Trains the digits demo in a subprocess, changes lr and restores from the root with another
weight decay (two branches), serves the dashboard, and has headless Chromium capture the runs
page, the run page and the tree, once in the light and once in the dark colour scheme
(``NAME.png`` and ``NAME-dark.png``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from _demo import CLI, start_demo, wait_for_step
from playwright.sync_api import sync_playwright

from retune.server import serve_in_thread
from retune.server._headless import CHROMIUM, CHROMIUM_ARGS
from retune.store import open_store

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "retune.db")
        trainer = start_demo(store, epochs=12, step_delay=0.03)
        wait_for_step(store, "digits-cnn", 70)
        subprocess.run([*CLI, "set", "digits-cnn", "lr=5e-4", "--store", store], check=True)
        wait_for_step(store, "digits-cnn", 140)
        subprocess.run([*CLI, "restore", "digits-cnn", "n1", "weight_decay=1e-2", "--store", store],
                       check=True)  # fmt: skip
        wait_for_step(store, "digits-cnn", 170)
        server, url = serve_in_thread(open_store(store), port=8799)
        with open_store(store) as opened:
            run_id = opened.get_run("digits-cnn").id
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for scheme, suffix in (("light", ""), ("dark", "-dark")):
                context = browser.new_context(viewport={"width": 1500, "height": 1000},
                                              color_scheme=scheme)  # type: ignore[arg-type]  # fmt: skip
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("#runs tbody tr")
                page.screenshot(path=str(OUT / f"runs{suffix}.png"))
                page.goto(f"{url}runs/{run_id}")
                page.wait_for_selector('#charts .chart[data-key="loss"] .main-svg')
                page.wait_for_selector('.node[data-node="n3"]')
                page.wait_for_selector("#tree-picture svg")
                page.wait_for_function("[...document.querySelectorAll('#charts .chart')].every("
                                       "(c) => Number(c.dataset.points || 0) > 0)")  # fmt: skip
                page.screenshot(path=str(OUT / f"run{suffix}.png"), full_page=True)
                page.click('.node[data-node="n1"]')
                page.locator("aside").screenshot(path=str(OUT / f"tree{suffix}.png"))
                # the node compare view: the set's branch against the restore's
                page.click('#tree .node[data-node="n2"]', modifiers=["Shift"])
                page.click('#tree .node[data-node="n3"]', modifiers=["Shift"])
                page.click("#compare-nodes")
                page.wait_for_selector("#compare:not([hidden]) table")
                page.wait_for_selector("#compare .chart .main-svg")
                page.locator("#compare").screenshot(path=str(OUT / f"compare{suffix}.png"))
                context.close()
            browser.close()
        server.should_exit = True
        trainer.wait(timeout=180)
    print(f"screenshots written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

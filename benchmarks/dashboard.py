"""Dashboard speed: the API on a 1,000,000-point metric, and Chromium on a big run.

Run with ``.venv/bin/python benchmarks/dashboard.py`` (part of ``make bench``; needs Debian's
chromium). Measured against a real ``uvicorn`` server on loopback:

1. ``GET /api/runs/{run}/metrics/loss?max_points=2000`` on a 1,000,000-point metric;
2. ``GET /api/runs`` and headless Chromium loading the runs page with 1,000 runs (each with
   three metrics and two hyperparameters) until every row is on the page (a new browser
   context per load, cache disabled);
3. the tree picture of the 500-node run below: ``GET /api/runs/{run}/tree.svg`` (read, layout,
   SVG), and headless Chromium opening that URL in a new context until all 500 nodes are in
   its document (the picture the dashboard, notebook and report embed);
4. headless Chromium loading the run page of a run with 500 nodes and 200,000 points per
   metric until every chart is drawn and the whole tree is on the page: cold (a new browser
   context per load and the cache disabled over CDP, so plotly.min.js is fetched and parsed
   every time; checked by counting cache hits, which must be 0) and warm (one context, cache
   on, after a first untimed load). The docs quote the cold figure.

After each timed request or load, outside the timing, the result is checked: the spike
survives downsampling; all 1,000 runs are listed with their last metric; the picture
parses as XML with all 500 nodes and 499 edges; every chart has points and all 500 tree
nodes are on the page.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    add_output_arguments,
    free_port,
    machine_line,
    print_json,
    table,
    write_results,
)


def _fill(store_url: str, name: str, points: int, nodes: int, keys: tuple[str, ...]) -> str:
    """A run with ``nodes`` nodes (a long chain with side branches) and ``points`` per key."""
    from retune.store import MetricChunk, open_store

    store = open_store(store_url)
    run = store.create_run(name, config={}, meta={}, tunables=[])
    rng = random.Random(0)
    per_node = points // nodes
    starts = [0]
    store.create_node(run.id, parent=None, start_step=0, change_kind="start", values={},
                      diff={}, created_by="bench")  # fmt: skip
    for node in range(2, nodes + 1):
        parent = node - 1 if rng.random() > 0.1 else rng.randrange(1, node)
        start = starts[parent - 1] + per_node // 2
        starts.append(start)
        store.create_node(run.id, parent=parent, start_step=start, change_kind="set",
                          values={"lr": 0.1 / node}, diff={"lr": [0.1, 0.1 / node]},
                          created_by="bench")  # fmt: skip
    chunk = 50_000
    for key in keys:
        values = np.sin(np.arange(points) / 1000.0) + np.random.default_rng(1).normal(
            0, 0.1, points
        )
        values[points // 3] = 25.0  # a spike that must survive downsampling
        steps = np.arange(1, points + 1, dtype=np.int64)
        owner = np.minimum(steps // per_node + 1, nodes)
        for lo in range(0, points, chunk):
            part = slice(lo, lo + chunk)
            for node in np.unique(owner[part]):
                mask = owner[part] == node
                store.append_metrics(run.id, [MetricChunk(int(node), key, steps[part][mask],
                                                          values[part][mask],
                                                          np.zeros(int(mask.sum())))])  # fmt: skip
    store.update_run(run.id, step=points, status="finished")
    store.close()
    return run.id


def _fill_runs(store_url: str, count: int) -> None:
    """``count`` finished runs, each with lr / weight decay and 50 points of three metrics."""
    from retune.store import MetricChunk, open_store

    store = open_store(store_url)
    steps = np.arange(50, dtype=np.int64)
    for index in range(count):
        lr = 10 ** -(1 + index % 4)
        decay = 1e-4 * (index % 3)
        tunables = [{"name": "lr", "type": "float", "value": lr},
                    {"name": "weight_decay", "type": "float", "value": decay}]  # fmt: skip
        run = store.create_run(f"sweep-{index}", config={}, meta={}, tunables=tunables,
                               root_values={"lr": lr}, created_by="bench")  # fmt: skip
        values = 1.0 / (1 + steps * lr * 10)
        chunks = [MetricChunk(1, key, steps, values + shift, np.zeros(50))
                  for key, shift in (("loss", 0.0), ("val/loss", 0.1), ("acc", -1.0))]  # fmt: skip
        store.append_metrics(run.id, chunks, step=49)
        store.update_run(run.id, status="finished", ended_at=time.time())
    store.close()


RUNS_READY = "document.querySelectorAll('#runs tbody tr').length === 1000"
RUNS_CHECK = """() => [...document.querySelectorAll('#runs tbody tr')].filter(
  (r) => r.querySelector('td[data-column="last:val/loss"]')?.textContent.trim() !== '-').length"""


def _cold_context(browser: Any, width: int, height: int) -> tuple[Any, Any, Any]:
    """A new context, page and CDP session with the browser cache off: every load is cold."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    return context, page, cdp


def runs_page_loads(base: str, repeat: int) -> list[float]:
    """Cold loads of the runs page (new context, cache disabled) until all 1,000 rows show."""
    from playwright.sync_api import sync_playwright

    from retune.server._headless import CHROMIUM, CHROMIUM_ARGS

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(repeat):
            context, page, _cdp = _cold_context(browser, 1920, 1080)
            start = time.perf_counter()
            page.goto(base)
            page.wait_for_function(RUNS_READY, timeout=60_000)
            out.append(time.perf_counter() - start)
            if page.evaluate(RUNS_CHECK) != 1000:
                raise SystemExit("dashboard: the runs page did not show every run's val/loss")
            context.close()
        browser.close()
    return out


# Every chart drawn (plotly puts several .main-svg in one chart, so count per chart) with
# points, and the whole tree on the page.
PAGE_READY = """(() => {
  const charts = [...document.querySelectorAll('.chart')];
  return charts.length >= 3 && document.querySelectorAll('.node').length === 500 &&
    charts.every((c) => c.querySelector('.main-svg') && Number(c.dataset.points || 0) > 0);
})()"""
# Drawn means drawn with data: every chart has points, every tree node is on the page.
PAGE_CHECK = """() => ({
  charts: [...document.querySelectorAll('.chart')].map((c) => Number(c.dataset.points || 0)),
  nodes: document.querySelectorAll('.node').length,
})"""


class _CacheWatch:
    """Counts the page's responses, and those the browser served from its cache (CDP events)."""

    def __init__(self, cdp: Any) -> None:
        self.responses = 0
        self.from_cache = 0
        self.plotly_from_network = 0
        cdp.on("Network.requestServedFromCache", self._served_from_cache)
        cdp.on("Network.responseReceived", self._response)

    def _served_from_cache(self, _event: dict[str, Any]) -> None:
        self.from_cache += 1

    def _response(self, event: dict[str, Any]) -> None:
        response = event["response"]
        self.responses += 1
        cached = response.get("fromDiskCache") or response.get("fromMemoryCache")
        if cached:
            self.from_cache += 1
        elif "plotly" in response["url"] and response["status"] == 200:
            self.plotly_from_network += 1


def _load(page: Any, url: str) -> float:
    """Seconds until the run page is drawn; then (untimed) check it is drawn with data."""
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(PAGE_READY, timeout=60_000)
    took = time.perf_counter() - start
    drawn = page.evaluate(PAGE_CHECK)
    if len(drawn["charts"]) < 3 or min(drawn["charts"]) == 0 or drawn["nodes"] != 500:
        raise SystemExit(f"dashboard: the run page was not fully drawn: {drawn}")
    return took


def page_loads(base: str, run_id: str, repeat: int) -> dict[str, Any]:
    """Cold loads (a new browser context each, cache disabled over CDP) and warm loads (one
    context, cache on, after a first untimed load); the cache hits of each are counted."""
    from playwright.sync_api import sync_playwright

    from retune.server._headless import CHROMIUM, CHROMIUM_ARGS

    url = f"{base}runs/{run_id}"
    cold: list[float] = []
    warm: list[float] = []
    cold_hits = warm_hits = plotly_fetches = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(repeat):
            context, page, cdp = _cold_context(browser, 1400, 1000)
            watch = _CacheWatch(cdp)
            cold.append(_load(page, url))
            cold_hits += watch.from_cache
            plotly_fetches += watch.plotly_from_network
            context.close()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        _load(page, url)  # fills the cache
        watch = _CacheWatch(cdp)
        for _ in range(repeat):
            warm.append(_load(page, url))
        warm_hits = watch.from_cache
        context.close()
        browser.close()
    if cold_hits or plotly_fetches != repeat:
        raise SystemExit(
            f"dashboard: cold loads were not cold ({cold_hits} responses from the cache, "
            f"plotly fetched {plotly_fetches} times over {repeat} loads)"
        )
    return {"cold_s": cold, "warm_s": warm, "cold_cache_hits": cold_hits,
            "warm_cache_hits": warm_hits, "plotly_fetches_cold": plotly_fetches}  # fmt: skip


def tree_picture_times(base: str, run_id: str, repeat: int) -> dict[str, list[float]]:
    """``GET .../tree.svg`` over HTTP, then Chromium opening it cold (a new context, cache
    off) until its 500 nodes are in the document; each checked after its timing."""
    import xml.etree.ElementTree as ET

    import httpx
    from playwright.sync_api import sync_playwright

    from retune.server._headless import CHROMIUM, CHROMIUM_ARGS

    url = f"{base}api/runs/{run_id}/tree.svg"
    api: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = httpx.get(url, timeout=60)
        api.append(time.perf_counter() - start)
        root = ET.fromstring(response.text)
        classes = [(e.get("class") or "").split() for e in root.iter()]
        nodes = sum("rt-node" in c for c in classes)
        edges = sum("rt-edge" in c for c in classes)
        if response.status_code != 200 or nodes != 500 or edges != 499:
            raise SystemExit(f"dashboard: tree.svg had {nodes} nodes and {edges} edges")
    browser_s: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(repeat):
            context, page, _cdp = _cold_context(browser, 1400, 1000)
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_function(
                "document.querySelectorAll('.rt-node').length === 500", timeout=60_000
            )
            browser_s.append(time.perf_counter() - start)
            context.close()
        browser.close()
    return {"api_s": api, "chromium_s": browser_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeat = 2
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    import httpx

    from retune.server import serve_in_thread
    from retune.store import open_store

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'dash.db'}"
        big = _fill(url, "million", 1_000_000, 1, ("loss",))
        tree = _fill(url, "tree", 200_000, 500, ("loss", "acc", "lr"))
        runs_url = f"sqlite:///{Path(folder) / 'runs.db'}"
        _fill_runs(runs_url, 1000)
        runs_server, runs_base = serve_in_thread(open_store(runs_url), port=free_port())
        list_times = []
        try:
            for _ in range(args.repeat):
                start = time.perf_counter()
                listed = httpx.get(f"{runs_base}api/runs", timeout=30).json()
                list_times.append(time.perf_counter() - start)
                if len(listed) != 1000 or any("val/loss" not in r["last_metrics"] for r in listed):
                    raise SystemExit("dashboard: /api/runs lost runs or their last metrics")
            runs_pages = runs_page_loads(runs_base, args.repeat)
        finally:
            runs_server.should_exit = True
        server, base = serve_in_thread(open_store(url), port=free_port())
        api_times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            body = httpx.get(
                f"{base}api/runs/{big}/metrics/loss?max_points=2000", timeout=30
            ).json()
            api_times.append(time.perf_counter() - start)
            if not (
                body["total"] == 1_000_000
                and 0 < len(body["steps"]) <= 2000
                and max(body["values"]) == 25.0
            ):
                raise SystemExit("dashboard: the downsampled metric lost points or the spike")
        try:
            picture = tree_picture_times(base, tree, args.repeat)
            pages = page_loads(base, tree, args.repeat)
        finally:
            server.should_exit = True
    result = {
        "machine": machine_line(["fastapi", "uvicorn", "plotly"]),
        "settings": {"repeat": args.repeat},
        "api_1M_to_2000_s": statistics.median(api_times),
        "api_runs_s": api_times,
        "api_runs_1000_s": statistics.median(list_times),
        "api_runs_1000_runs_s": list_times,
        "runs_page_1000_s": statistics.median(runs_pages),
        "runs_page_1000_runs_s": runs_pages,
        "tree_svg_api_s": statistics.median(picture["api_s"]),
        "tree_svg_chromium_s": statistics.median(picture["chromium_s"]),
        "tree_svg_api_runs_s": picture["api_s"],
        "tree_svg_chromium_runs_s": picture["chromium_s"],
        "page_cold_s": statistics.median(pages["cold_s"]),
        "page_warm_s": statistics.median(pages["warm_s"]),
        "page_cold_runs_s": pages["cold_s"],
        "page_warm_runs_s": pages["warm_s"],
        "cold_cache_hits": pages["cold_cache_hits"],
        "warm_cache_hits": pages["warm_cache_hits"],
        "plotly_fetches_cold": pages["plotly_fetches_cold"],
    }
    write_results(args.out, "dashboard", args.quick, result)
    if args.json:
        print_json(result)
        return 0
    print(result["machine"])
    rows = [
        ["API: 1,000,000-point metric -> 2,000 points", f"{result['api_1M_to_2000_s']:.3f}",
         "< 0.2"],
        ["API: runs list, 1,000 runs with last metrics", f"{result['api_runs_1000_s']:.3f}", "-"],
        ["Chromium: runs page, 1,000 runs, cold", f"{result['runs_page_1000_s']:.3f}", "< 1"],
        ["API: tree.svg, 500 nodes", f"{result['tree_svg_api_s']:.3f}", "< 2"],
        ["Chromium: tree.svg, 500 nodes, cold", f"{result['tree_svg_chromium_s']:.3f}", "< 2"],
        ["Chromium: run page, cold (cache disabled)", f"{result['page_cold_s']:.3f}", "< 2"],
        ["Chromium: run page, warm (cached plotly)", f"{result['page_warm_s']:.3f}", "-"],
    ]  # fmt: skip
    print(table([f"measurement (median of {args.repeat})", "seconds", "target"], rows))
    print(f"cold loads: {pages['cold_cache_hits']} responses from the cache; warm loads: "
          f"{pages['warm_cache_hits']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

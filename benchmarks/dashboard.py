"""Dashboard speed: the API on a 1,000,000-point metric, and Chromium on a big run.

Run with ``.venv/bin/python benchmarks/dashboard.py`` (part of ``make bench``; needs Debian's
chromium). Measured against a real ``uvicorn`` server on loopback:

1. ``GET /api/runs/{run}/metrics/loss?max_points=2000`` on a 1,000,000-point metric;
2. headless Chromium loading the run page of a run with 500 nodes and 200,000 points per
   metric until every chart is drawn and the whole tree is on the page.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, print_json, table


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import httpx

    from retune.server import serve_in_thread
    from retune.store import open_store

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'dash.db'}"
        big = _fill(url, "million", 1_000_000, 1, ("loss",))
        tree = _fill(url, "tree", 200_000, 500, ("loss", "acc", "lr"))
        server, base = serve_in_thread(open_store(url), port=8798)
        api_times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            body = httpx.get(
                f"{base}api/runs/{big}/metrics/loss?max_points=2000", timeout=30
            ).json()
            api_times.append(time.perf_counter() - start)
        assert (
            body["total"] == 1_000_000
            and len(body["steps"]) <= 2000
            and max(body["values"]) == 25.0
        )
        from playwright.sync_api import sync_playwright

        from retune.server._headless import CHROMIUM, CHROMIUM_ARGS

        page_times = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for _ in range(args.repeat):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                start = time.perf_counter()
                page.goto(f"{base}runs/{tree}")
                page.wait_for_function(
                    "document.querySelectorAll('.chart .main-svg').length >= 3 && "
                    "document.querySelectorAll('.node').length === 500",
                    timeout=60_000,
                )
                page_times.append(time.perf_counter() - start)
                page.close()
            browser.close()
        server.should_exit = True
    result = {
        "machine": machine_line(["fastapi", "uvicorn", "plotly"]),
        "api_1M_to_2000_s": statistics.median(api_times),
        "page_500_nodes_200k_points_s": statistics.median(page_times),
    }
    if args.json:
        print_json(result)
        return 0
    print(result["machine"])
    api_s = f"{result['api_1M_to_2000_s']:.3f}"
    page_s = f"{result['page_500_nodes_200k_points_s']:.3f}"
    rows = [
        ["API: 1,000,000-point metric -> 2,000 points", api_s, "< 0.2"],
        ["Chromium: run page, 500 nodes, 200,000 points/metric", page_s, "< 2"],
    ]
    print(table([f"measurement (median of {args.repeat})", "seconds", "target"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

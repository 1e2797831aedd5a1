"""The dashboard's second version in real headless Chromium (issue 13), one server and one
browser for the module: runs compared, HParams and parallel coordinates, smoothing, stable
branch colours, sentences in the audit, state-aware controls, tags and notes, dark mode.

The store is written directly (runs, nodes, metrics, commands as a trainer records them), so
each test controls exactly what the page must show; the live-run test moves the run while the
page is open, as a trainer would.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from retune.server._headless import CHROMIUM, CHROMIUM_ARGS
from retune.store import MetricChunk, Store, open_store

pytestmark = pytest.mark.slow

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the dashboard tests: run `make test`")
    pytest.skip("Debian chromium is not installed (make test installs it)", allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

from tests._wait import eventually  # noqa: E402
from tests.server._fuzz import live_dashboard  # noqa: E402

LR = {"alpha": 0.1, "beta": 0.01, "gamma": 0.001}
TUNABLES = [{"name": "lr", "kind": "float", "source": "optimizer", "groups": ["body"], "value": [0.1], "low": 0.0},
            {"name": "wd", "kind": "float", "value": 0.0, "low": 0.0}]  # fmt: skip


def _points(store: Store, run: str, node: int, start: int, stop: int, scale: float) -> None:
    steps = np.arange(start, stop, dtype=np.int64)
    rng = np.random.default_rng(node)
    loss = scale / (1 + steps / 10) + rng.normal(0, 0.05, len(steps))
    times = 1_700_000_000.0 + steps.astype(float)
    store.append_metrics(run, [MetricChunk(node, "loss", steps, loss, times),
                               MetricChunk(node, "val/loss", steps, loss + 0.1, times),
                               MetricChunk(node, "train/acc", steps, 1 - loss / 4, times)])  # fmt: skip


def _run(store: Store, name: str, lr: float, status: str = "finished") -> str:
    tunables = [dict(TUNABLES[0], value=[lr]), TUNABLES[1]]
    meta = {"invocation": {"argv": ["train.py", "--epochs", "3"]}}
    run = store.create_run(name, config={}, meta=meta, tunables=tunables,
                           root_values={"lr": lr, "wd": 0.0}, created_by="mia")  # fmt: skip
    _points(store, run.id, 1, 0, 40, 1.0)
    return run.id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'dash.db'}"
    store = open_store(url)
    ids = {name: _run(store, name, lr) for name, lr in LR.items()}
    alpha = ids["alpha"]
    # alpha: a set at step 20 (n2), then a restore of n1 at step 10 with another wd (n3)
    store.end_node(alpha, 1, 20)
    store.create_node(alpha, parent=1, start_step=20, change_kind="set", values={"lr": 0.05, "wd": 0.0},
                      diff={"lr": [0.1, 0.05]}, created_by="mia")  # fmt: skip
    _points(store, alpha, 2, 20, 40, 0.8)
    store.create_node(alpha, parent=1, start_step=10, change_kind="restore", values={"lr": 0.1, "wd": 0.01},
                      diff={"wd": [0.0, 0.01]}, created_by="mia")  # fmt: skip
    _points(store, alpha, 3, 10, 40, 1.2)
    applied = store.submit_command(alpha, "set", {"values": {"lr": 0.05}, "group": 0, "mode": "rescale"},
                                   source="ui", user="mia")  # fmt: skip
    store.resolve_command(applied.id, status="applied", applied_step=20, node=2,
                          result={"diff": {"lr[body]": [0.1, 0.05]}})  # fmt: skip
    store.submit_command(alpha, "set", {"values": {"lr": -1}, "group": 0}, source="cli", user="mia",
                         status="rejected", reason="lr must be >= 0, got -1")  # fmt: skip
    explore = store.submit_command(alpha, "explore", {"values": {"lr": [0.01, 0.003]}, "steps": 5,
                                   "metric": "val/loss", "goal": "min", "from": "c1",
                                   "then": "best", "max_candidates": 16, "group": None,
                                   "mode": "rescale", "score": "last"},
                                   source="ui", user="mia")  # fmt: skip
    store.resolve_command(explore.id, status="applied", applied_step=39, node=3,
                          result={"winner": {"node": 3, "values": {"lr": 0.01}},
                                  "candidates": [{"node": 3, "score": 0.2}]})  # fmt: skip
    for name in LR:
        store.update_run(ids[name], status="finished", step=39, ended_at=time.time())
    live = _run(store, "steer", 0.1, status="running")
    store.update_run(live, status="running", step=39, heartbeat_at=time.time())
    paused = _run(store, "held", 0.1)
    store.update_run(paused, status="paused", step=39, heartbeat_at=time.time())
    ids.update(steer=live, held=paused)
    with live_dashboard(url) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield {"url": base, "store": store, "ids": ids, "browser": browser}
        finally:
            browser.close()
            store.close()


@pytest.fixture(scope="module")
def page(site: dict[str, Any]) -> Iterator[Page]:
    browser: Browser = site["browser"]
    context = browser.new_context(viewport={"width": 1366, "height": 768}, color_scheme="light")
    yield context.new_page()
    context.close()


def _no_table_overflows(page: Page) -> None:
    """No table is wider than its card (tables meant to scroll sit in a .scroll box)."""
    wide = page.evaluate(
        """() => [...document.querySelectorAll('.card table')].filter(t => {
             const card = t.closest('.card'); const box = t.closest('.scroll') || card;
             return t.offsetParent !== null && box === card && t.scrollWidth > card.clientWidth;
           }).map(t => t.id || t.className)"""
    )
    assert wide == []


def _chart_data(page: Page, selector: str) -> list[dict[str, Any]]:
    return page.eval_on_selector(  # type: ignore[no-any-return]
        selector,
        "el => el.data.map(t => ({name: t.name, meta: t.meta, y: t.y, color: t.line.color,"
        " dash: t.line.dash, visible: t.visible, nodes: t.customdata}))",
    )


def test_three_runs_compared_overlaid_with_hparams_and_parallel_coordinates(
    site: dict[str, Any], page: Page
) -> None:
    ids = site["ids"]
    page.goto(site["url"])
    page.wait_for_selector(f'#runs tr[data-run="{ids["gamma"]}"]')
    # the chosen columns: a metric's last value and the hyperparameter lr are there by default
    headers = page.eval_on_selector_all("#runs thead th", "els => els.map(e => e.dataset.column)")
    assert {"status", "tags", "last:val/loss", "hp:lr"} <= set(headers)
    # sort by lr, ascending: gamma (0.001), beta, ... alpha and the others (0.1)
    page.click('#runs th[data-column="hp:lr"]')
    order = page.eval_on_selector_all("#runs tbody tr", "els => els.map(e => e.dataset.run)")
    assert order[:2] == [ids["gamma"], ids["beta"]]
    # filter by name
    page.fill("#filter", "alp")
    assert page.eval_on_selector_all("#runs tbody tr", "els => els.map(e => e.dataset.run)") == [
        ids["alpha"]
    ]
    page.fill("#filter", "")
    for name in ("alpha", "beta", "gamma"):
        page.check(f'input.select-run[data-run="{ids[name]}"]')
    page.click("#compare-runs")
    page.wait_for_selector('#compare-charts .chart[data-key="loss"] .main-svg')
    traces = _chart_data(page, '#compare-charts .chart[data-key="loss"]')
    by_run = {name: [t for t in traces if t["name"].startswith(f"{name} ")] for name in LR}
    assert all(by_run.values())  # every selected run is drawn
    colours = {name: {t["color"] for t in ts} for name, ts in by_run.items()}
    assert all(len(c) == 1 for c in colours.values())  # one colour per run...
    assert len(set.union(*colours.values())) == 3  # ...and a different one for each
    # alpha's root lane is solid, its side branch (the restore, n3) dashed
    assert {t["name"]: t["dash"] for t in by_run["alpha"]} == {
        "alpha n1": "solid", "alpha n3": "dash"
    }  # fmt: skip

    # the HParams table: every node of every run, with its lr and the chosen metric
    rows = page.eval_on_selector_all(
        "#hparams-table tbody tr",
        "els => els.map(e => [e.dataset.run, e.dataset.node,"
        " e.querySelector('[data-hparam=lr]').textContent, e.querySelector('[data-hparam=wd]').textContent])",
    )
    assert sorted(rows) == sorted(
        [[ids["alpha"], "n1", "0.1", "0"], [ids["alpha"], "n2", "0.05", "0"],
         [ids["alpha"], "n3", "0.1", "0.01"], [ids["beta"], "n1", "0.01", "0"],
         [ids["gamma"], "n1", "0.001", "0"]]
    )  # fmt: skip
    assert page.input_value("#hparams-metric") == "val/loss"
    # parallel coordinates: axes lr, wd and the metric; one line per node; lr spans 100x: log
    axes = page.eval_on_selector_all("#parcoords .pc-axis", "els => els.map(e => e.dataset.axis)")
    assert axes == ["lr", "wd", "val/loss (best)"]
    lines = page.eval_on_selector_all(
        "#parcoords .pc-line", "els => els.map(e => [e.dataset.run, e.dataset.node, e.textContent])"
    )
    assert len(lines) == 5
    alpha_n2 = next(text for run, node, text in lines if run == ids["alpha"] and node == "n2")
    assert alpha_n2.startswith("alpha n2: lr 0.05, wd 0, val/loss (best) ")
    lr_axis = '#parcoords .pc-axis[data-axis="lr"]'
    assert page.text_content(f"{lr_axis} .pc-min") == "0.001"
    assert page.text_content(f"{lr_axis} .pc-max") == "0.1"
    # the line of the lowest lr ends lowest on the lr axis (y grows downwards in SVG)
    ys = {
        (run, node): float(points.split()[0].split(",")[1])
        for run, node, points in page.eval_on_selector_all(
            "#parcoords .pc-line",
            "els => els.map(e => [e.dataset.run, e.dataset.node, e.getAttribute('points')])",
        )
    }
    assert ys[(ids["gamma"], "n1")] > ys[(ids["beta"], "n1")] > ys[(ids["alpha"], "n1")]


def test_a_finished_run_reads_as_sentences_and_offers_what_can_still_be_done(
    site: dict[str, Any], page: Page
) -> None:
    page.goto(f"{site['url']}/runs/{site['ids']['alpha']}")
    page.wait_for_selector('.chart[data-key="loss"] .main-svg')
    page.wait_for_selector("#audit tbody tr")
    # no control that cannot work: the panel is replaced by what can still be done
    for control in ("#apply", "#pause", "#stop", "#continue", "#tunables"):
        assert page.query_selector(control) is None, control
    assert page.inner_text("#resume-command") == (
        "retune resume alpha --from latest -- python train.py --epochs 3"
    )
    assert page.query_selector("#compare-link") is not None
    # the audit log: sentences, the reason of a rejection as text, nothing raw
    audit = page.inner_text("#audit")
    assert "{" not in audit and "}" not in audit
    assert "set lr[body] 0.1 -> 0.05, group 0, mode rescale" in audit
    assert "rejected: lr must be >= 0, got -1" in audit
    assert (
        "explore lr in 0.01 / 0.003, 5 steps each, scored by min val/loss, from c1, then best,"
        " winner node 3, values lr 0.01" in audit
    )
    # a node's details are a table of words too
    page.click('.node[data-node="n3"]')
    detail = page.inner_text("#node-detail")
    assert "{" not in detail and "wd 0 -> 0.01" in detail
    # the tree picture: a click on a node opens it too
    page.click('#tree-picture g.rt-node[data-node="2"]')
    page.wait_for_selector("#node-detail h2 >> text=node n2")
    assert page.query_selector('#tree-picture svg[viewBox] g.rt-edge[data-edge="1-3"]') is not None
    # shift-click two nodes, compare: the hyperparameters that differ stand out
    page.click('.node[data-node="n2"]', modifiers=["Shift"])
    page.click('.node[data-node="n3"]', modifiers=["Shift"])
    page.click("#compare-nodes")
    page.wait_for_selector('#compare-table tr[data-hparam="lr"]')
    rows = page.eval_on_selector_all(
        "#compare-table tbody tr",
        "els => els.map(e => [e.dataset.hparam, e.className, [...e.querySelectorAll('td')].map(c => c.textContent)])",
    )
    assert ["lr", "differs", ["0.05", "0.1"]] in rows and ["wd", "differs", ["0", "0.01"]] in rows
    page.wait_for_selector('#compare table.aligned[data-key="loss"] tbody tr', timeout=5000)
    assert "[object" not in page.inner_text("#main")  # no part left unrendered
    # no empty card on the page, and no table wider than its card
    assert (
        page.evaluate(
            """() => [...document.querySelectorAll('.card')].filter(c => !c.hidden &&
             c.offsetParent !== null && c.innerText.trim() === '').length"""
        )
        == 0
    )
    _no_table_overflows(page)

    # the legend names every branch; clicking one hides its curve
    lanes = page.eval_on_selector_all("#legend .legend-item", "els => els.map(e => e.dataset.lane)")
    assert lanes == ["n1", "n3"]

    def lane_names() -> list[str]:
        return [t["name"] for t in _chart_data(page, '#charts .chart[data-key="loss"]')]

    assert lane_names() == ["n1…n2 (root)", "n3 (restore from n1)"]
    page.click('#legend .legend-item[data-lane="n3"]')
    eventually(lambda: lane_names() == ["n1…n2 (root)"])
    assert "hidden" in (page.get_attribute('#legend .legend-item[data-lane="n3"]', "class") or "")
    page.click('#legend .legend-item[data-lane="n3"]')
    eventually(lambda: len(lane_names()) == 2)

    # smoothing: the drawn curve changes, the raw one stays behind it, faint
    raw = [t["y"] for t in _chart_data(page, '#charts .chart[data-key="loss"]')]
    page.fill("#smoothing", "0.8")
    eventually(
        lambda: page.get_attribute('#charts .chart[data-key="loss"]', "data-smoothing") == "0.8"
    )
    drawn = _chart_data(page, '#charts .chart[data-key="loss"]')
    assert [t["meta"] for t in drawn] == ["raw", "smoothed", "raw", "smoothed"]
    assert drawn[0]["y"] == raw[0]  # the raw curve is kept as it was
    assert drawn[1]["y"] != raw[0] and len(drawn[1]["y"]) == len(raw[0])
    # smoothing never leaves the range of the raw values, and it is less jagged
    assert min(raw[0]) <= min(drawn[1]["y"]) and max(drawn[1]["y"]) <= max(raw[0])

    def jag(ys: list[float]) -> float:
        return float(np.abs(np.diff(np.diff(ys))).sum())

    assert jag(drawn[1]["y"]) < jag(raw[0]) / 2
    page.fill("#smoothing", "0")
    # a chart's data as CSV: every point of every drawn branch, with its node and step
    with page.expect_download() as download:
        page.click('.chart-card[data-key="loss"] button.csv')
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == "metric,series,node,step,time,value"
    drawn_points = page.get_attribute('#charts .chart[data-key="loss"]', "data-points")
    assert len(lines) == 1 + int(drawn_points or 0) > 70  # 2 branches of about 40 and 30 points
    assert lines[1].startswith("loss,n1…n2 (root),n1,0,")


def test_a_branch_keeps_its_colour_through_two_further_changes(
    site: dict[str, Any], page: Page
) -> None:
    store: Store = site["store"]
    run = site["ids"]["steer"]
    store.update_run(run, heartbeat_at=time.time())  # live: as its trainer's flush writes it
    page.goto(f"{site['url']}/runs/{run}")
    page.wait_for_selector('.chart[data-key="loss"] .main-svg')
    assert page.query_selector("#apply") is not None and page.query_selector("#pause") is not None
    page.wait_for_selector("#tunables tbody tr")
    _no_table_overflows(page)  # the control table fits its card on a 1366x768 screen

    def colours() -> tuple[str, list[str]]:
        legend = page.get_attribute('#legend .legend-item[data-lane="n1"]', "data-color") or ""
        return legend, [t["color"] for t in _chart_data(page, '#charts .chart[data-key="loss"]')]

    before = colours()
    for change, (start, lr) in enumerate([(40, 0.05), (60, 0.02)], start=2):
        store.end_node(run, change - 1, start)
        store.create_node(run, parent=change - 1, start_step=start, change_kind="set",
                          values={"lr": lr, "wd": 0.0}, diff={"lr": [0.1, lr]}, created_by="mia")  # fmt: skip
        _points(store, run, change, start, start + 20, 0.5)
        store.update_run(run, step=start + 19, heartbeat_at=time.time())
        page.wait_for_selector(f'.node[data-node="n{change}"]')
        label = f"n{change}"

        def drawn(label: str = label) -> bool:
            traces = _chart_data(page, '#charts .chart[data-key="loss"]')
            return any(label in (t["nodes"] or []) for t in traces)

        eventually(drawn)
        assert colours() == before  # the same lane, the same colour, in legend and chart
    # the branch now spans three nodes and is still one curve in the legend
    assert page.eval_on_selector_all("#legend .legend-item", "els => els.length") == 1


def test_a_paused_run_shows_continue_prominently(site: dict[str, Any], page: Page) -> None:
    site["store"].update_run(site["ids"]["held"], heartbeat_at=time.time())
    page.goto(f"{site['url']}/runs/{site['ids']['held']}")
    page.wait_for_selector("#paused-banner #continue")
    assert page.query_selector("#pause") is None
    assert page.query_selector("#apply") is not None


def test_tags_and_note_are_edited_from_the_page_and_guarded_like_commands(
    site: dict[str, Any], page: Page
) -> None:
    store: Store = site["store"]
    run = site["ids"]["beta"]
    page.goto(f"{site['url']}/runs/{run}")
    page.wait_for_selector("#run-meta input.add-tag")
    page.fill("#run-meta input.add-tag", "baseline")
    page.press("#run-meta input.add-tag", "Enter")
    page.wait_for_selector('#run-meta .tag[data-tag="baseline"]')
    page.fill("#run-meta textarea.note", "lr too low, try 3e-2")
    page.click("#run-meta .save-note")
    eventually(lambda: store.get_run(run).note == "lr too low, try 3e-2")
    assert store.get_run(run).tags == ["baseline"]
    # a bad tag: the error is shown, nothing changes
    page.fill("#run-meta input.add-tag", "two words")
    page.press("#run-meta input.add-tag", "Enter")
    page.wait_for_selector("#run-meta .meta-error >> text=tag")
    assert store.get_run(run).tags == ["baseline"]
    # another site may not edit them (Fetch Metadata / Origin), as for commands
    refused = httpx.put(f"{site['url']}/api/runs/{run}/tags", json={"tags": []},
                        headers={"Origin": "http://evil.example"})  # fmt: skip
    assert refused.status_code == 403
    refused = httpx.put(f"{site['url']}/api/runs/{run}/note", content='{"note": ""}',
                        headers={"Content-Type": "text/plain"})  # fmt: skip
    assert refused.status_code == 415
    assert store.get_run(run).tags == ["baseline"] and store.get_run(run).note
    # markup, '/' and non-ASCII in a tag and a note are text on the page, never elements
    hostile = '<img/src=x/onerror=document.title="owned">/größe'
    page.fill("#run-meta input.add-tag", hostile)
    page.press("#run-meta input.add-tag", "Enter")
    eventually(lambda: hostile in store.get_run(run).tags)
    page.fill("#run-meta textarea.note", "<script>document.title='owned'</script> λ")
    page.click("#run-meta .save-note")
    eventually(lambda: store.get_run(run).note.endswith(" λ"))
    page.reload()
    page.wait_for_selector("#run-meta .tag")
    # each tag's own text (its first child; the "x" button follows): layout-independent, so
    # it does not depend on whether the stylesheet applied yet (innerText does)
    shown = page.eval_on_selector_all("#run-meta .tag", "els => els.map(e => e.firstChild.data)")
    assert hostile in shown
    assert page.input_value("#run-meta textarea.note").startswith("<script>")
    assert page.eval_on_selector_all("#run-meta img, #run-meta script", "e => e.length") == 0
    assert page.title() != "owned"


def _pixel(png: bytes) -> tuple[int, int, int]:
    """The first pixel of a PNG screenshot (8-bit RGB or RGBA, as Chromium writes them)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    at, data, color_type = 8, b"", 2
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, body = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            color_type = body[9]
        elif kind == b"IDAT":
            data += body
        at += 12 + length
    raw = zlib.decompress(data)
    # every PNG filter leaves the first pixel of the first row as it is (its neighbours are 0)
    assert raw[0] <= 4 and color_type in (2, 6)
    return raw[1], raw[2], raw[3]


def test_dark_mode_follows_the_system_setting(site: dict[str, Any]) -> None:
    browser: Browser = site["browser"]
    colours = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport={"width": 1920, "height": 1080}, color_scheme=scheme)  # type: ignore[arg-type]
        page = context.new_page()
        page.goto(f"{site['url']}/runs/{site['ids']['alpha']}")
        page.wait_for_selector('.chart[data-key="loss"] .main-svg')
        # a pixel of the page's background, between the header and the first card
        colours[scheme] = _pixel(page.screenshot(clip={"x": 2, "y": 300, "width": 1, "height": 1}))
        context.close()
    assert sum(colours["light"]) / 3 > 200, colours
    assert sum(colours["dark"]) / 3 < 60, colours


def _node_detail(page: Page, node: str) -> str:
    """The node detail card's text, once it shows ``node``."""
    heading = f"node {node}"
    return str(eventually(lambda: (page.inner_text("#node-detail h2") == heading) and
                          page.inner_text("#node-detail")))  # fmt: skip


def test_a_guard_recovery_is_marked_explained_and_can_be_vetoed_from_the_page(
    site: dict[str, Any], page: Page
) -> None:
    """Issue 14: the dashboard marks the guard's nodes, says why it acted and what it skipped,
    and sends the same `guard veto` command as the CLI."""
    store: Store = site["store"]
    guard_knob = {"name": "guard", "kind": "bool", "value": True}
    run = store.create_run("guarded", config={}, meta={}, tunables=[*TUNABLES, guard_knob],
                           root_values={"lr": 0.1, "wd": 0.0}, created_by="mia")  # fmt: skip
    _points(store, run.id, 1, 0, 30, 1.0)
    store.end_node(run.id, 1, 30)
    reason = "loss nan is not finite at step 30"
    store.create_node(run.id, parent=1, start_step=20, change_kind="guard",
                      values={"lr": 0.05, "wd": 0.0}, diff={"lr": [0.1, 0.05]}, created_by="guard",
                      info={"guard": {"action": "recovered", "reason": reason, "restored": "c2",
                                      "restored_step": 20, "lr_factor": 0.5,
                                      "skipped": {"count": 3, "from": [0, 21], "to": [0, 23],
                                                  "batches": [[0, 21], [0, 22], [0, 23]]}}})  # fmt: skip
    _points(store, run.id, 2, 20, 40, 0.8)
    store.update_run(run.id, status="running", step=39, heartbeat_at=time.time())
    page.goto(f"{site['url']}/runs/{run.id}")
    page.wait_for_selector('#tree .node[data-node="n2"] .badge.guard')
    assert page.get_attribute('#tree .node[data-node="n2"] .badge.guard', "title") == reason
    page.click('#tree .node[data-node="n2"]')
    page.wait_for_selector("#node-detail:not([hidden])")
    text = page.inner_text("#node-detail")
    assert f"recovered: {reason}" in text
    assert "c2 (step 20), lr x 0.5" in text and "3 (epoch 0 batch 21 to epoch 0 batch 23)" in text
    page.click("#guard-veto")
    veto = eventually(lambda: [c for c in store.list_commands(run.id) if c.kind == "guard"])
    assert [(c.payload, c.source, c.status) for c in veto] == [
        ({"action": "veto"}, "ui", "pending")
    ]
    assert "guard veto" in page.inner_text("#command-status")
    # what the trainer records when it applies the veto: the recovery ends and the state it
    # left comes back on a new node, which is explained as a veto and offers no second veto
    store.end_node(run.id, 2, 40)
    vetoed = {"action": "vetoed", "reason": f"veto of the guard's recovery n2 ({reason})",
              "restored": "c3", "vetoed_node": 2}  # fmt: skip
    store.create_node(run.id, parent=1, start_step=30, change_kind="restore",
                      values={"lr": 0.1, "wd": 0.0}, diff={}, created_by="mia",
                      info={"guard": vetoed})  # fmt: skip
    # and training went on after an exploration from there: not a candidate, no score
    store.end_node(run.id, 3, 45)
    store.create_node(run.id, parent=3, start_step=45, change_kind="explore",
                      values={"lr": 0.1, "wd": 0.0}, diff={}, created_by="mia",
                      info={"explore": {"exploration": 7, "role": "continue from winner"}})  # fmt: skip
    store.update_run(run.id, step=50, heartbeat_at=time.time())
    page.wait_for_selector('#tree .node[data-node="n4"]')
    page.click('#tree .node[data-node="n3"]')
    text = _node_detail(page, "n3")
    assert f"vetoed n2: veto of the guard's recovery n2 ({reason})" in text
    assert "recovered" not in text and "undefined" not in text and "c3" in text
    assert page.query_selector("#guard-veto") is None
    page.click('#tree .node[data-node="n2"]')  # the recovery, ended: nothing to veto any more
    text = _node_detail(page, "n2")
    assert f"recovered: {reason}" in text and page.query_selector("#guard-veto") is None
    page.click('#tree .node[data-node="n4"]')
    text = _node_detail(page, "n4")
    assert "continue from winner of #7" in text and "candidate" not in text


def test_a_run_page_redraws_for_its_own_run_not_for_another_run_training(
    site: dict[str, Any], page: Page
) -> None:
    """Every live event used to redraw the page (every read again), whichever run moved: a
    finished run's page re-read its metrics twice a second while another run trained, and
    the first event after loading read everything a second time.
    (Playwright's sync API hands over the page's events only inside its own calls, hence
    ``wait_for_timeout`` rather than a sleep.)"""
    store: Store = site["store"]
    shown, other = site["ids"]["beta"], site["ids"]["steer"]
    reads: list[str] = []

    def read(request: Any) -> None:
        if f"/api/runs/{shown}" in request.url:
            reads.append(request.url)

    page.on("request", read)
    page.goto(f"{site['url']}/runs/{shown}")
    page.wait_for_selector('.chart[data-key="loss"] .main-svg')
    eventually(lambda: page.text_content("#live") == "live", what="the first live event")

    def settled() -> bool:  # the first event's redraw has made all its reads
        count = len(reads)
        page.wait_for_timeout(1000)
        return len(reads) == count

    eventually(settled, what="the page to stop reading")
    # the first live event found the run as the page had drawn it: nothing was read twice
    assert sorted(set(reads)) == sorted(reads), reads
    before = len(reads)
    # a second event stream in the page counts what the server sends
    page.evaluate(
        "() => { window.seen = 0; new EventSource('/api/events')"
        ".addEventListener('runs', () => { window.seen += 1; }); }"
    )
    eventually(lambda: page.evaluate("window.seen") >= 1, what="the counting stream")
    for step in (40, 41, 42):  # another run trains: each step is a live event
        seen = page.evaluate("window.seen")
        store.update_run(other, step=step, heartbeat_at=time.time())

        def delivered(seen: int = seen) -> bool:
            return bool(page.evaluate("window.seen") > seen)

        eventually(delivered, what="the event")
    page.wait_for_timeout(700)  # longer than the page's redraw throttle (500 ms)
    assert len(reads) == before, reads[before:]  # nothing of this page was read again
    store.update_run(shown, heartbeat_at=time.time())  # its own run moves: it redraws

    def redrawn() -> bool:
        page.wait_for_timeout(100)
        return len(reads) > before

    eventually(redrawn, what="the page to redraw for its own run")

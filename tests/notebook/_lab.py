"""Driving examples/notebook.ipynb in a real JupyterLab in Debian's Chromium.

Shared by the browser test (tests/notebook/test_lab.py) and the screenshot script
(scripts/notebook_screenshots.py). :class:`Lab` starts ``jupyter lab`` on 127.0.0.1 with a
token, in a folder of its own (its config, runtime and workspace folders inside it, so
nothing of the user's is read or written), and stops it. :func:`play` opens the notebook,
runs it in two parts (up to the live chart, then the rest) and records what a person would
see: the chart gaining points (its last step growing) while the job shows ``running``, then
the tree picture.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "notebook.ipynb"
CHART_CELL = 'run.plot("loss", "val_acc")'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def eventually(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.25)


class Lab:
    """``jupyter lab`` serving ``folder`` (a copy of the example notebook in it)."""

    def __init__(self, folder: Path, store_url: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.store_url = store_url
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "lab.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Lab:
        shutil.copy(EXAMPLE, self.folder / "notebook.ipynb")
        home = self.folder / ".jupyter"
        env = {
            **os.environ,
            "RETUNE_STORE": self.store_url,
            "PYTHONPATH": str(ROOT),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        }
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            f"--port={self.port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.folder}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
        ]  # fmt: skip
        if os.geteuid() == 0:  # CI and these machines run as root
            command.append("--allow-root")
        # no "get notified about Jupyter news?" prompt over the page (and no fetch for it)
        news = home / "settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True, exist_ok=True)
        (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            eventually(self._ready, 120, "jupyter lab to answer")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        import httpx

        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"jupyter lab exited:\n{self.log.read_text()[-3000:]}")
        try:
            answer = httpx.get(f"{self.url}/api/status", params={"token": self.token}, timeout=2)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the server shuts its kernels down
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Seen:
    """What the browser showed."""

    chart_steps: list[int] = field(default_factory=list)
    """The last step the inline chart drew, each time it grew while the job showed
    ``running``."""
    tree_nodes: int = 0
    job_state: str = ""
    screenshots: list[Path] = field(default_factory=list)


# the last step the inline chart draws: it grows with every redraw that brings new points
# (the count of points stops growing once a branch is downsampled to max_points)
_LAST_STEP = """() => {
  const plots = [...document.querySelectorAll('.jp-OutputArea-output .js-plotly-plot')];
  let last = 0;
  for (const p of plots) for (const t of p.data || []) for (const x of t.x || []) last = Math.max(last, x);
  return last;
}"""
_JOB_STATE = """() => {
  const job = document.querySelector('.jp-OutputArea-output .retune-job');
  return job ? job.dataset.state : '';
}"""
_RUN_CELLS = """async ([first, last]) => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.sessionContext.ready;
  const notebook = panel.content;
  notebook.activeCellIndex = first;
  if (last === null) { await app.commands.execute('notebook:run-all-below'); return; }
  for (let i = first; i <= last; i++) await app.commands.execute('notebook:run-cell-and-select-next');
}"""
_CELL_INDEX = """(needle) => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  return cells.findIndex((c) => c.model.sharedModel.getSource().includes(needle));
}"""
_IDLE_AND_DONE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  const cells = panel.content.widgets.filter((c) => c.model.type === 'code');
  return cells.every((c) => c.model.executionCount !== null);
}"""


def play(page: Any, lab: Lab, shots: Path | None = None, timeout: float = 240) -> Seen:
    """Open the notebook in Lab, run it, and return what was seen; with ``shots``, write
    notebook-chart.png, notebook-tree.png and notebook.png there."""
    seen = Seen()
    page.goto(f"{lab.url}/lab/tree/notebook.ipynb?token={lab.token}")
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.content"
        " && window.jupyterapp.shell.currentWidget.content.widgets.length > 5",
        timeout=timeout * 1000,
    )
    chart_cell = page.evaluate(_CELL_INDEX, CHART_CELL)
    assert chart_cell > 0, "the example has no chart cell"
    page.evaluate(_RUN_CELLS, [0, chart_cell])

    def growing() -> bool:
        if page.evaluate(_JOB_STATE) != "running":
            return False
        last = int(page.evaluate(_LAST_STEP))
        if last and (not seen.chart_steps or last > seen.chart_steps[-1]):
            seen.chart_steps.append(last)
        return len(seen.chart_steps) >= 3

    try:
        eventually(growing, timeout, "the inline chart to gain points while the job runs")
    except AssertionError as e:
        if shots is not None:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
        raise AssertionError(f"{e}; last steps seen {seen.chart_steps}") from e
    page.evaluate(_RUN_CELLS, [chart_cell + 1, None])
    eventually(lambda: page.evaluate(_IDLE_AND_DONE), timeout, "every cell to run")
    nodes = page.locator(".jp-OutputArea-output svg g.rt-node")
    eventually(lambda: nodes.count() > 0, 30, "the tree picture")
    seen.tree_nodes = nodes.count()
    seen.job_state = page.evaluate(_JOB_STATE)
    if shots is not None:
        _pictures(page, shots, seen)
    return seen


def _pictures(page: Any, shots: Path, seen: Seen) -> None:
    """The chart (all branches, after the run), the tree, and the page at the job's cell."""
    chart = page.locator(".jp-OutputArea-output .js-plotly-plot").first
    for name, target in (
        ("notebook-chart.png", page.locator(".jp-Cell", has=chart).first),
        ("notebook-tree.png", page.locator(".jp-Cell", has=page.locator("svg g.rt-node")).first),
    ):
        target.scroll_into_view_if_needed()
        page.wait_for_timeout(400)  # plotly's resize transition
        target.screenshot(path=str(shots / name))
        seen.screenshots.append(shots / name)
    job = page.locator(".jp-OutputArea-output .retune-job").first
    job.evaluate("view => view.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(400)
    page.screenshot(path=str(shots / "notebook.png"))
    seen.screenshots.append(shots / "notebook.png")

"""The one-file report of a run: a self-contained HTML page to attach to a paper or a PR.

Everything is inline (CSS, the tree picture and the charts as SVG; no script at all), and
the page's Content-Security-Policy forbids loading anything, so it opens offline and a name
that slipped through escaping still could not run or fetch anything. Sections: summary, best
node per metric, the tree picture, a chart per metric with the branches overlaid, the audit log
as sentences, configuration and environment. Every name is escaped; store URLs in the recorded
environment are redacted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retune import _json
from retune._format import diff_text, duration, number, timestamp
from retune.errors import redact
from retune.session._tree import lower_is_better
from retune.store import CommandRecord
from retune.viz._chart import metric_chart
from retune.viz._svg import esc
from retune.viz._tree import Goal, tree_picture

if TYPE_CHECKING:
    from retune.session._snapshot import RunSnapshot
    from retune.store import Store

__all__ = ["BestPoint", "best_points", "command_sentence", "report_html", "write_report"]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ec; --bg: #f7f8fa; --accent: #3157d5;
        --bad: #c62f2f; --good: #1f8a4c; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header, main { max-width: 1200px; margin: 0 auto; padding: 1rem 1.4rem; }
header { background: #fff; border-bottom: 1px solid var(--line); max-width: none; }
h1 { margin: 0 0 .2rem; font-size: 1.4rem; } h2 { font-size: 1.1rem; margin: 0 0 .6rem; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1rem;
          margin-bottom: 1rem; }
nav a { margin-right: .9rem; color: var(--accent); }
.muted { color: var(--muted); } .bad { color: var(--bad); } .good { color: var(--good); }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
.picture { overflow: auto; border: 1px solid var(--line); border-radius: 6px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: .8rem; }
figure { margin: 0; } figcaption { font-size: .8rem; color: var(--muted); }
.retune-chart { width: 100%; height: auto; }
ol.audit li { margin-bottom: .3rem; }
pre { white-space: pre-wrap; word-break: break-word; font-size: .8rem; margin: 0; }
"""


@dataclass(frozen=True)
class BestPoint:
    """The best point of one metric over the whole tree."""

    key: str
    goal: Goal
    value: float
    step: int
    node: int
    points: int


def best_points(snapshot: RunSnapshot) -> list[BestPoint]:
    """For each metric with a finite point: its best point (min, or max for accuracy-like
    names: ``acc``, ``auc``, ``f1``, ``score``) and the node that reached it; earliest wins
    ties."""
    out = []
    for key in sorted(snapshot.series):
        series = snapshot.series[key]
        finite = np.flatnonzero(np.isfinite(series.values))
        if not len(finite):
            continue
        goal: Goal = "min" if lower_is_better(key) else "max"
        values = series.values[finite]
        candidates = finite[values == (values.min() if goal == "min" else values.max())]
        pick = candidates[np.argmin(series.steps[candidates])]
        out.append(BestPoint(key, goal, float(series.values[pick]), int(series.steps[pick]),
                             int(series.nodes[pick]), len(series)))  # fmt: skip
    return out


def _assignments(values: Mapping[str, Any], joiner: str = " = ") -> str:
    return ", ".join(f"{k}{joiner}{number(v)}" for k, v in values.items())


def _verb(command: CommandRecord) -> str:
    payload = command.payload if isinstance(command.payload, Mapping) else {}
    kind = command.kind
    group = payload.get("group")
    where = f" in param group {group}" if group is not None else ""
    constant = " (replacing the schedule)" if payload.get("mode") == "constant" else ""
    if kind == "set":
        return f"set {_assignments(payload.get('values') or {})}{where}{constant}"
    if kind == "scale":
        return f"scale {_assignments(payload.get('factors') or {}, ' by ')}{where}{constant}"
    if kind == "restore":
        extra = payload.get("set") or {}
        also = f" with {_assignments(extra)}{where}" if extra else ""
        return f"restore {payload.get('target')}{also}"
    if kind == "checkpoint":
        tag = payload.get("tag")
        return "take a checkpoint" + (f" tagged {tag}" if tag else "")
    return {"pause": "pause", "continue": "continue", "stop": "stop"}.get(kind, kind)


def command_sentence(command: CommandRecord) -> str:
    """The audit log's sentence for one command, e.g. ``2026-01-02 10:00:00: mia (cli) asked
    to set lr = 0.001. Applied at step 300, on new node n3 (lr 0.01 -> 0.001).``"""
    who = f"{command.user or 'someone'} ({command.source})"
    head = f"{timestamp(command.created_at)}: {who} asked to {_verb(command)}."
    result = command.result if isinstance(command.result, Mapping) else {}
    if command.status == "applied":
        parts = [f"Applied at step {command.applied_step}"]
        if command.node is not None and command.kind in ("set", "scale", "restore"):
            parts.append(f", on new node n{command.node}")
        if isinstance(result.get("diff"), Mapping) and result["diff"]:
            parts.append(f" ({diff_text(result['diff'])})")
        if result.get("checkpoint"):
            verb = "from" if command.kind == "restore" else "checkpoint"
            parts.append(f", {verb} {result['checkpoint']}")
        return f"{head} {''.join(parts)}."
    if command.status == "rejected":
        return f"{head} Rejected: {command.reason or 'no reason recorded'}."
    return f"{head} Not applied yet ({command.status})."


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def _pretty(value: Any) -> str:
    return json.dumps(_json.jsonable(value), indent=2, sort_keys=True, ensure_ascii=False)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; the cells are already escaped HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _best_section(snapshot: RunSnapshot, bests: Sequence[BestPoint]) -> str:
    if not bests:
        return '<p class="muted">No metric has a finite value yet.</p>'
    tree = {n.id: n for n in snapshot.tree()}
    rows = []
    for best in bests:
        node = tree.get(best.node)
        values = _assignments(node.values) if node is not None else ""
        rows.append([esc(best.key), "lowest" if best.goal == "min" else "highest",
                     esc(number(best.value)), f"n{best.node}", f"{best.step:,}",
                     esc(values)])  # fmt: skip
    return _table(["metric", "best is", "value", "node", "step", "values on that node"], rows)


def _config_section(snapshot: RunSnapshot) -> str:
    run = snapshot.run
    parts = []
    if run.config:
        rows = [[esc(k), f"<pre>{esc(_pretty(v))}</pre>"] for k, v in sorted(run.config.items())]
        parts.append("<h3>config</h3>" + _table(["name", "value"], rows))
    if run.tunables:
        rows = [[esc(t.get("name")), esc(number(t.get("value"))),
                 esc(", ".join(f"{k} {number(v)}" for k, v in sorted(t.items())
                               if k not in ("name", "value")))]
                for t in run.tunables]  # fmt: skip
        parts.append("<h3>tunables</h3>" + _table(["name", "value", "declared"], rows))
    meta = _redacted(run.meta)
    if meta:
        rows = [[esc(k), f"<pre>{esc(_pretty(v))}</pre>"] for k, v in sorted(meta.items())]
        parts.append("<h3>environment</h3>" + _table(["recorded", "value"], rows))
    return "".join(parts) or '<p class="muted">Nothing recorded.</p>'


def report_html(
    snapshot: RunSnapshot,
    commands: Sequence[CommandRecord] = (),
    *,
    color_by: str | None = None,
    goal: Goal | None = None,
    collapse_chains: bool | None = None,
    max_points: int = 2000,
    now: float | None = None,
) -> str:
    """The report of ``snapshot`` as one HTML document (see the module docstring).

    ``commands`` is the run's audit log (``store.list_commands``); ``color_by`` / ``goal`` /
    ``collapse_chains`` go to the tree picture; each chart draws about ``max_points`` points.
    Raises ``InvalidArgument`` for an unknown ``color_by`` metric.
    """
    from retune import __version__

    run = snapshot.run
    picture = tree_picture(snapshot, color_by=color_by, goal=goal,
                           collapse_chains=collapse_chains, id_prefix="report-tree")  # fmt: skip
    lanes = {box.id: box.lane for box in picture.layout.nodes}
    nodes = snapshot.tree()
    charts = []
    for key in sorted(snapshot.series):
        chart = metric_chart(key, snapshot.series[key], nodes, lanes, max_points=max_points)
        note = f", {chart.nonfinite:,} NaN/inf (gaps)" if chart.nonfinite else ""
        caption = (f"{esc(key)}: {chart.total:,} points, {chart.drawn:,} drawn (min/max per "
                   f"bucket){note}")  # fmt: skip
        charts.append(f"<figure>{chart.svg}<figcaption>{caption}</figcaption></figure>")
    audit = "".join(f"<li>{esc(command_sentence(c))}</li>" for c in commands)
    ending = ""
    if run.error:
        tail = "\n".join(run.error.rstrip().splitlines()[-15:])
        ending = f'<h3 class="bad">error</h3><pre>{esc(redact(tail))}</pre>'
    generated = timestamp(time.time() if now is None else now)
    steps = f"{run.step:,} steps"
    summary = (f"{esc(run.id)} · {esc(run.status)} · {steps} · {len(nodes)} nodes · started "
               f"{timestamp(run.created_at)} · duration {duration(run.duration)}")  # fmt: skip
    bests = best_points(snapshot)
    colour_note = ""
    if picture.color_by is not None:
        better = "lower" if picture.goal == "min" else "higher"
        colour_note = (f"Nodes are coloured by the last value of {esc(picture.color_by)} "
                       f"({better} is better, green best); the best node is bold")  # fmt: skip
        colour_note += f" (n{picture.best})." if picture.best is not None else "."
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Retune report: {esc(run.name)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{esc(run.name)}</h1><div class=\"muted\">{summary}</div><nav>",
        '<a href="#best">best</a><a href="#tree">tree</a><a href="#charts">charts</a>',
        '<a href="#audit">audit log</a><a href="#config">config and environment</a></nav>',
        "</header><main>",
        f'<section id="best"><h2>Best node per metric</h2>{_best_section(snapshot, bests)}'
        "</section>",
        '<section id="tree"><h2>The tree</h2><p class="muted">Steps run left to right; each '
        "lane is a branch; each edge says what changed. " + colour_note + "</p>",
        f'<div class="picture">{picture.svg}</div></section>',
        '<section id="charts"><h2>Metrics</h2><p class="muted">Each branch overlaid, in the '
        "colour of its lane; a circle marks each change.</p>",
        f'<div class="charts">{"".join(charts)}</div>' if charts
        else '<p class="muted">No metrics recorded.</p>',
        "</section>",
        f'<section id="audit"><h2>Audit log</h2><ol class="audit">{audit}</ol>'
        if audit else '<section id="audit"><h2>Audit log</h2><p class="muted">No commands.</p>',
        f"{ending}</section>",
        f'<section id="config"><h2>Configuration and environment</h2>{_config_section(snapshot)}'
        "</section>",
        f'<p class="muted">Written by Retune {esc(__version__)} on {generated}. This file is '
        "self-contained: it loads nothing.</p></main></body></html>",
    ])  # fmt: skip


def write_report(store: Store, run_ref: str, path: str, **options: Any) -> str:
    """Read run ``run_ref`` from ``store`` and write its report to ``path``; returns the HTML.
    ``options`` as :func:`report_html`."""
    from retune._files import write_text_file
    from retune.session._snapshot import read_snapshot

    snapshot = read_snapshot(store, run_ref)
    html = report_html(snapshot, store.list_commands(snapshot.id), **options)
    write_text_file(path, html)
    return html

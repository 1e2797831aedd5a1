"""Reading runs: ``runs``, ``show``, ``metrics``."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from typing import Any

from retune import _json
from retune._format import diff_text, duration, number, table, timestamp
from retune.cli._registry import Group, count_arg, emit_json, int_arg, run_arg, run_status
from retune.control._parse import parse_node
from retune.store import LIVE_STATUSES, NodeRecord, RunRecord, Store

__all__ = ["COMMANDS"]

COMMANDS = Group()


def _metrics_line(last: dict[str, tuple[int, float]], limit: int = 4) -> str:
    keys = sorted(last)[:limit]
    more = " ..." if len(last) > limit else ""
    return " ".join(f"{k}={number(last[k][1])}" for k in keys) + more


# -- runs --------------------------------------------------------------------------------------
def _runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="only runs with exactly this name")
    p.add_argument("--status", action="append", help="only runs in this status (repeatable)")


@COMMANDS.command("runs", "list runs, newest first", _runs_args)
def _runs(args: argparse.Namespace, store: Store) -> int:
    runs = store.list_runs(name=args.name, statuses=args.status)
    last = store.last_metrics([r.id for r in runs])
    if args.json:
        emit_json(
            [
                {
                    "name": r.name,
                    "id": r.id,
                    "status": r.status,
                    "live": run_status(r) in LIVE_STATUSES,
                    "step": r.step,
                    "last_metrics": {k: v for k, (_, v) in last[r.id].items()},
                    "created_at": r.created_at,
                    "duration": r.duration,
                }
                for r in runs
            ]
        )
        return 0
    if not runs:
        print(f"no runs in {args.store_shown}")
        return 0
    rows = [
        [
            r.name,
            r.id,
            run_status(r),
            str(r.step),
            timestamp(r.created_at),
            duration(r.duration),
            _metrics_line(last[r.id]),
        ]
        for r in runs
    ]
    print(table(["NAME", "ID", "STATUS", "STEPS", "STARTED", "DURATION", "LAST METRICS"], rows))
    return 0


# -- show --------------------------------------------------------------------------------------
def _describe(run: RunRecord, last: dict[str, tuple[int, float]]) -> list[str]:
    meta = run.meta
    lines = [
        f"run        {run.name} ({run.id})",
        f"status     {run_status(run)}  step {run.step}",
        f"started    {timestamp(run.created_at)}  duration {duration(run.duration)}",
    ]
    if inv := meta.get("invocation"):
        lines.append(f"command    {' '.join(inv.get('argv', []))}  (host {inv.get('host')})")
    if git := meta.get("git"):
        dirty = " (dirty)" if git.get("dirty") else ""
        lines.append(f"git        {git.get('commit')}{dirty} {git.get('root')}")
    if model := meta.get("model"):
        count = model.get("parameters")
        params = f"  {count:,} parameters" if isinstance(count, int) else ""
        lines.append(f"model      {model.get('class', '?')}{params}")
    if opt := meta.get("optimizer"):
        lines.append(f"optimizer  {opt.get('class', '?')}")
        for i, group in enumerate(opt.get("param_groups") or []):  # torch
            hp = "  ".join(f"{k}={number(v)}" for k, v in sorted(group["hyperparameters"].items()))
            lines.append(f"  group {i}  {hp}")
        config = opt.get("config")  # Keras: the optimizer's get_config(), its plain settings
        if isinstance(config, dict):
            plain = {k: v for k, v in config.items() if k != "name" and not isinstance(v, dict)}
            if plain:
                lines.append("  " + "  ".join(f"{k}={number(v)}" for k, v in sorted(plain.items())))
    if sched := meta.get("scheduler"):
        lines.append(f"scheduler  {sched['class']}")
    if run.tunables:
        lines.append("tunables")
        for entry in run.tunables:
            lines.append(f"  {entry['name']} = {number(entry.get('value'))}")
    if run.config:
        lines.append("config")
        lines.extend(f"  {k} = {_json.dumps(v)}" for k, v in sorted(run.config.items()))
    if last:
        lines.append("last metrics")
        lines.extend(f"  {k} = {number(v)}  (step {s})" for k, (s, v) in sorted(last.items()))
    if run.error:
        lines.append("error")
        lines.extend("  " + line for line in run.error.rstrip().splitlines()[-6:])
    return lines


@COMMANDS.command("show", "a run's configuration, hyperparameters and last metrics", run_arg)
def _show(args: argparse.Namespace, store: Store) -> int:
    run = store.get_run(args.run)
    last = store.last_metrics([run.id])[run.id]
    nodes = store.list_nodes(run.id)
    if args.json:
        emit_json(
            {
                "run": run.__dict__,
                "last_metrics": {k: {"step": s, "value": v} for k, (s, v) in last.items()},
                "nodes": [n.__dict__ for n in nodes],
            }
        )
        return 0
    print("\n".join(_describe(run, last)))
    paused = _guard_pause(run, nodes)
    if paused:
        print(f"paused by  {paused}")
    print("nodes")
    for node in nodes:
        end = "open" if node.end_step is None else str(node.end_step)
        diff = diff_text(node.diff, " ")
        print(f"  {node.label}  steps {node.start_step}..{end}  {node.change_kind}  {diff}")
        guard = node.info.get("guard")
        if isinstance(guard, dict) and guard.get("reason"):
            print(f"      guard {guard.get('action', '')}: {guard['reason']}" + _skipped(guard))
    return 0


def _guard_pause(run: RunRecord, nodes: list[NodeRecord]) -> str | None:
    """The guard's message when it is what paused this run (the open node says so)."""
    if run.status != "paused":
        return None
    for node in reversed(nodes):
        if node.end_step is None:
            guard = node.info.get("guard")
            if isinstance(guard, dict) and guard.get("action") == "paused":
                return str(guard.get("message") or guard.get("reason"))
            return None
    return None


def _skipped(guard: dict[str, Any]) -> str:
    skipped = guard.get("skipped")
    if not isinstance(skipped, dict) or not skipped.get("count"):
        return ""
    return f"  (skipped {skipped['count']} batches)"


# -- metrics -----------------------------------------------------------------------------------
def _metrics_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("key", help="metric name, e.g. loss")
    p.add_argument(
        "--branch",
        metavar="NODE",
        help="only the branch from the root to NODE (e.g. n3): one point per step",
    )
    p.add_argument("--start", type=int_arg("--start"), help="first step")
    p.add_argument("--end", type=int_arg("--end"), help="last step")
    p.add_argument("--max-points", type=count_arg("--max-points"),
                   help="downsample by min/max buckets")  # fmt: skip
    p.add_argument("--csv", action="store_true", help="CSV with a header row")


@COMMANDS.command("metrics", "the points of one metric (every branch, or --branch NODE)",
                  _metrics_args)  # fmt: skip
def _metrics(args: argparse.Namespace, store: Store) -> int:
    """Every point of the metric in every node (each with its node), or with ``--branch`` the
    branch's own curve: each node on the path up to where the next one starts."""
    from retune.session._snapshot import read_snapshot

    snapshot = read_snapshot(store, args.run)
    if args.branch is not None:
        snapshot = snapshot.branch(parse_node(args.branch))
    series = snapshot.metric(args.key, args.start, args.end, args.max_points)
    rows = list(
        zip(
            series.steps.tolist(),
            series.values.tolist(),
            series.times.tolist(),
            series.nodes.tolist(),
            strict=True,
        )
    )
    if args.json:
        emit_json([{"step": s, "value": v, "time": t, "node": f"n{n}"} for s, v, t, n in rows])
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["step", "value", "time", "node"])
        writer.writerows(
            (s, repr(v) if math.isfinite(v) else number(v), t, f"n{n}") for s, v, t, n in rows
        )
    else:
        cells = [[str(s), number(v), f"n{n}"] for s, v, _, n in rows]
        print(table(["STEP", args.key.upper(), "NODE"], cells))
    return 0

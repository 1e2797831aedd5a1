"""The ``retune`` command line.

Each subcommand is one small function ``(args, store) -> exit code`` registered with
:func:`command`; the parser is built from the registry, so adding a subcommand is one decorated
function plus its arguments. Every ``RetuneError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from retune import _json
from retune._format import duration, number, table, timestamp
from retune.errors import RetuneError
from retune.store import LIVE_STATUSES, RunRecord, Store, open_store

__all__ = ["main"]

STALE_AFTER = 30.0  # seconds without a heartbeat before a live run is shown as stale

Handler = Callable[[argparse.Namespace, Store], int]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    handler: Handler
    add_arguments: Callable[[argparse.ArgumentParser], None]
    needs_store: bool


_COMMANDS: dict[str, _Command] = {}


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
    *,
    needs_store: bool = True,
) -> Callable[[Handler], Handler]:
    """Register a subcommand: ``@command("runs", "list runs", add_args)``."""

    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = _Command(name, help, handler, arguments, needs_store)
        return handler

    return register


def run_arg(p: argparse.ArgumentParser) -> None:
    """The RUN positional every per-run command takes."""
    p.add_argument("run", help="run id, or name (the latest run with that name)")


def wait_args(p: argparse.ArgumentParser, timeout: float = 120.0) -> None:
    """--no-wait / --timeout for commands sent to a live run."""
    p.add_argument("--no-wait", action="store_true", help="queue the command and return at once")
    p.add_argument(
        "--timeout", type=float, default=timeout, help=f"seconds to wait (default {timeout:g})"
    )


def emit_json(value: Any) -> None:
    print(_json.dumps(value, indent=2))


def run_status(run: RunRecord, now: float | None = None) -> str:
    """The status, with ``stale`` for a live run whose heartbeat stopped (killed, frozen)."""
    heartbeat = run.heartbeat_at
    if run.status in LIVE_STATUSES and heartbeat is not None:
        silent = (now or time.time()) - heartbeat
        if silent > STALE_AFTER:
            return f"{run.status} (stale)"
    return run.status


def _metrics_line(last: dict[str, tuple[int, float]], limit: int = 4) -> str:
    keys = sorted(last)[:limit]
    more = " ..." if len(last) > limit else ""
    return " ".join(f"{k}={number(last[k][1])}" for k in keys) + more


# -- runs --------------------------------------------------------------------------------------
def _runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="only runs with exactly this name")
    p.add_argument("--status", action="append", help="only runs in this status (repeatable)")


@command("runs", "list runs, newest first", _runs_args)
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
        print(f"no runs in {store.url}")
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
        lines.append(f"model      {model['class']}  {model['parameters']:,} parameters")
    if opt := meta.get("optimizer"):
        lines.append(f"optimizer  {opt['class']}")
        for i, group in enumerate(opt["param_groups"]):
            hp = "  ".join(f"{k}={number(v)}" for k, v in sorted(group["hyperparameters"].items()))
            lines.append(f"  group {i}  {hp}")
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


@command("show", "a run's configuration, hyperparameters and last metrics", run_arg)
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
    print("nodes")
    for node in nodes:
        end = "open" if node.end_step is None else str(node.end_step)
        diff = " ".join(f"{k} {number(a)} -> {number(b)}" for k, (a, b) in node.diff.items())
        print(f"  {node.label}  steps {node.start_step}..{end}  {node.change_kind}  {diff}")
    return 0


# -- metrics -----------------------------------------------------------------------------------
def _metrics_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("key", help="metric name, e.g. loss")
    p.add_argument("--start", type=int, help="first step")
    p.add_argument("--end", type=int, help="last step")
    p.add_argument("--max-points", type=int, help="downsample by min/max buckets")
    p.add_argument("--csv", action="store_true", help="CSV with a header row")


@command("metrics", "the points of one metric", _metrics_args)
def _metrics(args: argparse.Namespace, store: Store) -> int:
    from retune.session._snapshot import read_snapshot

    series = read_snapshot(store, args.run).metric(args.key, args.start, args.end, args.max_points)
    rows = zip(series.steps.tolist(), series.values.tolist(), series.times.tolist(), strict=True)
    if args.json:
        emit_json([{"step": s, "value": v, "time": t} for s, v, t in rows])
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["step", "value", "time"])
        writer.writerows((s, repr(v) if math.isfinite(v) else number(v), t) for s, v, t in rows)
    else:
        print(table(["STEP", args.key.upper()], [[str(s), number(v)] for s, v, _ in rows]))
    return 0


# -- db ----------------------------------------------------------------------------------------
def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["upgrade"], help="upgrade: migrate to this Retune's schema")


@command("db", "manage the store's schema", _db_args, needs_store=False)
def _db(args: argparse.Namespace, _store: Store) -> int:
    from retune.store import upgrade_store

    before, after = upgrade_store(args.store)
    if args.json:
        emit_json({"before": before, "after": after})
    elif before == after:
        print(f"store is up to date (schema {after})")
    else:
        print(f"upgraded store schema {before or 'empty'} -> {after}")
    return 0


# -- demo --------------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--name", default="digits-cnn", help="run name (default digits-cnn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--step-delay",
        type=float,
        default=0.05,
        help="seconds to sleep per step, so a person can steer it (default 0.05; 0 = full speed)",
    )
    p.add_argument(
        "--scripted",
        action="store_true",
        help="also play a tuning session: a set, a restore, a resume in a new process",
    )
    p.add_argument("--no-ui", action="store_true", help="do not serve the dashboard")
    p.add_argument("--port", type=int, default=8765, help="dashboard port (default 8765)")
    p.add_argument(
        "--exit", action="store_true", help="exit when training ends (else keep serving)"
    )
    p.add_argument("--resume", help=argparse.SUPPRESS)  # used by --scripted's second process


@command("demo", "train a small CNN on the digits data with Retune attached", _demo_args,
         needs_store=False)  # fmt: skip
def _demo(args: argparse.Namespace, _store: Store) -> int:
    from retune.demo import run_demo

    return run_demo(
        epochs=args.epochs,
        name=args.name,
        seed=args.seed,
        store=args.store,
        step_delay=args.step_delay,
        scripted=args.scripted,
        ui_port=None if args.no_ui else args.port,
        keep_serving=not args.exit and sys.stdin.isatty(),  # scripts and CI get their prompt back
        resume=args.resume,
    )


# -- entry point -------------------------------------------------------------------------------
def _load_command_modules() -> None:
    from retune import (  # noqa: F401  (each registers its commands)
        _cli_checkpoints,
        _cli_control,
    )


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog="retune",
        description="Interactive hyperparameter tuning with experiment tracking.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store URL or path (default $RETUNE_STORE or "
                        "./.retune/retune.db)")  # fmt: skip
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in _COMMANDS.values():
        child = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        cmd.add_arguments(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed check, 2 error)."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    trailing: list[str] = []
    if "--" in words:  # everything after -- is a command to run (retune resume RUN -- ...)
        cut = words.index("--")
        words, trailing = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    args.trailing = trailing
    cmd = _COMMANDS[args.command]
    try:
        if not cmd.needs_store:
            return cmd.handler(args, _NO_STORE)
        with open_store(args.store) as store:
            return cmd.handler(args, store)
    except RetuneError as e:
        print(f"retune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retune: interrupted", file=sys.stderr)
        return 130


_NO_STORE: Any = None

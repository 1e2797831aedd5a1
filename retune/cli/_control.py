"""Controlling a live run: ``get``, ``set``, ``scale``, ``pause``, ``continue``, ``stop``,
``changes``."""

from __future__ import annotations

import argparse
from typing import Any

from retune._format import diff_text, number, table, timestamp
from retune.cli._registry import Group, emit_json, run_arg, wait_args
from retune.control import Controller, parse_assignments
from retune.control._parse import parse_group
from retune.errors import InvalidArgument
from retune.store import CommandRecord, Store

__all__ = ["COMMANDS", "report"]

COMMANDS = Group()


def _change_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    p.add_argument("--group", help="param group index or name (default: every group)")
    p.add_argument(
        "--mode",
        choices=["rescale", "constant"],
        default="rescale",
        help="with an LR scheduler: rescale keeps its shape (default), constant holds the value",
    )
    wait_args(p)


def report(args: argparse.Namespace, command: CommandRecord) -> int:
    """Print a sent command's outcome (queued, or applied at a step with its diff)."""
    if args.json:
        emit_json(command.__dict__)
        return 0
    if command.status == "pending":
        print(f"command {command.id} ({command.kind}) queued")
        return 0
    diff = command.result.get("diff", {})
    changes = diff_text(diff, "  ")
    where = f" at step {command.applied_step}" if command.applied_step is not None else ""
    print(
        f"applied {command.kind}{where}" + (f" (node n{command.node}): {changes}" if diff else "")
    )
    failed = command.result.get("checkpoint_error")
    if failed:  # applied, but "restore to before the change" has no checkpoint to go to
        print(f"warning: the checkpoint before this change was not saved: {failed}")
    return 0


def _controller(store: Store, args: argparse.Namespace) -> Controller:
    return Controller(store, args.run, source="cli")


def _change(kind: str, help: str) -> None:
    def handler(args: argparse.Namespace, store: Store) -> int:
        values = parse_assignments(args.assignments)
        group = parse_group(args.group)
        ctl = _controller(store, args)
        send = ctl.set if kind == "set" else ctl.scale
        done = send(values, group=group, mode=args.mode, wait=not args.no_wait,
                    timeout=args.timeout)  # fmt: skip
        return report(args, done)

    COMMANDS.command(kind, help, _change_args)(handler)


_change("set", "set tunables of a live run: retune set RUN lr=1e-3")
_change("scale", "multiply tunables of a live run: retune scale RUN lr=0.5")


def _plain_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    wait_args(p)


def _plain(kind: str, name: str, help: str) -> None:
    def handler(args: argparse.Namespace, store: Store) -> int:
        ctl = _controller(store, args)
        return report(args, ctl.send(kind, wait=not args.no_wait, timeout=args.timeout))

    COMMANDS.command(name, help, _plain_args)(handler)


_plain("pause", "pause", "hold a live run at its next step boundary")
# `continue` un-pauses; `resume` continues a run in a new process (see _checkpoints.py).
_plain("continue", "continue", "let a paused run continue")
_plain("stop", "stop", "end a live run cleanly at its next step boundary")


def _guard_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument(
        "action",
        choices=["on", "off", "veto", "set"],
        help="switch the guard, undo its last recovery (veto), or change its settings",
    )
    p.add_argument(
        "assignments",
        nargs="*",
        metavar="NAME=VALUE",
        help="with set: spike=4 lr_factor=0.3 max_attempts=5 skip=false",
    )
    wait_args(p)


@COMMANDS.command("guard", "control a run's guard: retune guard RUN off|on|veto|set spike=4",
                  _guard_args)  # fmt: skip
def _guard(args: argparse.Namespace, store: Store) -> int:
    if args.action == "set" and not args.assignments:
        raise InvalidArgument("retune guard RUN set needs NAME=VALUE, e.g. spike=4")
    if args.action != "set" and args.assignments:
        raise InvalidArgument(f"retune guard RUN {args.action} takes no NAME=VALUE")
    values = parse_assignments(args.assignments) if args.assignments else None
    ctl = _controller(store, args)
    done = ctl.guard(args.action, values, wait=not args.no_wait, timeout=args.timeout)
    return report(args, done)


def _live_value(entry: dict[str, Any]) -> Any:
    """The tunable's current value: the trainer rewrites the run's tunables records at each
    flush, so with a scheduler moving lr it is the optimizer's own value, not the last
    command's."""
    return entry.get("value")


@COMMANDS.command("get", "current values of a run's tunables, per param group", run_arg)
def _get(args: argparse.Namespace, store: Store) -> int:
    run = store.get_run(args.run)
    if args.json:
        emit_json({entry["name"]: _live_value(entry) for entry in run.tunables})
        return 0
    if not run.tunables:
        print(f"run {run.name} ({run.id}) declared no tunables")
        return 0
    rows = []
    for entry in run.tunables:
        value = _live_value(entry)
        groups = entry.get("groups")
        bounds = _bounds(entry)
        if groups is not None and isinstance(value, list):
            for i, v in enumerate(value):
                label = f"{i}" + (f" ({groups[i]})" if groups[i] else "")
                rows.append([entry["name"], label, number(v), bounds])
        else:
            rows.append([entry["name"], "-", number(value), bounds])
    print(table(["NAME", "GROUP", "VALUE", "BOUNDS"], rows))
    return 0


def _bounds(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "bool":
        return "true or false"
    if entry.get("kind") == "str":
        return "any text"
    low, high = entry.get("low"), entry.get("high")
    low_in, high_in = entry.get("low_inclusive", True), entry.get("high_inclusive", True)
    left = "(-inf" if low is None else f"{'[' if low_in else '('}{low:g}"
    right = "inf)" if high is None else f"{high:g}{']' if high_in else ')'}"
    return f"{left}, {right}" if (low is not None or high is not None) else "any finite"


@COMMANDS.command("changes", "every command sent to a run: who, when, what, outcome", run_arg)
def _changes(args: argparse.Namespace, store: Store) -> int:
    run = store.get_run(args.run)
    commands = store.list_commands(run.id)
    if args.json:
        emit_json([c.__dict__ for c in commands])
        return 0
    if not commands:
        print(f"no commands sent to {run.name} ({run.id})")
        return 0
    rows = []
    for c in commands:
        diff = c.result.get("diff")
        if diff:
            what = diff_text(diff, "  ")
        else:
            what = " ".join(f"{k}={number(v)}" for k, v in _flat(c.payload).items())
        outcome = c.status + (f": {c.reason}" if c.reason else "")
        who = f"{c.user or '?'} ({c.source})"
        step = "-" if c.applied_step is None else str(c.applied_step)
        rows.append([step, timestamp(c.created_at), who, f"{c.kind} {what}".strip(), outcome])
    print(table(["STEP", "TIME", "WHO", "WHAT", "OUTCOME"], rows))
    return 0


def _flat(payload: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            out.update(value)
        elif value is not None and key != "mode":
            out[key] = value
    return out

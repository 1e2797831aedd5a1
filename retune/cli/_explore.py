"""``retune explore``: try candidate values from one checkpoint and keep the best."""

from __future__ import annotations

import argparse
import time
from typing import Any

from retune._format import number, table
from retune.cli._registry import Group, count_arg, emit_json, run_arg, wait_args
from retune.control import Controller
from retune.control._commands import EXPLORE_CEILING, EXPLORE_DEFAULT_CAP
from retune.control._explore import describe_exploration
from retune.control._parse import parse_candidates, parse_group
from retune.errors import CommandRejected, CommandTimeout
from retune.store import Store

__all__ = ["COMMANDS"]

COMMANDS = Group()

_FINAL = ("done", "diverged", "failed", "cancelled")


def _args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument(
        "candidates",
        nargs="+",
        metavar="NAME=V1,V2,...",
        help="values to try; the candidates are every combination",
    )
    p.add_argument(
        "--steps", type=count_arg("--steps"), required=True, help="steps each candidate trains"
    )
    p.add_argument("--metric", required=True, help="the metric that scores (e.g. val_loss)")
    p.add_argument("--goal", choices=["min", "max"], default="min", help="default: min")
    p.add_argument(
        "--score",
        default="last",
        help="last (the metric's last point, default) or mean:K (its last K)",
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="CHECKPOINT",
        help="start every candidate from this checkpoint (default: a new one)",
    )
    p.add_argument(
        "--then",
        choices=["best", "stay"],
        default="best",
        help="best: continue from the winner (default); stay: go back",
    )
    p.add_argument(
        "--max-candidates",
        type=count_arg("--max-candidates"),
        default=None,
        help=f"the cap (default {EXPLORE_DEFAULT_CAP}, at most {EXPLORE_CEILING})",
    )
    p.add_argument("--group", help="param group index or name (default: every group)")
    p.add_argument(
        "--mode",
        choices=["rescale", "constant"],
        default="rescale",
        help="with an LR scheduler: rescale keeps its shape (default)",
    )
    wait_args(p, timeout=3600.0)


def _values(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={number(v)}" for k, v in values.items())


def _line(candidate: dict[str, Any]) -> str:
    score = number(candidate.get("score")) if candidate.get("score") is not None else "-"
    node = f"n{candidate['node']}" if candidate.get("node") is not None else "-"
    reason = f" ({candidate['reason']})" if candidate.get("reason") else ""
    return (
        f"candidate {candidate['index'] + 1} {_values(candidate['values'])}: {node} "
        f"{candidate['status']} score {score}{reason}"
    )


def _follow(ctl: Controller, command_id: int, timeout: float, quiet: bool) -> dict[str, Any]:
    """Wait until the exploration ends, printing each candidate as it ends (unless quiet)."""
    deadline = time.monotonic() + timeout
    shown: set[int] = set()
    while True:
        state = describe_exploration(ctl.store, command_id)
        if not quiet:
            for candidate in state["candidates"]:
                if candidate["status"] in _FINAL and candidate["index"] not in shown:
                    shown.add(candidate["index"])
                    print(_line(candidate), flush=True)
        if state["status"] not in ("pending", "running"):
            if state["status"] == "rejected":
                raise CommandRejected(state["reason"] or "rejected", command_id=command_id)
            return state
        if time.monotonic() >= deadline:
            raise CommandTimeout(
                f"exploration {command_id} is still {state['status']} after {timeout:g}s; "
                f"`retune explorations RUN` shows its progress"
            )
        time.sleep(0.2)


def _summary(state: dict[str, Any]) -> None:
    rows = []
    for c in state["candidates"]:
        score = number(c["score"]) if c.get("score") is not None else "-"
        mark = " *" if state.get("winner") == c["index"] else ""
        node = f"n{c['node']}" if c.get("node") is not None else "-"
        rows.append([str(c["index"] + 1) + mark, _values(c["values"]), node, c["status"], score])
    print(table(["#", "VALUES", "NODE", "STATUS", f"SCORE ({state.get('metric', '?')})"], rows))
    continued = state.get("continued") or {}
    where = f"n{continued['node']}" if continued.get("node") is not None else "?"
    source = f" from {continued['from']}" if continued.get("from") else ""
    winner = state.get("winner")
    head = f"winner: candidate {winner + 1}" if winner is not None else "no winner"
    reason = f" ({state['reason']})" if state.get("reason") else ""
    print(
        f"exploration {state['command']} {state['status']}{reason}: {head}; "
        f"the run continues on {where}{source}"
    )


@COMMANDS.command(
    "explore",
    "try values from one checkpoint, keep the best: "
    "retune explore RUN lr=1e-3,3e-4 --steps 300 --metric val_loss",
    _args,
)
def _explore(args: argparse.Namespace, store: Store) -> int:
    ctl = Controller(store, args.run, source="cli")
    command = ctl.explore(
        parse_candidates(args.candidates),
        steps=args.steps,
        metric=args.metric,
        goal=args.goal,
        score=args.score,
        start=args.start,
        then=args.then,
        max_candidates=args.max_candidates,
        group=parse_group(args.group),
        mode=args.mode,
    )
    if args.no_wait:
        if args.json:
            emit_json(describe_exploration(store, command.id))
        else:
            print(f"exploration {command.id} queued; `retune explorations {args.run}` follows it")
        return 0
    state = _follow(ctl, command.id, args.timeout, quiet=args.json)
    if args.json:
        emit_json(describe_exploration(store, command.id))
    else:
        _summary(state)
    return 0 if state["status"] in ("done", "cancelled") else 1


@COMMANDS.command("explorations", "the explorations of a run: candidates, scores, winner", run_arg)
def _explorations(args: argparse.Namespace, store: Store) -> int:
    from retune.control._explore import list_explorations

    run = store.get_run(args.run)
    states = list_explorations(store, run.id)
    if args.json:
        emit_json(states)
        return 0
    if not states:
        print(f"no explorations in {run.name} ({run.id})")
        return 0
    for i, state in enumerate(states):
        if i:
            print()
        _summary(state)
    return 0

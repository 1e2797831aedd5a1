"""CLI commands for checkpoints and the tree: checkpoint, restore, resume, tree, gc."""

from __future__ import annotations

import argparse
import os
import subprocess
from typing import Any

from retune._format import number
from retune.cli import command, emit_json, run_arg, wait_args
from retune.control import Controller, parse_assignments
from retune.errors import InvalidArgument
from retune.session._init import RESUME_FROM_ENV, RESUME_RUN_ENV
from retune.session._snapshot import read_snapshot
from retune.session._tree import TreeNode
from retune.store import Store

__all__ = ["draw_tree"]


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--tag", help="a name kept with the checkpoint (tagged ones are never pruned)")
    wait_args(p)


@command("checkpoint", "save a live run's full training state now", _checkpoint_args)
def _checkpoint(args: argparse.Namespace, store: Store) -> int:
    ctl = Controller(store, args.run, source="cli")
    done = ctl.send("checkpoint", {"tag": args.tag}, wait=not args.no_wait, timeout=args.timeout)
    if args.json:
        emit_json(done.__dict__)
    elif done.status == "pending":
        print(f"command {done.id} (checkpoint) queued")
    else:
        print(f"saved checkpoint {done.result.get('checkpoint')} at step {done.applied_step}")
    return 0


def _restore_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("target", help="c3, latest, a node n3, or n3@1200")
    p.add_argument("assignments", nargs="*", metavar="NAME=VALUE", help="new values to apply")
    p.add_argument("--group", help="param group for the new values")
    p.add_argument("--mode", choices=["rescale", "constant"], default="rescale")
    wait_args(p)


@command("restore", "send a live run back to a checkpoint, on a new branch", _restore_args)
def _restore(args: argparse.Namespace, store: Store) -> int:
    ctl = Controller(store, args.run, source="cli")
    group = int(args.group) if args.group and args.group.isdigit() else args.group
    done = ctl.restore(
        args.target,
        set=parse_assignments(args.assignments),
        group=group,
        mode=args.mode,
        wait=not args.no_wait,
        timeout=args.timeout,
    )
    if args.json:
        emit_json(done.__dict__)
    elif done.status == "pending":
        print(f"command {done.id} (restore) queued")
    else:
        diff = "  ".join(
            f"{k} {number(a)} -> {number(b)}" for k, (a, b) in done.result["diff"].items()
        )
        print(f"restored {done.result['checkpoint']}: now at step {done.applied_step} on node "
              f"n{done.node} {diff}".rstrip())  # fmt: skip
    return 0


def _resume_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--from", dest="target", default="latest", help="checkpoint (default latest)")
    wait_args(p)
    p.epilog = "the training command follows --, e.g. retune resume mnist -- python train.py"


@command(
    "resume",
    "let a paused run continue; with -- CMD, continue a run in a new process from a checkpoint",
    _resume_args,
)
def _resume(args: argparse.Namespace, store: Store) -> int:
    """``retune resume RUN`` un-pauses; ``retune resume RUN [--from C] -- CMD`` runs CMD so that
    its ``retune.init`` continues RUN from checkpoint C (default: the latest)."""
    from retune.checkpoint import resolve_checkpoint

    cmd = args.trailing
    if not cmd:
        ctl = Controller(store, args.run, source="cli")
        done = ctl.resume(wait=not args.no_wait, timeout=args.timeout)
        if args.json:
            emit_json(done.__dict__)
        else:
            print(f"applied resume at step {done.applied_step}" if done.status == "applied"
                  else f"command {done.id} (resume) queued")  # fmt: skip
        return 0
    run = store.get_run(args.run)
    checkpoint = resolve_checkpoint(store, run.id, args.target)
    print(f"retune: resuming {run.name} ({run.id}) from {checkpoint.label} at step "
          f"{checkpoint.step}: {' '.join(cmd)}", flush=True)  # fmt: skip
    env = {**os.environ, RESUME_RUN_ENV: run.id, RESUME_FROM_ENV: checkpoint.label}
    if args.store:
        env["RETUNE_STORE"] = args.store
    try:
        return subprocess.call(cmd, env=env)
    except OSError as e:
        raise InvalidArgument(f"cannot run {cmd[0]!r}: {e}") from e


def _metric_line(node: TreeNode, keys: int = 3) -> str:
    parts = []
    preferred = sorted(node.metrics, key=lambda k: (not k.startswith("val"), "loss" not in k, k))
    for key in preferred[:keys]:
        summary = node.metrics[key]
        parts.append(f"{key}={number(summary['last'])}")
    return " ".join(parts)


def _describe(node: TreeNode) -> str:
    end = "…" if node.end_step is None else str(node.end_step)
    diff = ", ".join(f"{k} {number(a)} -> {number(b)}" for k, (a, b) in node.diff.items())
    change = node.change_kind if not diff else f"{node.change_kind} {diff}"
    shown = node.checkpoints
    if len(shown) > 4:
        shown = (shown[0], "…", shown[-1], f"{len(node.checkpoints)} in all")
    checkpoints = f" [{', '.join(shown)}]" if shown else ""
    return (
        f"{node.label} steps {node.start_step}..{end}  {change}  {_metric_line(node)}{checkpoints}"
    )


def draw_tree(nodes: list[TreeNode], current: int | None = None) -> list[str]:
    """One line per node, children indented under their parent like ``git log --graph``."""
    by_id = {n.id: n for n in nodes}
    lines: list[str] = []

    def walk(node: TreeNode, prefix: str, last: bool, root: bool) -> None:
        marker = "* " if node.id == current else "o "
        branch = "" if root else ("└─ " if last else "├─ ")
        lines.append(f"{prefix}{branch}{marker}{_describe(node)}".rstrip())
        below = prefix if root else prefix + ("   " if last else "│  ")
        for i, child in enumerate(node.children):
            walk(by_id[child], below, i == len(node.children) - 1, False)

    for node in nodes:
        if node.parent is None:
            walk(node, "", True, True)
    return lines


@command("tree", "the run's tuning tree: nodes, diffs, metrics, checkpoints", run_arg)
def _tree(args: argparse.Namespace, store: Store) -> int:
    snapshot = read_snapshot(store, args.run)
    nodes = snapshot.tree()
    if args.json:
        emit_json(
            {"run": snapshot.id, "name": snapshot.name, "nodes": [n.to_dict() for n in nodes]}
        )
        return 0
    live = snapshot.status in ("running", "paused")
    current = max((n.id for n in nodes if n.end_step is None), default=None) if live else None
    print(f"{snapshot.name} ({snapshot.id}), {snapshot.status}; * = training now")
    print("\n".join(draw_tree(nodes, current)))
    return 0


def _gc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objects", help="blob location (default: objects/ beside the store)")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted")


@command("gc", "delete checkpoint blobs that no checkpoint refers to", _gc_args)
def _gc(args: argparse.Namespace, store: Store) -> int:
    from retune.checkpoint import ObjectStore, manifest_blobs
    from retune.store import objects_url_for

    manifests = store.all_manifests()
    used: set[str] = set()
    for manifest in manifests:
        used |= manifest_blobs(manifest)
    locations = {args.objects or objects_url_for(store.url)}
    locations |= {m["objects"] for m in manifests if m.get("objects")}
    deleted, freed = 0, 0
    for location in sorted(locations):
        objects = ObjectStore(location)
        for key in list(objects.keys()):
            if key not in used:
                freed += objects.size(key)
                deleted += 1
                if not args.dry_run:
                    objects.delete(key)
    result: dict[str, Any] = {"deleted": deleted, "bytes": freed, "kept": len(used),
                              "dry_run": args.dry_run}  # fmt: skip
    if args.json:
        emit_json(result)
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {deleted} blobs ({freed:,} bytes); {len(used)} in use")
    return 0


def _ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--token", help="require this token (or 'auto'); needed off loopback")
    p.add_argument("--read-only", action="store_true", help="serve without any control")


@command("ui", "serve the dashboard (runs, live charts, control panel, tree, audit log)", _ui_args)
def _ui(args: argparse.Namespace, store: Store) -> int:
    from retune.server import serve

    serve(store, host=args.host, port=args.port, token=args.token, read_only=args.read_only)
    return 0

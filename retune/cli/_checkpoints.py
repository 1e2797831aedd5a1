"""Checkpoints and the tree: ``checkpoint``, ``restore``, ``resume``, ``tree``, ``gc``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from retune._files import write_text_file
from retune._format import diff_text, draw_tree, size, table, timestamp
from retune.checkpoint import resolve_checkpoint
from retune.cli._control import report
from retune.cli._registry import (
    Group,
    emit_json,
    int_arg,
    run_arg,
    seconds_arg,
    wait_args,
)
from retune.control import Controller, parse_assignments
from retune.control._commands import restore_payload
from retune.control._parse import parse_group
from retune.errors import CheckpointNotFound, InvalidArgument, RunInUse
from retune.session._init import RESUME_FROM_ENV, RESUME_RUN_ENV
from retune.session._snapshot import RunSnapshot, read_snapshot
from retune.store import CheckpointRecord, Store, current_user, in_use_message, is_live

__all__ = ["COMMANDS"]

COMMANDS = Group()


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--tag", help="a name kept with the checkpoint (tagged ones are never pruned)")
    wait_args(p)


@COMMANDS.command("checkpoint", "save a live run's full training state now", _checkpoint_args)
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


def _resolution(target: str, checkpoint: CheckpointRecord) -> str | None:
    """A note when ``target`` names a step other than the checkpoint's (``n3@1200`` -> c4 at
    step 1000); None when it names the checkpoint itself."""
    _, at, step = target.strip().partition("@")
    if at and step.isascii() and step.isdigit() and int(step) != checkpoint.step:
        return (f"{target} resolves to {checkpoint.label} at step {checkpoint.step}, the latest "
                f"checkpoint at or before step {int(step)} on that branch")  # fmt: skip
    return None


@COMMANDS.command("restore", "send a live run back to a checkpoint, on a new branch",
                  _restore_args)  # fmt: skip
def _restore(args: argparse.Namespace, store: Store) -> int:
    """Checks everything before sending: the values, the group and the target (which must name
    a checkpoint; a step beyond its node is refused). Says which checkpoint and step the target
    resolved to, and, once applied, which checkpoint was restored."""
    values = parse_assignments(args.assignments)
    group = parse_group(args.group)
    ctl = Controller(store, args.run, source="cli")
    run = ctl.run
    last = store.last_metrics([run.id])[run.id]
    recorded = max([run.step, *(step for step, _ in last.values())])  # what the user has seen
    try:
        resolved = resolve_checkpoint(store, run.id, args.target, current_step=recorded)
    except CheckpointNotFound as e:  # refused before sending: in the audit all the same
        payload = restore_payload(args.target, values, group, args.mode)
        store.submit_command(run.id, "restore", payload, source="cli", user=current_user(),
                             status="rejected", reason=str(e))  # fmt: skip
        raise
    note = _resolution(args.target, resolved)
    if note and not args.json:
        print(note, flush=True)
    done = ctl.restore(args.target, set=values, group=group, mode=args.mode,
                       wait=not args.no_wait, timeout=args.timeout)  # fmt: skip
    if args.json:
        emit_json(done.__dict__)
    elif done.status == "pending":
        print(f"command {done.id} (restore) queued")
    else:
        label = done.result["checkpoint"]
        steps = {c.label: c.step for c in store.list_checkpoints(run.id)}
        at = f" (step {steps[label]})" if label in steps else ""
        diff = diff_text(done.result.get("diff", {}), "  ")
        print(f"restored {label}{at}: now on node n{done.node} at step {done.applied_step} "
              f"{diff}".rstrip())  # fmt: skip
    return 0


def _resume_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--from", dest="target", default="latest", help="checkpoint (default latest)")
    wait_args(p)
    p.epilog = "the training command follows --, e.g. retune resume mnist -- python train.py"


@COMMANDS.command(
    "resume",
    "continue a run in a new process from a checkpoint: retune resume RUN -- python train.py",
    _resume_args,
)
def _resume(args: argparse.Namespace, store: Store) -> int:
    """``retune resume RUN [--from C] -- CMD`` runs CMD so that its ``retune.init`` continues
    RUN from checkpoint C (default: the latest). Without ``-- CMD`` it is the old spelling of
    ``retune continue RUN`` (un-pause), kept as an alias with a note."""
    cmd = args.trailing
    if not cmd:
        note = ("retune: note: `retune resume RUN` without `-- CMD` is `retune continue RUN` "
                "(un-pause); `resume` now means continuing in a new process")  # fmt: skip
        print(note, file=sys.stderr)
        ctl = Controller(store, args.run, source="cli")
        return report(args, ctl.continue_(wait=not args.no_wait, timeout=args.timeout))
    run = store.get_run(args.run)
    if is_live(run):  # its retune.init would refuse it: say so here, and start nothing
        raise RunInUse(in_use_message(run))
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


@COMMANDS.command(
    "checkpoints", "a run's listed checkpoints: label, step, node, why, tag, size", run_arg
)
def _checkpoints(args: argparse.Namespace, store: Store) -> int:
    """Every checkpoint the run lists (each restorable: complete and durable), oldest first."""
    run = store.get_run(args.run)
    listed = store.list_checkpoints(run.id)
    if args.json:
        emit_json([{"label": c.label, "step": c.step, "node": f"n{c.node}", "reason": c.reason,
                    "tag": c.tag, "nbytes": c.nbytes, "created_at": c.created_at}
                   for c in listed])  # fmt: skip
        return 0
    if not listed:
        print(f"no checkpoints listed for {run.name} ({run.id})")
        return 0
    rows = [[c.label, str(c.step), f"n{c.node}", c.reason, c.tag or "", size(c.nbytes),
             timestamp(c.created_at)] for c in listed]  # fmt: skip
    print(table(["CHECKPOINT", "STEP", "NODE", "WHY", "TAG", "SIZE", "CREATED"], rows))
    return 0


def picture_args(p: argparse.ArgumentParser) -> None:
    """The options of the tree picture (``tree --svg`` and ``report``)."""
    p.add_argument(
        "--color-by",
        metavar="METRIC",
        help="colour nodes by this metric's last value (default: a validation loss)",
    )
    p.add_argument(
        "--goal",
        choices=["min", "max"],
        help="which end of --color-by is best (default: from its name)",
    )
    p.add_argument("--collapse", action=argparse.BooleanOptionalAction, default=None,
                   help="fold chains of single-child changes into one segment "
                   "(default: for trees of more than 120 nodes)")  # fmt: skip


def _tree_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--svg", metavar="FILE", help="write the tree as an SVG picture to FILE")
    picture_args(p)
    p.add_argument("--width", type=int_arg("--width"), help="picture width in pixels")


def _write_svg(args: argparse.Namespace, snapshot: RunSnapshot) -> int:
    from retune.viz import tree_picture

    picture = tree_picture(snapshot, color_by=args.color_by, goal=args.goal, width=args.width,
                           collapse_chains=args.collapse)  # fmt: skip
    write_text_file(args.svg, picture.svg)
    if args.json:
        emit_json({"run": snapshot.id, "svg": args.svg, "nodes": len(picture.layout.nodes),
                   "lanes": picture.layout.lanes, "color_by": picture.color_by,
                   "best": picture.best, "current": picture.current})  # fmt: skip
    else:
        print(f"wrote {args.svg}: {len(picture.layout.nodes)} nodes on "
              f"{picture.layout.lanes} lanes")  # fmt: skip
    return 0


@COMMANDS.command("tree", "the run's tuning tree: nodes, diffs, metrics, checkpoints (--svg: "
                  "as a picture)", _tree_args)  # fmt: skip
def _tree(args: argparse.Namespace, store: Store) -> int:
    snapshot = read_snapshot(store, args.run)
    if args.svg is not None:
        return _write_svg(args, snapshot)
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
    p.add_argument(
        "--grace",
        type=seconds_arg("--grace"),
        default=3600.0,
        metavar="SECONDS",
        help="never delete blobs or partial files younger than this (default 3600)",
    )


@COMMANDS.command("gc", "delete checkpoint blobs that no checkpoint refers to", _gc_args)
def _gc(args: argparse.Namespace, store: Store) -> int:
    """Sweep this store's object location (see ``retune.checkpoint._gc`` for the safety rules);
    exit 1 when a running save held the location for the whole wait (nothing deleted)."""
    from retune.checkpoint._gc import collect_garbage
    from retune.store import objects_url_for

    location = args.objects or objects_url_for(store.url)
    report = collect_garbage(store, location, grace_seconds=args.grace, dry_run=args.dry_run)
    if args.json:
        emit_json(report.to_dict())
        return 1 if report.busy else 0
    if report.busy:
        print(f"retune: a checkpoint save kept {report.location} busy; nothing was deleted, "
              "try again", file=sys.stderr)  # fmt: skip
        return 1
    verb = "would delete" if args.dry_run else "deleted"
    lines = [
        f"{verb} {report.deleted} blobs ({report.freed_bytes:,} bytes) in {report.location}; "
        f"{report.kept} in use",
        f"partial .tmp- files: {verb} {report.temporaries} "
        f"({report.temporaries_bytes:,} bytes), kept {report.temporaries_kept} "
        "(younger than the grace period)",
    ]
    if report.young:
        lines.append(f"kept {report.young} unused blobs younger than the grace period")
    if report.other_stores:
        lines.append(f"kept {report.other_stores} blobs that other stores use "
                     f"({', '.join(report.stores)})")  # fmt: skip
    print("\n".join(lines))
    return 0

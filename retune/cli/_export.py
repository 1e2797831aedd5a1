"""Comparing nodes and exporting runs: ``compare``, ``export``."""

from __future__ import annotations

import argparse

from retune._format import diff_text, number, table
from retune.cli._registry import Group, count_arg, emit_json, run_arg
from retune.errors import InvalidArgument
from retune.store import Store

__all__ = ["COMMANDS"]

COMMANDS = Group()


# -- compare -----------------------------------------------------------------------------------
def _compare_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("nodes", nargs="+", metavar="NODE", help="nodes to compare, e.g. n3 n5 n7")
    p.add_argument("--metric", action="append", metavar="KEY",
                   help="only this metric (repeatable; default: every metric)")  # fmt: skip
    p.add_argument("--rows", type=count_arg("--rows"), default=10,
                   help="shared steps shown per metric (default 10)")  # fmt: skip
    p.add_argument("--max-points", type=count_arg("--max-points"), default=2000,
                   help="with --json: downsample each branch to this many points "
                   "(default 2000)")  # fmt: skip


@COMMANDS.command("compare", "nodes side by side: what differs, and their branches' metrics "
                  "aligned by step", _compare_args)  # fmt: skip
def _compare(args: argparse.Namespace, store: Store) -> int:
    from retune._compare import compare

    if args.max_points < 3:
        raise InvalidArgument(f"--max-points must be at least 3, got {args.max_points}")
    result = compare(store, args.run, args.nodes, metrics=args.metric)
    if args.json:
        emit_json(result.to_dict(max_points=args.max_points, rows=args.rows))
        return 0
    labels = result.labels
    print(f"run {result.run.name} ({result.run.id}): {' vs '.join(labels)}")
    for node in result.nodes:
        parent = "root" if node.parent is None else f"from n{node.parent}"
        change = diff_text(node.diff) or "no change"
        print(f"  {node.label}  {node.change_kind} {parent} at step {node.start_step}: {change}")
    print()
    if result.params:
        cells = [[("* " if r.differs else "  ") + r.name, *(number(v) for v in r.values)]
                 for r in result.params]  # fmt: skip
        print(table(["  HYPERPARAMETER", *labels], cells))
        print("(* differs)" if result.differing() else "(no hyperparameter differs)")
    for key in result.keys:
        steps, columns = result.aligned(key, args.rows)
        print()
        print(f"{key}: the branches part at step {result.diverge_step}")
        rows = [
            [str(step), *(number(float(column[i])) for column in columns)]
            for i, step in enumerate(steps.tolist())
        ]
        last = []
        for branch in result.branches[key]:
            point = branch.last()
            last.append("-" if point is None else f"{number(point[1])} @{point[0]}")
        rows.append(["last", *last])
        print(table(["STEP", *labels], rows))
    return 0


# -- export ------------------------------------------------------------------------------------
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run id, or name (the latest run with that name)")
    p.add_argument("--to", required=True, nargs="+", metavar=("TARGET", "DIR"),
                   help="mlflow, or tensorboard DIR, csv DIR, parquet DIR (a folder, created "
                   "if missing)")  # fmt: skip
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's own: "
                   "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")  # fmt: skip
    p.add_argument("--experiment", help="MLflow experiment name (default: the run's name)")


@COMMANDS.command("export", "a run's tree to MLflow, TensorBoard, CSV or Parquet", _export_args)
def _export(args: argparse.Namespace, store: Store) -> int:
    from retune.export import TARGETS, export

    words = list(args.to)
    run = args.run
    if run is None:  # `retune export --to csv DIR RUN`: --to took the run too
        wanted = 1 if words and words[0] == "mlflow" else 2
        if len(words) == wanted + 1:
            run = words.pop()
        else:
            raise InvalidArgument("name the run to export: retune export RUN --to TARGET [DIR]")
    args.to = words
    target, dest = words[0], (words[1] if len(words) > 1 else None)
    if len(args.to) > 2 or target not in TARGETS:
        raise InvalidArgument(f"--to takes a target ({', '.join(TARGETS)}) and, except for "
                              f"mlflow, a folder; got {' '.join(args.to)!r}")  # fmt: skip
    if target == "mlflow":
        if dest is not None:
            raise InvalidArgument("--to mlflow takes no folder; use --tracking-uri URI")
        summary = export(store, run, "mlflow", tracking_uri=args.tracking_uri,
                         experiment=args.experiment)  # fmt: skip
    else:
        if dest is None:
            raise InvalidArgument(f"--to {target} needs a folder: retune export RUN --to "
                                  f"{target} DIR")  # fmt: skip
        if args.tracking_uri is not None or args.experiment is not None:
            raise InvalidArgument("--tracking-uri and --experiment are for --to mlflow")
        summary = export(store, run, target, dest=dest)
    if args.json:
        emit_json(summary.to_dict())
    else:
        print(summary.describe())
    return 0

"""The one-file report: ``retune report RUN -o run.html``."""

from __future__ import annotations

import argparse
import re

from retune.cli._checkpoints import picture_args
from retune.cli._registry import Group, count_arg, emit_json, run_arg
from retune.store import Store

__all__ = ["COMMANDS"]

COMMANDS = Group()


def _report_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument(
        "-o", "--output", metavar="FILE", help="where to write (default NAME.html, the run's name)"
    )
    picture_args(p)
    p.add_argument("--max-points", type=count_arg("--max-points"), default=2000,
                   help="about how many points each chart draws (default 2000)")  # fmt: skip


@COMMANDS.command("report", "write a run's self-contained HTML report (tree, charts, audit log, "
                  "config): retune report RUN -o run.html", _report_args)  # fmt: skip
def _report(args: argparse.Namespace, store: Store) -> int:
    """Reads the run, renders :func:`retune.viz._report.report_html` and writes it whole (a
    temporary file renamed into place): a failure leaves no half-written file."""
    from retune._files import write_text_file
    from retune.errors import InvalidArgument
    from retune.session._snapshot import read_snapshot
    from retune.viz._report import report_html

    if args.max_points < 3:
        raise InvalidArgument(f"--max-points must be at least 3, got {args.max_points}")
    snapshot = read_snapshot(store, args.run)
    html = report_html(snapshot, store.list_commands(snapshot.id), color_by=args.color_by,
                       goal=args.goal, collapse_chains=args.collapse,
                       max_points=args.max_points)  # fmt: skip
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", snapshot.name).strip("._") or snapshot.id
    path = args.output or f"{safe}.html"
    write_text_file(path, html)
    if args.json:
        emit_json({"run": snapshot.id, "report": path, "bytes": len(html.encode())})
    else:
        print(f"wrote {path} ({len(html.encode()):,} bytes): {snapshot.name} ({snapshot.id}), "
              f"{len(snapshot.nodes)} nodes, {len(snapshot.series)} metrics")  # fmt: skip
    return 0

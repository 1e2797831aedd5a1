"""The ``retune`` command line.

Each module below owns one group of commands (a :class:`~retune.cli._registry.Group`); the
parser is built from the explicit list :data:`MODULES`, so adding a command is one decorated
function in its group's module. Every ``RetuneError`` becomes one line on stderr and exit code
2; a reader that goes away (``retune metrics RUN loss | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from retune.cli import (
    _checkpoints,
    _control,
    _db,
    _explore,
    _export,
    _notes,
    _report,
    _runs,
    _serve,
)
from retune.cli._registry import Command
from retune.errors import RetuneError, redact
from retune.store import open_store

__all__ = ["MODULES", "build_parser", "main"]

MODULES = (_runs, _notes, _control, _explore, _checkpoints, _export, _report, _serve, _db)
"""The command groups, in the order ``retune --help`` lists them."""

EXIT_BROKEN_PIPE = 141  # what a shell reports for a command ended by SIGPIPE


def commands() -> dict[str, Command]:
    """Every command by name, from :data:`MODULES`."""
    out: dict[str, Command] = {}
    for module in MODULES:
        for cmd in module.COMMANDS.commands:
            if cmd.name in out:
                raise RuntimeError(f"two CLI commands are named {cmd.name!r}")
            out[cmd.name] = cmd
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command, each with ``--store`` and ``--json``."""
    parser = argparse.ArgumentParser(
        prog="retune",
        description="Interactive hyperparameter tuning with experiment tracking.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store URL or path (default $RETUNE_STORE or "
                        "./.retune/retune.db)")  # fmt: skip
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in commands().values():
        child = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        cmd.add_arguments(child)
    return parser


def _dispatch(cmd: Command, args: argparse.Namespace) -> int:
    if cmd.store == "none":
        return cmd.handler(args, _NO_STORE)
    # `ui` may create the store it will show, but `ui --read-only` only ever reads one
    create = cmd.store == "create" and not getattr(args, "read_only", False)
    with open_store(args.store, create=create) as store:
        args.store_shown = redact(store.url)
        return cmd.handler(args, store)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (tests)
        pass
    finally:
        os.close(devnull)  # stdout's descriptor now refers to /dev/null on its own


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed check, 2 error, 130 interrupted,
    141 when stdout's reader went away, as after ``| head``)."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    trailing: list[str] = []
    if "--" in words:  # everything after -- is a command to run (retune resume RUN -- ...)
        cut = words.index("--")
        words, trailing = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    args.trailing = trailing
    cmd = commands()[args.command]
    try:
        code = _dispatch(cmd, args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except RetuneError as e:
        print(f"retune: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retune: interrupted", file=sys.stderr)
        return 130


_NO_STORE: Any = None

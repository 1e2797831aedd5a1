"""The CLI's small registry: each command module owns a :class:`Group` of commands, and the
pieces every group shares (the RUN argument, --no-wait/--timeout, typed numbers, JSON output).

A command is ``(args, store) -> exit code``. Its ``store`` says how the store is opened:
``"read"`` (must already exist: a mistyped ``--store`` creates nothing), ``"create"`` (created
when missing: ``retune ui`` may start before the first run), or ``"none"`` (the handler opens
what it needs itself, e.g. ``db upgrade``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from retune import _json
from retune.control._parse import parse_count, parse_int, parse_seconds
from retune.errors import InvalidArgument
from retune.store import RunRecord, Store, is_stale

__all__ = [
    "Command",
    "Group",
    "StoreUse",
    "count_arg",
    "emit_json",
    "int_arg",
    "run_arg",
    "run_status",
    "seconds_arg",
    "wait_args",
]

T = TypeVar("T")
Handler = Callable[[argparse.Namespace, Store], int]
StoreUse = Literal["read", "create", "none"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, handler, arguments and how it uses the store."""

    name: str
    help: str
    handler: Handler
    add_arguments: Callable[[argparse.ArgumentParser], None]
    store: StoreUse


@dataclass
class Group:
    """The commands of one CLI module, in the order they were registered."""

    commands: list[Command] = field(default_factory=list)

    def command(
        self,
        name: str,
        help: str,
        arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
        *,
        store: StoreUse = "read",
    ) -> Callable[[Handler], Handler]:
        """Register a subcommand: ``@COMMANDS.command("runs", "list runs", add_args)``."""

        def register(handler: Handler) -> Handler:
            self.commands.append(Command(name, help, handler, arguments, store))
            return handler

        return register


def _argparse_type(parse: Callable[[str, str], T], what: str) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            return parse(text, what)
        except InvalidArgument as e:  # argparse prints the message as a usage error (exit 2)
            raise argparse.ArgumentTypeError(str(e)) from e

    convert.__name__ = what  # argparse names the type in its messages
    return convert


def int_arg(what: str) -> Callable[[str], int]:
    """An argparse ``type=``: a 64-bit integer in ASCII digits (``int('٣')`` is refused)."""
    return _argparse_type(parse_int, what)


def count_arg(what: str) -> Callable[[str], int]:
    """An argparse ``type=``: like :func:`int_arg`, 0 or more."""
    return _argparse_type(parse_count, what)


def seconds_arg(what: str) -> Callable[[str], float]:
    """An argparse ``type=``: finite seconds, 0 or more, in ASCII digits."""
    return _argparse_type(parse_seconds, what)


def run_arg(p: argparse.ArgumentParser) -> None:
    """The RUN positional every per-run command takes."""
    p.add_argument("run", help="run id, or name (the latest run with that name)")


def wait_args(p: argparse.ArgumentParser, timeout: float = 120.0) -> None:
    """--no-wait / --timeout for commands sent to a live run."""
    p.add_argument("--no-wait", action="store_true", help="queue the command and return at once")
    p.add_argument(
        "--timeout",
        type=seconds_arg("--timeout"),
        default=timeout,
        help=f"seconds to wait (default {timeout:g})",
    )


def emit_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (NaN and inf as strings, see ``retune._json``)."""
    print(_json.dumps(value, indent=2))


def run_status(run: RunRecord, now: float | None = None) -> str:
    """The status, with ``stale`` for a live run whose heartbeat stopped (killed, frozen)."""
    if is_stale(run, now) and run.heartbeat_at is not None:
        return f"{run.status} (stale)"
    return run.status

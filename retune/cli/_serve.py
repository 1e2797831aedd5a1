"""Serving and showing: ``ui`` (the dashboard) and ``demo``."""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from retune.cli._registry import Group, count_arg, int_arg, seconds_arg
from retune.errors import InvalidArgument
from retune.store import Store

__all__ = ["COMMANDS", "check_port"]

COMMANDS = Group()


def check_port(host: str, port: int) -> None:
    """Raise ``InvalidArgument`` (one line) unless ``host:port`` can be bound now.

    Binds and releases a socket with the options uvicorn uses (``SO_REUSEADDR``), so a port
    held only by connections in TIME_WAIT counts as free and a listening one as in use.
    """
    if not 0 < port < 65536:
        raise InvalidArgument(f"port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidArgument(f"cannot serve on {host!r}: {e}") from e
    family, _, _, _, address = infos[0]
    try:
        with socket.create_server(address[:2], family=family):
            pass
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise InvalidArgument(
                f"port {port} is in use (another `retune ui`?); choose one with --port"
            ) from e
        raise InvalidArgument(f"cannot serve on {host}:{port}: {e.strerror or e}") from e


def _ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=count_arg("--port"), default=8765, help="port (default 8765)")
    p.add_argument("--token", help="require this token (or 'auto'); needed off loopback")
    p.add_argument("--read-only", action="store_true", help="serve without any control")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer for this host name (repeatable; needs --token), e.g. the "
                   "machine's LAN name when serving on 0.0.0.0")  # fmt: skip


@COMMANDS.command("ui", "serve the dashboard (runs, live charts, control panel, tree, audit log)",
                  _ui_args, store="create")  # fmt: skip
def _ui(args: argparse.Namespace, store: Store) -> int:
    """Serve until Ctrl-C. A port already in use is one line on stderr and exit 2 (no
    "dashboard at" line first): the URL stays the one you asked for, never another port."""
    from retune.server import check_bind, serve

    check_bind(args.host, args.token)  # the binding rules first: no token off loopback
    check_port(args.host, args.port)
    serve(store, host=args.host, port=args.port, token=args.token, read_only=args.read_only,
          allowed_hosts=args.allowed_host)  # fmt: skip
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=count_arg("--epochs"), default=30,
                   help="training epochs (default 30)")  # fmt: skip
    p.add_argument("--name", default="digits-cnn", help="run name (default digits-cnn)")
    p.add_argument("--seed", type=int_arg("--seed"), default=0)
    p.add_argument(
        "--step-delay",
        type=seconds_arg("--step-delay"),
        default=0.05,
        help="seconds to sleep per step, so a person can steer it (default 0.05; 0 = full speed)",
    )
    p.add_argument(
        "--scripted",
        action="store_true",
        help="also play a tuning session: a set, a restore, a resume in a new process "
        "(it stops as soon as someone else sends a command)",
    )
    p.add_argument("--no-ui", action="store_true", help="do not serve the dashboard")
    p.add_argument("--port", type=count_arg("--port"), default=8765,
                   help="dashboard port (default 8765; the next free one if taken)")  # fmt: skip
    p.add_argument(
        "--exit", action="store_true", help="exit when training ends (else keep serving)"
    )
    p.add_argument("--resume", help=argparse.SUPPRESS)  # used by --scripted's second process


@COMMANDS.command("demo", "train a small CNN on the digits data with Retune attached",
                  _demo_args, store="none")  # fmt: skip
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

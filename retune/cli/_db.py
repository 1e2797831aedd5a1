"""The store itself: ``db upgrade``."""

from __future__ import annotations

import argparse

from retune.cli._registry import Group, emit_json
from retune.store import Store

__all__ = ["COMMANDS"]

COMMANDS = Group()


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["upgrade"], help="upgrade: migrate to this Retune's schema")


@COMMANDS.command("db", "manage the store's schema", _db_args, store="none")
def _db(args: argparse.Namespace, _store: Store) -> int:
    """``db upgrade`` creates the store when there is none yet, else migrates it."""
    from retune.store import upgrade_store

    before, after = upgrade_store(args.store)
    if args.json:
        emit_json({"before": before, "after": after})
    elif before == after:
        print(f"store is up to date (schema {after})")
    else:
        print(f"upgraded store schema {before or 'empty'} -> {after}")
    return 0

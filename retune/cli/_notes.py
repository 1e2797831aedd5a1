"""What people write about a run: ``tag`` and ``note``."""

from __future__ import annotations

import argparse

from retune.cli._registry import Group, emit_json, run_arg
from retune.errors import InvalidArgument
from retune.store import Store, open_store

__all__ = ["COMMANDS", "parse_tag_changes"]

COMMANDS = Group()


def parse_tag_changes(words: list[str]) -> tuple[list[str], list[str]]:
    """``["+best", "-draft", "ablation"]`` -> tags to add ``["best", "ablation"]`` and to remove
    ``["draft"]`` (a bare word adds). Raises ``InvalidArgument`` for a lone ``+`` or ``-``."""
    add: list[str] = []
    remove: list[str] = []
    for word in words:
        sign, name = (word[0], word[1:]) if word[:1] in "+-" else ("+", word)
        if not name:
            raise InvalidArgument(f"{word!r} names no tag: write +TAG to add, -TAG to remove")
        (add if sign == "+" else remove).append(name)
    return add, remove


def _tag_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    # REMAINDER keeps "-draft" a tag to remove, not an unknown option
    what = "tags to add (+TAG or TAG) and remove (-TAG); none: list the tags"
    p.add_argument("changes", nargs=argparse.REMAINDER, metavar="[+TAG|-TAG ...]", help=what)
    p.epilog = "e.g. retune tag mnist +baseline -draft"


def _options_among(args: argparse.Namespace, words: list[str]) -> list[str]:
    """``--store URL`` / ``--store=URL`` / ``--json`` written after the tags are still the
    options (REMAINDER captured them); the rest are tag changes."""
    rest: list[str] = []
    items = iter(words)
    for word in items:
        if word == "--json":
            args.json = True
        elif word == "--store":
            args.store = next(items, None)
            if args.store is None:
                raise InvalidArgument("--store needs a URL or path")
        elif word.startswith("--store="):
            args.store = word.removeprefix("--store=")
        elif word != "--":
            rest.append(word)
    return rest


@COMMANDS.command("tag", "add or remove a run's tags: retune tag RUN +best -draft", _tag_args,
                  store="none")  # fmt: skip
def _tag(args: argparse.Namespace, _store: Store) -> int:
    words = _options_among(args, list(args.changes))
    add, remove = parse_tag_changes(words)  # bad input changes nothing, not even opens a store
    with open_store(args.store, create=False) as store:
        run = store.get_run(args.run)
        if words:
            run = store.set_run_tags(run.id, add=add, remove=remove)
    if args.json:
        emit_json({"id": run.id, "name": run.name, "tags": list(run.tags)})
    else:
        tags = " ".join(run.tags) if run.tags else "(no tags)"
        print(f"{run.name} ({run.id}): {tags}")
    return 0


def _note_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("text", nargs="?", help='the new note ("" clears it); none: print the note')


@COMMANDS.command("note", 'set a run\'s free-text note: retune note RUN "text"', _note_args)
def _note(args: argparse.Namespace, store: Store) -> int:
    run = store.get_run(args.run)
    if args.text is not None:
        run = store.set_run_note(run.id, args.text)
    if args.json:
        emit_json({"id": run.id, "name": run.name, "note": run.note})
    elif args.text is None:
        print(run.note if run.note else f"{run.name} ({run.id}) has no note")
    else:
        print(f"{run.name} ({run.id}): note {'cleared' if not run.note else 'saved'}")
    return 0

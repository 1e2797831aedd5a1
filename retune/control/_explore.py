"""Reading an exploration's state: what the CLI, the dashboard and ``Controller`` show.

An ``explore`` command is one command in the audit. While it runs (status ``applying``) the
training process records an ``explore`` event each time a candidate starts or ends, holding
the whole state so far; when it ends, the command's ``result`` holds the final state. This
module turns either into one JSON-ready description (see :func:`describe_exploration`).
"""

from __future__ import annotations

from typing import Any

from retune.errors import InvalidArgument
from retune.store import CommandRecord, Store

__all__ = ["describe_exploration", "list_explorations"]


def _describe(
    store: Store, command: CommandRecord, states: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "command": command.id,
        "run_id": command.run_id,
        "spec": command.payload,
        "user": command.user,
        "source": command.source,
        "created_at": command.created_at,
        "resolved_at": command.resolved_at,
        "reason": command.reason,
    }
    if command.result.get("candidates") is not None:
        state = dict(command.result)
    else:
        state = dict(states.get(command.id, {}))
    if command.status == "pending":
        state.setdefault("status", "pending")
    elif command.status == "rejected" and not state.get("status"):
        state["status"] = "rejected"
    elif command.status == "rejected" and state.get("status") == "running":
        state["status"] = "interrupted"  # the run ended and the store rejected it
    elif command.status == "applying":
        state.setdefault("status", "running")
    for key in ("origin", "start", "current", "winner", "continued"):
        state.setdefault(key, None)
    state.setdefault("candidates", [])
    return {**base, **state}


def _states(store: Store, run_id: str) -> dict[int, dict[str, Any]]:
    states: dict[int, dict[str, Any]] = {}
    for event in store.list_events(run_id):
        if event.kind == "explore" and isinstance(event.payload.get("state"), dict):
            command = event.payload.get("command")
            if isinstance(command, int):
                states[command] = event.payload["state"]
    return states


def describe_exploration(store: Store, command_id: int) -> dict[str, Any]:
    """An exploration as JSON-ready data.

    Keys: ``command`` (its id), ``run_id``, ``spec`` (the command's payload), ``status``
    (``pending``, ``running``, ``done``, ``cancelled``, ``interrupted`` or ``rejected``),
    ``reason`` (why it was rejected or interrupted), and once started ``origin`` / ``start``
    (checkpoint label, node, step: where the run was, and the checkpoint every candidate
    starts from), ``candidates`` (each: ``index``, ``values``, ``node``, ``status`` —
    ``waiting``, ``running``, ``done``, ``diverged``, ``failed``, ``cancelled`` — ``score``,
    ``steps`` trained, ``end_step``, ``checkpoint`` of its end state, ``reason``),
    ``current`` (the running candidate's index), ``winner`` (an index or None) and
    ``continued`` (the node the run continued on, and from which checkpoint).
    Raises ``InvalidArgument`` when ``command_id`` is not an explore command.
    """
    command = store.get_command(command_id)
    if command.kind != "explore":
        raise InvalidArgument(f"command {command_id} is a {command.kind}, not an exploration")
    return _describe(store, command, _states(store, command.run_id))


def list_explorations(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every exploration of the run, oldest first (each as :func:`describe_exploration`)."""
    commands = [c for c in store.list_commands(run_id) if c.kind == "explore"]
    if not commands:
        return []
    states = _states(store, run_id)
    return [_describe(store, command, states) for command in commands]

"""``retune.connect``: control a run from another process (or thread) through the store.

Use it as a context manager so the store connection is released::

    with retune.connect("mnist") as ctl:
        ctl.set(lr=1e-3, wait=True)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from retune.control._commands import explore_payload, restore_payload, submit
from retune.errors import CommandRejected, CommandTimeout
from retune.store import CommandRecord, RunRecord, Store, open_store

__all__ = ["Controller", "connect"]


class Controller:
    """Sends commands to one run and reads its state. Safe to use from any thread.

    Every method that sends a command returns the :class:`CommandRecord` as queued
    (``pending``), or with ``wait=True`` as resolved: ``applied`` (with the step it took effect
    at), else :class:`CommandRejected` is raised with the reason.

    :meth:`close` (or leaving a ``with`` block) releases the store connection when the
    controller opened it (:func:`connect` with a URL); a store passed in stays open.
    """

    def __init__(
        self,
        store: Store,
        run_ref: str,
        *,
        source: str = "python",
        user: str | None = None,
        owns_store: bool = False,
    ) -> None:
        self.store = store
        self._owns_store = owns_store
        self._run_id = store.get_run(run_ref).id
        self._source = source
        self._user = user
        self._closed = False

    def close(self) -> None:
        """Release the store connection if this controller opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def run(self) -> RunRecord:
        """The run as the store has it now."""
        return self.store.get_run(self._run_id)

    def values(self) -> dict[str, Any]:
        """Current value of every declared tunable (per group for optimizer hyperparameters)."""
        return {entry["name"]: entry.get("value") for entry in self.run.tunables}

    def send(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        timeout: float = 60.0,
    ) -> CommandRecord:
        """Submit any command kind; the typed methods below are thin wrappers of this."""
        command = submit(
            self.store,
            self._run_id,
            kind,
            payload or {},
            source=self._source,
            user=self._user,
        )
        return self.wait(command.id, timeout=timeout) if wait else command

    def set(
        self,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        group: int | str | None = None,
        mode: str = "rescale",
        wait: bool = False,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> CommandRecord:
        """Set tunables to absolute values: ``ctl.set(lr=1e-3, group=0, wait=True)``.

        Names that clash with the keywords (``group``, ``mode``...) go in ``values``.
        ``mode`` decides what an attached LR scheduler does: ``rescale`` keeps its shape from
        the new value, ``constant`` holds the new value.
        """
        merged = {**(values or {}), **kwargs}
        payload = {"values": merged, "group": group, "mode": mode}
        return self.send("set", payload, wait=wait, timeout=timeout)

    def scale(
        self,
        factors: Mapping[str, float] | None = None,
        /,
        *,
        group: int | str | None = None,
        mode: str = "rescale",
        wait: bool = False,
        timeout: float = 60.0,
        **kwargs: float,
    ) -> CommandRecord:
        """Multiply tunables per group, keeping per-group ratios: ``ctl.scale(lr=0.1)``."""
        payload = {"factors": {**(factors or {}), **kwargs}, "group": group, "mode": mode}
        return self.send("scale", payload, wait=wait, timeout=timeout)

    def checkpoint(
        self, tag: str | None = None, *, wait: bool = False, timeout: float = 120.0
    ) -> CommandRecord:
        """Save the run's full training state at its next step boundary."""
        return self.send("checkpoint", {"tag": tag}, wait=wait, timeout=timeout)

    def restore(
        self,
        target: str,
        *,
        set: Mapping[str, Any] | None = None,
        group: int | str | None = None,
        mode: str = "rescale",
        wait: bool = False,
        timeout: float = 120.0,
    ) -> CommandRecord:
        """Go back to checkpoint ``target`` (``c3``, ``latest``, ``n3``, ``n3@1200``) on a new
        branch, optionally with new values: ``ctl.restore("n3@1200", set={"lr": 1e-3})``."""
        payload = restore_payload(target, set, group, mode)
        return self.send("restore", payload, wait=wait, timeout=timeout)

    def explore(
        self,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        steps: int,
        metric: str,
        goal: str = "min",
        score: str = "last",
        start: str | None = None,
        then: str = "best",
        max_candidates: int | None = None,
        group: int | str | None = None,
        mode: str = "rescale",
        wait: bool = False,
        timeout: float = 3600.0,
        **kwargs: Any,
    ) -> CommandRecord:
        """Try every combination of values from one checkpoint, ``steps`` steps each, and
        keep the best: ``ctl.explore(lr=[1e-3, 3e-4, 1e-4], steps=300, metric="val_loss")``.

        ``score`` is ``"last"`` (the metric's last point) or ``"mean:K"``; ``goal`` ``min`` or
        ``max``; ``start`` a checkpoint (``c3``, ``n3@1200``; default: a new one at the next
        step boundary); ``then`` ``best`` (continue from the winner's end state) or ``stay``
        (go back to where the run was). With ``wait=True`` this returns once the exploration
        has ended (its ``result`` holds every candidate's node and score, and the winner).
        See ``docs/explore.md``.
        """
        payload = explore_payload(
            {**(values or {}), **kwargs},
            steps=steps,
            metric=metric,
            goal=goal,
            score=score,
            start=start,
            then=then,
            max_candidates=max_candidates,
            group=group,
            mode=mode,
        )
        return self.send("explore", payload, wait=wait, timeout=timeout)

    def exploration(self, command_id: int) -> dict[str, Any]:
        """What an exploration is doing or did, as JSON-ready data (see ``describe``)."""
        from retune.control._explore import describe_exploration

        return describe_exploration(self.store, command_id)

    def pause(self, *, wait: bool = False, timeout: float = 60.0) -> CommandRecord:
        """Hold training at the next step boundary (it keeps polling and heartbeating)."""
        return self.send("pause", wait=wait, timeout=timeout)

    def continue_(self, *, wait: bool = False, timeout: float = 60.0) -> CommandRecord:
        """Let a paused run continue (the ``continue`` command)."""
        return self.send("continue", wait=wait, timeout=timeout)

    def resume(self, *, wait: bool = False, timeout: float = 60.0) -> CommandRecord:
        """Old name of :meth:`continue_`: lets a paused run continue (sends ``continue``)."""
        return self.continue_(wait=wait, timeout=timeout)

    def stop(self, *, wait: bool = False, timeout: float = 60.0) -> CommandRecord:
        """End training cleanly at the next step boundary; the run becomes ``stopped``."""
        return self.send("stop", wait=wait, timeout=timeout)

    def guard(
        self,
        action: str,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        wait: bool = False,
        timeout: float = 120.0,
        **kwargs: Any,
    ) -> CommandRecord:
        """Control the run's guard: ``"on"``, ``"off"``, ``"veto"`` (undo its last recovery
        and switch it off) or ``"set"`` with new settings: ``ctl.guard("set", spike=4)``
        (``spike``, ``lr_factor``, ``max_attempts``, ``skip``). Settings are knobs too, so
        ``ctl.set(guard_spike=4)`` works as well (on a new node)."""
        payload: dict[str, Any] = {"action": action}
        if action == "set" or values or kwargs:
            payload["values"] = {**(values or {}), **kwargs}
        return self.send("guard", payload, wait=wait, timeout=timeout)

    def wait(self, command_id: int, *, timeout: float = 60.0) -> CommandRecord:
        """Block until the command is resolved; raise ``CommandRejected`` if it was rejected."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            command = self.store.get_command(command_id)
            if command.status == "applied":
                return command
            if command.status == "rejected":
                raise CommandRejected(command.reason or "rejected", command_id=command.id)
            if time.monotonic() >= deadline:
                if command.status == "applying":
                    raise CommandTimeout(
                        f"command {command_id} ({command.kind}) is still being applied after "
                        f"{timeout:g}s: the training process took it (a change waits for its "
                        "checkpoint to be written); wait again or see `retune changes`"
                    )
                raise CommandTimeout(
                    f"command {command_id} ({command.kind}) is still pending after {timeout:g}s;"
                    " is the training process alive? (`retune runs` shows its heartbeat)"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def history(self) -> list[CommandRecord]:
        """Every command sent to this run, oldest first."""
        return self.store.list_commands(self._run_id)


def connect(
    run: str, *, store: str | Store | None = None, source: str = "python", user: str | None = None
) -> Controller:
    """A :class:`Controller` for run ``run`` (id, or name for the latest run of that name).

    ``with retune.connect("mnist") as ctl: ...`` closes the store connection it opened.
    Raises ``RunNotFound`` for an unknown run (and then releases the connection) and
    ``StoreNotFound`` when there is no store at ``store`` (nothing is created).
    """
    if isinstance(store, Store):
        return Controller(store, run, source=source, user=user)
    opened = open_store(store, create=False)  # a run to control exists: never create a store
    try:
        return Controller(opened, run, source=source, user=user, owns_store=True)
    except BaseException:
        opened.close()
        raise

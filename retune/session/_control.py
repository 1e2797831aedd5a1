"""Applying commands in the training process: the second validation, at a step boundary.

Only the training thread calls :meth:`Applier.apply_pending` (from ``run.step()``); the writer
thread only appends fetched commands to the in-memory ``inbox`` and sets ``wake``.

Every command is *claimed* in the store (``pending -> applying``, one winner) before its
handler runs: a command rejected at submission, resolved elsewhere, or claimed by another
process is never applied. The poller fetches every pending command each time and skips the
ones it already queued (ids are not committed in order on PostgreSQL, so an id watermark
could skip a command forever).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from retune.errors import CommandRejected, RetuneError
from retune.session._protocols import TrainingSession
from retune.store import CommandRecord, Store

__all__ = ["Applier"]

log = logging.getLogger("retune")

Handler = Callable[[TrainingSession, CommandRecord], dict[str, Any] | None]


class Applier:
    """Owns the command inbox of one run and applies what arrives, in order.

    A handler returns the command's result (recorded with it) or raises: ``CommandRejected``
    becomes ``rejected`` with its message; any other exception becomes ``rejected`` with the
    exception's type and message. Training goes on either way. A handler that returns
    ``None`` has started something that outlasts this boundary (an exploration): it stays
    ``applying`` and the handler's work resolves it later.
    """

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.inbox: deque[CommandRecord] = deque()
        self.wake = threading.Event()
        self._handlers = handlers
        self._queued: set[int] = set()  # ids of the last poll's pending commands
        self._polled_at: object | None = None  # the store's change token before that poll
        self._warned = False
        self._owed: list[tuple[int, int, int, dict[str, Any]]] = []
        """Resolutions of applied commands the store refused: (id, step, node, result)."""
        self._owed_lock = threading.Lock()
        self._owed_warned = False

    def resolve_applied(
        self, store: Store, command_id: int, *, step: int, node: int, result: dict[str, Any]
    ) -> None:
        """Record that a command was applied at ``step`` (its node ``node``) with ``result``,
        from any thread: for a handler whose work ended after its boundary (a change whose
        checkpoint was written in the background). Never raises and never waits: when the
        store refuses, the resolution is owed and :meth:`settle` writes it later (the writer
        thread after each flush, and ``run.finish()`` before the run is marked ended)."""
        with self._owed_lock:
            self._owed.append((command_id, step, node, result))
        self.settle(store)

    def settle(self, store: Store) -> None:
        """Write the owed resolutions, oldest first; stop at the first the store refuses
        (kept, with those after it, for the next call). Any thread; never raises."""
        with self._owed_lock:
            while self._owed:
                command_id, step, node, result = self._owed[0]
                try:
                    store.resolve_command(
                        command_id, status="applied", applied_step=step, node=node, result=result
                    )
                except RetuneError as e:
                    if not self._owed_warned:  # once until it is written: this is retried
                        log.warning(
                            "retune: command %s was applied at step %d; recording it waits "
                            "for the store: %s",
                            command_id,
                            step,
                            e,
                        )
                        self._owed_warned = True
                    return
                self._owed.pop(0)
                self._owed_warned = False

    @property
    def owed(self) -> int:
        """How many applied commands are not recorded ``applied`` yet (the store refused)."""
        return len(self._owed)

    def poll(self, run: TrainingSession) -> None:
        """Fetch pending commands not queued yet into the inbox (writer thread; never raises)."""
        # nothing committed since the last query: nothing new can be pending (SQLite tells in
        # microseconds; polling 20 times a second through SQLAlchemy cost ~2% of a core)
        token = run.store.change_token()
        if token is not None and token == self._polled_at:
            return
        try:
            fresh = run.store.pending_commands(run.id)
        except RetuneError as e:
            if not self._warned:
                log.warning("retune: cannot poll commands, will retry: %s", e)
                self._warned = True
            return
        self._warned = False
        self._polled_at = token  # read before the query: a commit after it changes the token
        added = False
        for command in fresh:
            if command.id not in self._queued:
                self.inbox.append(command)
                added = True
        # a queued command stays pending until the training thread claims it, so it is in
        # ``fresh`` again next time; once claimed it is never pending again
        self._queued = {command.id for command in fresh}
        if added:
            self.wake.set()

    def apply_pending(self, run: TrainingSession) -> None:
        """Apply every command in the inbox, oldest first (training thread only)."""
        while self.inbox:
            command = self.inbox.popleft()
            if not self._apply(run, command):
                self.inbox.appendleft(command)  # the store is unreachable: retry next step
                return

    def apply_now(self, run: TrainingSession, command: CommandRecord) -> CommandRecord:
        """Apply one command at once (training thread); raise ``CommandRejected`` if rejected.
        A change is returned once its checkpoint is listed (this waits for the writing)."""
        self._apply(run, command, retry=False)
        resolved = run.store.get_command(command.id)
        if resolved.status == "applying":  # a change: resolved once its checkpoint is listed
            run.checkpointer.wait()
            self.settle(run.store)
            resolved = run.store.get_command(command.id)  # an exploration still ``applying``
        if resolved.status == "rejected":
            raise CommandRejected(resolved.reason or "rejected", command_id=command.id)
        return resolved

    def _handler(self, kind: str) -> Handler | None:
        handler = self._handlers.get(kind)
        if handler is None:  # ``continue`` is stored for what handlers may still call resume
            alias = {"continue": "resume", "resume": "continue"}.get(kind)
            handler = self._handlers.get(alias) if alias else None
        return handler

    def _apply(self, run: TrainingSession, command: CommandRecord, *, retry: bool = True) -> bool:
        """Claim, then apply and resolve; ``False`` when the claim could not reach the store
        (only when ``retry``; otherwise that error is raised)."""
        try:
            claimed = run.store.claim_command(command.id)
        except RetuneError as e:
            if not retry:
                raise
            if not self._warned:
                log.warning("retune: cannot claim command %s yet, will retry: %s", command.id, e)
                self._warned = True
            return False
        if claimed is None:
            return True  # rejected at submission, resolved already, or claimed elsewhere
        command = claimed
        handler = self._handler(command.kind)
        try:
            if handler is None:
                raise CommandRejected(f"this training process cannot apply {command.kind!r}")
            result = handler(run, command)
        except CommandRejected as e:
            self._resolve(run, command, "rejected", reason=str(e))
        except Exception as e:
            log.debug("command %s failed:\n%s", command.id, traceback.format_exc())
            self._resolve(run, command, "rejected", reason=f"{type(e).__name__}: {e}")
        else:
            if result is not None:
                self._resolve(run, command, "applied", result=result)
        return True

    @staticmethod
    def _resolve(
        run: TrainingSession,
        command: CommandRecord,
        status: str,
        *,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        run.store.resolve_command(
            command.id,
            status=status,
            reason=reason,
            applied_step=run.global_step if status == "applied" else None,
            node=run.node,
            result=result,
        )
        if status == "rejected":
            run.store.add_event(
                run.id,
                "command_rejected",
                {"command": command.id, "kind": command.kind, "reason": reason},
                node=run.node,
                step=run.global_step,
            )

    def reject_remaining(self, run: TrainingSession, reason: str) -> None:
        """Reject whatever is still queued (in memory or in the store) when the run ends."""
        self.poll(run)
        while self.inbox:
            claimed = run.store.claim_command(self.inbox.popleft().id)
            if claimed is not None:
                self._resolve(run, claimed, "rejected", reason=reason)

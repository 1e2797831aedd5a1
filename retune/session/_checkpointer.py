"""Saving and loading checkpoints of one run, and the keep and back-pressure policies.

A save has two phases. **Phase 1** runs on the training thread at the step boundary: the state
is captured and encoded in memory, every tensor and array copied into fresh CPU memory
(:func:`~retune.checkpoint.encode_in_memory`), so training may change the live objects at
once. **Phase 2** hashes and writes the blobs (content-addressed: a blob already stored is not
written again), fsyncs them, records their keys in this store's ledger, flushes the metrics
and only then adds the checkpoint's row: a checkpoint is listed (restorable) only once it is
completely written and durable, and a crash at any moment of phase 2 leaves nothing listed.

:meth:`Checkpointer.save_async` runs phase 2 on a background thread (scheduled checkpoints);
:meth:`Checkpointer.save_later` too, but is never skipped (the checkpoint before a ``set`` or
``scale``: the change applies after phase 1, and its command is resolved by a callback,
:meth:`PendingCheckpoint.then`, once the checkpoint is listed). :meth:`Checkpointer.save` runs
both phases before it returns, for the checkpoints something relies on at once: the one
before a restore (a failed restore puts it back), ``run.checkpoint()`` and the ``checkpoint``
command (they return it), and the stop checkpoint (resume continues from it). At most one save
is in flight: ``save()`` and ``save_later()`` first wait for it; a scheduled save due while one
is in flight waits too (``when_busy="wait"``, the default) or is skipped with a
``checkpoint_skipped`` event (``when_busy="skip"``). A failed
background save never raises into training: it is logged and recorded as a
``checkpoint_failed`` event. :meth:`Checkpointer.close` (``run.finish()``, exit) waits for the
save in flight.

A save holds the object location's shared save lock from its first blob until its manifest
row is committed, and records the blob keys in this store's ledger there before the row (see
:mod:`retune.checkpoint._gc`), so ``retune gc`` can never delete a blob a save is about to
refer to.

Test hook: when ``RETUNE_TEST_BLOCK_SAVE`` is ``STEP:PATH``, the first save of a global step
of at least ``STEP`` writes ``PATH`` (JSON: pid, step) once its blobs are written and before
its manifest row, then waits until ``PATH`` is removed, and writes ``PATH`` with the suffix
``.released`` when it goes on. It blocks the thread running phase 2: the training thread for
:meth:`~Checkpointer.save`, the background thread for :meth:`~Checkpointer.save_async` (so
training goes on meanwhile). Tests use it to kill a trainer that is provably in the middle of
a save. Nothing else reads it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retune.checkpoint import (
    WRITERS,
    EncodedState,
    ObjectStore,
    Staging,
    decode_state,
    encode_in_memory,
    manifest_hashes,
)
from retune.checkpoint._gc import store_identity
from retune.errors import CheckpointCorrupt, InvalidArgument, RetuneError
from retune.session._state import capture_state
from retune.store import CheckpointRecord, objects_url_for

if TYPE_CHECKING:
    from retune.session._protocols import StatefulRun

__all__ = ["WHEN_BUSY", "CheckpointPolicy", "Checkpointer", "PendingCheckpoint"]

log = logging.getLogger("retune")

BRANCHED_FROM_A_CHECKPOINT = frozenset({"restore", "resume", "explore", "guard"})
"""The kinds of node that start from a loaded checkpoint (their parent's, at their start)."""
WHEN_BUSY = ("wait", "skip")
"""What a background save due while another is in flight does."""


class CheckpointPolicy:
    """When checkpoints are taken and which are kept.

    ``every_n_steps`` / ``every_n_epochs`` take ``schedule`` checkpoints; the last
    ``keep_last`` of those are kept, and any older one a branch started from (a restore, a
    resume, an exploration: one per such branch at most). Checkpoints taken before a change,
    from the script (``run.checkpoint()``), on command, or with a tag are always kept.

    ``background`` (default True): scheduled checkpoints write on a background thread while
    training goes on (see the module docstring); False writes them before the step returns.
    ``when_busy``: when a scheduled checkpoint is due while the previous save is still being
    written, ``"wait"`` (default) waits for it and then saves, ``"skip"`` skips this one and
    records a ``checkpoint_skipped`` event. The checkpoints before a change, at a stop, from
    ``run.checkpoint()`` and on command are never skipped: they wait.
    ``keep_staging`` (default True): a background save copies the state into the CPU buffers
    the previous one wrote from (:class:`~retune.checkpoint.Staging`), not into fresh memory
    whose page faults would double the copy; they stay allocated between saves (about one
    copy of the checkpointed arrays). False frees them after each save.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        keep_last: int = 5,
        *,
        background: bool = True,
        when_busy: str = "wait",
        keep_staging: bool = True,
    ) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidArgument(f"{name} must be a positive int, got {value!r}")
        if keep_last < 1:
            raise InvalidArgument(f"keep_last must be at least 1, got {keep_last}")
        if when_busy not in WHEN_BUSY:
            raise InvalidArgument(f"when_busy must be 'wait' or 'skip', got {when_busy!r:.40}")
        for name, flag in (("background", background), ("keep_staging", keep_staging)):
            if not isinstance(flag, bool):
                raise InvalidArgument(f"{name} must be True or False, got {flag!r:.40}")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.keep_last = keep_last
        self.background = background
        self.when_busy = when_busy
        self.keep_staging = keep_staging


class PendingCheckpoint:
    """A save whose phase 2 may still be running: :meth:`wait` for its record.

    ``record`` is set once the checkpoint is listed; ``error`` once the save has failed
    (recorded as a ``checkpoint_failed`` event and logged, never raised into training).
    """

    def __init__(
        self, reason: str, tag: str | None, step: int, node: int, *, background: bool = True
    ) -> None:
        self.reason = reason
        self.tag = tag
        self.step = step
        self.node = node
        self.background = background
        """Whether phase 2 runs on a background thread (False: it ended before the save
        call returned)."""
        self.record: CheckpointRecord | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._then: list[Callable[[PendingCheckpoint], None]] | None = []
        """What runs once the save has ended; None once it has run (later ones run at once)."""

    def then(self, callback: Callable[[PendingCheckpoint], None]) -> None:
        """Run ``callback(self)`` once the save has ended (listed or failed): on the thread
        that ends phase 2, before :meth:`wait` returns, or, when phase 2 has already reached
        its end, at once on this thread. A callback must be quick and not raise (an
        ``Exception`` it raises is logged)."""
        with self._lock:
            if self._then is not None:
                self._then.append(callback)
                return
        _call(callback, self)

    def _ended(self) -> None:
        """Phase 2 is over: run the callbacks, then release the waiters."""
        with self._lock:
            callbacks, self._then = self._then or [], None
        try:
            for callback in callbacks:
                _call(callback, self)
        finally:  # even a Ctrl-C in a callback must not leave every later wait() hanging
            self._done.set()

    @property
    def done(self) -> bool:
        """Whether phase 2 has ended (listed or failed)."""
        return self._done.is_set()

    @property
    def failure(self) -> str | None:
        """Why the save failed (the error's type and message, as its ``checkpoint_failed``
        event records it); None unless it failed."""
        error = self.error
        return None if error is None else f"{type(error).__name__}: {error}"[:500]

    def wait(self, timeout: float | None = None) -> CheckpointRecord | None:
        """Wait until the save has ended (at most ``timeout`` seconds); returns its listed
        record, or None when it failed or is still running."""
        self._done.wait(timeout)
        return self.record

    def __repr__(self) -> str:
        state = "listed" if self.record else "failed" if self.error else "writing"
        return f"PendingCheckpoint({self.reason!r}, step={self.step}, {state})"


class Checkpointer:
    """Writes the run's full state as blobs + manifest; the manifest row goes last.

    Call :meth:`save`, :meth:`save_async` and :meth:`close` from the training thread.
    """

    def __init__(self, run: StatefulRun, objects_url: str, policy: CheckpointPolicy) -> None:
        self._run = run
        self._objects_url = objects_url
        self._objects: ObjectStore | None = None
        self._registered = False  # this store's existing keys are in the location's ledger
        self.policy = policy
        self._staging = Staging() if policy.keep_staging else None
        self._in_flight: PendingCheckpoint | None = None
        self._thread: threading.Thread | None = None
        self.failed = 0
        """Background saves that failed (each also logged and recorded as an event)."""
        self.skipped = 0
        """Scheduled saves skipped because one was in flight (``when_busy="skip"``)."""

    @property
    def objects(self) -> ObjectStore:
        if self._objects is None:
            self._objects = ObjectStore(self._objects_url)
        return self._objects

    def save(self, reason: str, tag: str | None = None) -> CheckpointRecord:
        """Capture and store the state now (training thread, at a step boundary); returns the
        listed record. Waits first for a save in flight; never skipped.

        The checkpoint is listed (restorable) only when its blobs are durable and every
        metric point logged up to now is stored: a resume from it never leaves a gap. Raises
        ``InvalidArgument`` for state that cannot be checkpointed (nothing is written) and
        ``StoreError`` / ``StoreUnavailable`` when it cannot be written.
        """
        self.wait()
        run = self._run
        # written before this returns: the live tensors cannot change meanwhile, no copy
        encoded = encode_in_memory(capture_state(run), copy=False)
        return self._write(encoded, reason, tag, run.global_step, run.node)

    def save_async(self, reason: str, tag: str | None = None) -> PendingCheckpoint | None:
        """Phase 1 now (a copy of the state in memory), phase 2 on a background thread;
        returns the pending save, or None when it was skipped (``when_busy="skip"`` and a
        save in flight). With ``policy.background`` False, both phases run before it returns.

        Raises ``InvalidArgument`` at once for state that cannot be checkpointed. Errors of
        phase 2 are never raised: they are logged, recorded as a ``checkpoint_failed`` event
        and kept in the returned object's ``error``.
        """
        in_flight = self.in_flight
        if in_flight is not None and self.policy.background and self.policy.when_busy == "skip":
            self._skip(reason, self._run.global_step, self._run.node, in_flight)
            return None
        return self.save_later(reason, tag)

    def save_later(self, reason: str, tag: str | None = None) -> PendingCheckpoint:
        """Like :meth:`save_async`, but never skipped: a save in flight is waited for first
        (the checkpoint before a change, which the change's command names once listed)."""
        run = self._run
        step, node = run.global_step, run.node
        if not self.policy.background:
            pending = PendingCheckpoint(reason, tag, step, node, background=False)
            self.wait()
            self._phase2(encode_in_memory(capture_state(run), copy=False), pending)
            return pending
        self.wait()
        encoded = encode_in_memory(capture_state(run), copy=True, staging=self._staging)
        pending = PendingCheckpoint(reason, tag, step, node)
        thread = threading.Thread(
            target=self._phase2, args=(encoded, pending, True), name=f"retune-save-{run.id}"
        )
        thread.daemon = True  # run.finish() and exit wait for it (close())
        try:
            thread.start()
        except BaseException:  # no thread: nothing in flight, and the copy is given back
            encoded.release()
            raise
        self._in_flight, self._thread = pending, thread
        return pending

    @property
    def in_flight(self) -> PendingCheckpoint | None:
        """The save whose phase 2 is running now, if any."""
        pending = self._in_flight
        return pending if pending is not None and not pending.done else None

    def wait(self, timeout: float | None = None) -> PendingCheckpoint | None:
        """Wait until the save in flight (if any) has ended; returns it (None if there was
        none). Never raises for a failed save: see its ``error``."""
        pending = self._in_flight
        if pending is not None:
            pending.wait(timeout)
        return pending

    def close(self) -> None:
        """Wait for the save in flight (``run.finish()``, exit), then free the staging
        buffers (an ended run held in a notebook keeps no copy of its state)."""
        self.wait()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self._staging is not None:
            self._staging.clear()

    def _phase2(
        self, encoded: EncodedState, pending: PendingCheckpoint, background: bool = False
    ) -> None:
        """Write, then list; never raises: failures are recorded. On the background thread
        (``background``) at a lower CPU priority than training (:func:`_yield_cpu`)."""
        if background:
            _yield_cpu()
        try:
            pending.record = self._write(
                encoded, pending.reason, pending.tag, pending.step, pending.node,
                workers=1 if background else WRITERS,
            )  # fmt: skip
        except Exception as e:  # a background thread has nobody to raise to
            pending.error = e
            self.failed += 1
            self._record_failure(pending)
        except BaseException as e:  # Ctrl-C / SystemExit: on the training thread, it goes on up
            pending.error = e
            raise
        finally:
            encoded.release()  # written or failed: the next save may copy into its buffers
            pending._ended()

    def _write(
        self,
        encoded: EncodedState,
        reason: str,
        tag: str | None,
        step: int,
        node: int,
        *,
        workers: int = WRITERS,
    ) -> CheckpointRecord:
        run = self._run
        objects = self.objects
        store_id, label = store_identity(run.store.url)
        with objects.saving():  # gc waits for this save to be recorded, or to die
            if not self._registered and not objects.has_ledger(store_id):
                known: set[str] = set()
                for old in run.store.all_manifests():
                    known |= manifest_hashes(old)
                objects.record_refs(store_id, label, known)
            self._registered = True
            manifest, nbytes = encoded.write(objects, workers=workers)
            objects.record_refs(store_id, label, manifest_hashes(manifest))
            objects.sync()
            _test_hook_block(step)
            run.flush()  # listed only once every point up to its step is stored too
            record = run.store.add_checkpoint(
                run.id,
                node=node,
                step=step,
                tag=tag,
                reason=reason,
                manifest={**manifest, "objects": self._objects_url},
                nbytes=nbytes,
            )
        if reason == "schedule" and tag is None:
            self._prune()
        return record

    def _record_failure(self, pending: PendingCheckpoint) -> None:
        run = self._run
        reason = pending.failure
        log.warning(
            "retune: the %s checkpoint at step %d was not saved (training goes on): %s",
            pending.reason,
            pending.step,
            reason,
        )
        try:
            run.store.add_event(
                run.id,
                "checkpoint_failed",
                {"reason": pending.reason, "error": reason},
                node=pending.node,
                step=pending.step,
            )
        except RetuneError as e:
            log.warning("retune: could not record the failed checkpoint: %s", e)

    def _skip(self, reason: str, step: int, node: int, in_flight: PendingCheckpoint) -> None:
        self.skipped += 1
        log.info(
            "retune: %s checkpoint at step %d skipped: the one of step %d is still being written",
            reason,
            step,
            in_flight.step,
        )
        try:
            self._run.store.add_event(
                self._run.id,
                "checkpoint_skipped",
                {"reason": reason, "in_flight_step": in_flight.step},
                node=node,
                step=step,
            )
        except RetuneError as e:
            log.warning("retune: could not record the skipped checkpoint: %s", e)

    def load(self, record: CheckpointRecord) -> Any:
        """The state tree of ``record``, every blob verified.

        Blobs are read from the run's configured object location, or from the location the
        manifest records when that is one this store owns: the store's default location, or
        an existing location whose ledger lists this store (it saved there). Nothing is ever
        created; any other location raises :class:`CheckpointCorrupt`.
        """
        label = f"{record.label} of run {record.run_id}"
        return decode_state(record.manifest, self._objects_for(record, label), label=label)

    def _objects_for(self, record: CheckpointRecord, label: str) -> ObjectStore:
        location = record.manifest.get("objects") if isinstance(record.manifest, dict) else None
        if location is None or location == self._objects_url:
            return self.objects
        if not isinstance(location, str) or not location:
            raise CheckpointCorrupt(
                f"checkpoint {label} cannot be restored: its object location {location!r} "
                "is not a URL"
            )
        refused = CheckpointCorrupt(
            f"checkpoint {label} cannot be restored: its blobs are recorded at {location!r}, "
            "which is not an object location of this store"
        )
        store_url = self._run.store.url
        try:  # never created; an unknown scheme or missing fsspec backend is refused too
            objects = ObjectStore(location, create=False)
            owned = location == objects_url_for(store_url) or objects.has_ledger(
                store_identity(store_url)[0]
            )
        except Exception as e:
            raise refused from e
        if not owned:
            raise refused
        return objects

    def _prune(self) -> None:
        """Delete the scheduled checkpoints beyond the last ``keep_last``, except one a branch
        started from (a restore, a resume, an exploration): its branch point stays
        restorable."""
        run = self._run
        scheduled = [
            c
            for c in run.store.list_checkpoints(run.id)
            if c.reason == "schedule" and c.tag is None
        ]
        excess = scheduled[: -self.policy.keep_last]
        if excess:
            started = {
                (node.parent, node.start_step)
                for node in run.store.list_nodes(run.id)
                if node.parent is not None and node.change_kind in BRANCHED_FROM_A_CHECKPOINT
            }
            excess = [c for c in excess if (c.node, c.step) not in started]
        run.store.delete_checkpoints(run.id, [c.id for c in excess])


def _call(callback: Callable[[PendingCheckpoint], None], pending: PendingCheckpoint) -> None:
    try:
        callback(pending)
    except Exception as e:  # the thread ending a save has nobody to raise to
        log.warning(
            "retune: after the %s checkpoint at step %d: %s", pending.reason, pending.step, e
        )


BACKGROUND_NICE = 10
"""How much lower the background save's threads run than training (Linux niceness)."""


def _yield_cpu() -> None:
    """Lower this thread's CPU priority (Linux: per thread). On a machine with an idle core
    the save runs at full speed; when every core is busy, training keeps most of its share
    and the save takes longer instead. A background save hashes and writes in this one
    thread: a pool of writers would also run on the cores training uses (docs/benchmarks.md,
    "Checkpoint stall")."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE)
    except (AttributeError, OSError):  # not Linux/POSIX, or not permitted: run as it is
        pass


def _test_hook_block(step: int) -> None:
    """Block a save mid-way for tests (see the module docstring); a no-op otherwise."""
    spec = os.environ.get("RETUNE_TEST_BLOCK_SAVE")
    if not spec:
        return
    at, _, path = spec.partition(":")
    if not (at.isascii() and at.isdigit()) or step < int(at) or not path:
        return
    flag = Path(path)
    if flag.with_suffix(".released").exists():
        return  # already blocked once in this test
    written = flag.with_name(f"{flag.name}.tmp")
    written.write_text(json.dumps({"pid": os.getpid(), "step": step}))
    os.replace(written, flag)  # whole: a test reading it never sees half of it
    while flag.exists():
        time.sleep(0.01)
    flag.with_suffix(".released").write_text("")

"""Saving and loading checkpoints of one run, and the keep policy.

A save holds the object location's shared save lock from its first blob until its manifest
row is committed, and records the blob keys in this store's ledger there before the row (see
:mod:`retune.checkpoint._gc`), so ``retune gc`` can never delete a blob a save is about to
refer to.

Test hook: when ``RETUNE_TEST_BLOCK_SAVE`` is ``STEP:PATH``, the first save at a global step
of at least ``STEP`` writes ``PATH`` (JSON: pid, step) once its blobs are written and before
its manifest row, then waits until ``PATH`` is removed. Tests use it to kill a trainer that is
provably in the middle of a save. Nothing else reads it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retune.checkpoint import ObjectStore, decode_state, encode_state, manifest_hashes
from retune.checkpoint._gc import store_identity
from retune.errors import CheckpointCorrupt, InvalidArgument
from retune.session._state import capture_state
from retune.store import CheckpointRecord, objects_url_for

if TYPE_CHECKING:
    from retune.session._protocols import StatefulRun

__all__ = ["CheckpointPolicy", "Checkpointer"]

KEPT_REASONS = frozenset({"change", "user", "command", "explore"})


class CheckpointPolicy:
    """When checkpoints are taken and which are kept.

    ``every_n_steps`` / ``every_n_epochs`` take ``schedule`` checkpoints; only the last
    ``keep_last`` of those are kept. Checkpoints taken before a change, from the script
    (``run.checkpoint()``), on command, or with a tag are always kept.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        keep_last: int = 5,
    ) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidArgument(f"{name} must be a positive int, got {value!r}")
        if keep_last < 1:
            raise InvalidArgument(f"keep_last must be at least 1, got {keep_last}")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.keep_last = keep_last


class Checkpointer:
    """Writes the run's full state as blobs + manifest; the manifest row goes last."""

    def __init__(self, run: StatefulRun, objects_url: str, policy: CheckpointPolicy) -> None:
        self._run = run
        self._objects_url = objects_url
        self._objects: ObjectStore | None = None
        self._registered = False  # this store's existing keys are in the location's ledger
        self.policy = policy

    @property
    def objects(self) -> ObjectStore:
        if self._objects is None:
            self._objects = ObjectStore(self._objects_url)
        return self._objects

    def save(self, reason: str, tag: str | None = None) -> CheckpointRecord:
        """Capture and store the state now (training thread, at a step boundary).

        The checkpoint is listed (restorable) only when its blobs are durable and every
        metric point logged up to now is stored: a resume from it never leaves a gap.
        """
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
            manifest, nbytes = encode_state(capture_state(run), objects)
            objects.record_refs(store_id, label, manifest_hashes(manifest))
            objects.sync()
            _test_hook_block(run.global_step)
            run.flush()  # listed only once every point up to its step is stored too
            record = run.store.add_checkpoint(
                run.id,
                node=run.node,
                step=run.global_step,
                tag=tag,
                reason=reason,
                manifest={**manifest, "objects": self._objects_url},
                nbytes=nbytes,
            )
        if reason == "schedule" and tag is None:
            self._prune()
        return record

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
        run = self._run
        scheduled = [
            c
            for c in run.store.list_checkpoints(run.id)
            if c.reason == "schedule" and c.tag is None
        ]
        excess = scheduled[: -self.policy.keep_last]
        run.store.delete_checkpoints(run.id, [c.id for c in excess])


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
    flag.write_text(json.dumps({"pid": os.getpid(), "step": step}))
    while flag.exists():
        time.sleep(0.01)
    flag.with_suffix(".released").write_text("")

"""Saving and loading checkpoints of one run, and the keep policy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retune.checkpoint import ObjectStore, decode_state, encode_state
from retune.errors import InvalidArgument
from retune.session._state import capture_state
from retune.store import CheckpointRecord

if TYPE_CHECKING:
    from retune.session._run import Run

__all__ = ["CheckpointPolicy", "Checkpointer"]

KEPT_REASONS = frozenset({"change", "user", "command"})


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

    def __init__(self, run: Run, objects_url: str, policy: CheckpointPolicy) -> None:
        self._run = run
        self._objects_url = objects_url
        self._objects: ObjectStore | None = None
        self.policy = policy

    @property
    def objects(self) -> ObjectStore:
        if self._objects is None:
            self._objects = ObjectStore(self._objects_url)
        return self._objects

    def save(self, reason: str, tag: str | None = None) -> CheckpointRecord:
        """Capture and store the state now (training thread, at a step boundary)."""
        run = self._run
        manifest, nbytes = encode_state(capture_state(run), self.objects)
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
        """The state tree of ``record``, every blob verified."""
        objects = self.objects
        location = record.manifest.get("objects")
        if location and location != self._objects_url:
            objects = ObjectStore(location)
        return decode_state(
            record.manifest, objects, label=f"{record.label} of run {record.run_id}"
        )

    def _prune(self) -> None:
        run = self._run
        scheduled = [
            c
            for c in run.store.list_checkpoints(run.id)
            if c.reason == "schedule" and c.tag is None
        ]
        excess = scheduled[: -self.policy.keep_last]
        run.store.delete_checkpoints(run.id, [c.id for c in excess])

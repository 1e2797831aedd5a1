"""The one storage interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from retune.store._records import (
    CheckpointRecord,
    CommandRecord,
    EventRecord,
    MetricChunk,
    MetricSeriesData,
    NodeRecord,
    RunRecord,
)

__all__ = ["Store"]


class Store(ABC):
    """Where everything Retune knows lives: runs, nodes, metrics, commands, checkpoints, events.

    Contract every backend keeps (checked by ``tests/store/test_conformance.py``):

    * **Thread and process safety.** Every method may be called from any thread. Any number of
      processes may use the same store at once (training processes, the dashboard, the CLI);
      each call is one transaction, so a reader sees all of a write or none of it.
    * **Snapshots.** Reads return frozen dataclasses and read-only arrays, copies of what was
      stored at the time of the call; they never change afterwards.
    * **Durability.** When a write method returns, its data survives the writer being killed.
    * **Immutability.** Metric points, events and checkpoints are never changed once written.
      A node's ``end_step`` is set once, when the node closes. A command changes only from
      ``pending`` to ``applied`` or ``rejected``, once. A run's status may change while it is
      ``running`` or ``paused``; ``finished``, ``stopped`` and ``crashed`` runs keep their
      metrics and tree but may be resumed by a new process (which sets ``running`` again).
    * **Errors.** Lookups of unknown things raise ``RunNotFound`` / ``NodeNotFound`` /
      ``CheckpointNotFound``; infrastructure failures raise ``StoreUnavailable`` or
      ``StoreError``; an incompatible schema raises ``SchemaMismatch``. Never a driver error.
    """

    url: str

    # -- runs -------------------------------------------------------------------------------
    @abstractmethod
    def create_run(
        self,
        name: str,
        *,
        config: dict[str, Any],
        meta: dict[str, Any],
        tunables: list[dict[str, Any]],
    ) -> RunRecord:
        """Create a run in status ``running`` with a fresh unique id (names may repeat)."""

    @abstractmethod
    def get_run(self, ref: str) -> RunRecord:
        """The run whose id is ``ref``, else the latest run named ``ref``; ``RunNotFound``."""

    @abstractmethod
    def list_runs(
        self, *, name: str | None = None, statuses: Sequence[str] | None = None
    ) -> list[RunRecord]:
        """Runs, newest first, optionally filtered by exact name and status."""

    @abstractmethod
    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        step: int | None = None,
        heartbeat_at: float | None = None,
        ended_at: float | None = None,
        error: str | None = None,
        tunables: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Set the given fields of a run; ``None`` leaves a field alone. ``meta`` is merged."""

    @abstractmethod
    def reopen_run(self, run_id: str) -> RunRecord:
        """Mark an ended run ``running`` again (a new process resumes it): clears the end time
        and error, sets a fresh heartbeat."""

    # -- nodes ------------------------------------------------------------------------------
    @abstractmethod
    def create_node(
        self,
        run_id: str,
        *,
        parent: int | None,
        start_step: int,
        change_kind: str,
        values: dict[str, Any],
        diff: dict[str, Any],
        created_by: str | None,
    ) -> NodeRecord:
        """Add a node numbered one past the run's highest node number (``n1`` is the root)."""

    @abstractmethod
    def end_node(self, run_id: str, node: int, end_step: int) -> None:
        """Close an open node at ``end_step``; a node already closed is left unchanged."""

    @abstractmethod
    def list_nodes(self, run_id: str) -> list[NodeRecord]:
        """The run's nodes ordered by number."""

    # -- metrics ----------------------------------------------------------------------------
    @abstractmethod
    def append_metrics(
        self,
        run_id: str,
        chunks: Iterable[MetricChunk],
        *,
        step: int | None = None,
        heartbeat_at: float | None = None,
    ) -> None:
        """Append points in one transaction, optionally with the run's progress and heartbeat."""

    @abstractmethod
    def read_metric(
        self,
        run_id: str,
        key: str,
        *,
        nodes: Sequence[int] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> MetricSeriesData:
        """Every stored point of ``key`` with ``start <= step <= end`` (bounds optional)."""

    @abstractmethod
    def metric_keys(self, run_id: str) -> list[str]:
        """The metric keys the run has points for, sorted."""

    @abstractmethod
    def last_metrics(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, float]]]:
        """For each run, each key's most recently written ``(step, value)``."""

    # -- commands ---------------------------------------------------------------------------
    @abstractmethod
    def submit_command(
        self,
        run_id: str,
        kind: str,
        payload: dict[str, Any],
        *,
        source: str,
        user: str | None,
    ) -> CommandRecord:
        """Queue a command in status ``pending``. Validation is the caller's job."""

    @abstractmethod
    def pending_commands(self, run_id: str, *, after_id: int = 0) -> list[CommandRecord]:
        """Pending commands of the run with ``id > after_id``, oldest first."""

    @abstractmethod
    def resolve_command(
        self,
        command_id: int,
        *,
        status: str,
        reason: str | None = None,
        applied_step: int | None = None,
        node: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> CommandRecord:
        """Move a pending command to ``applied`` or ``rejected``; a resolved one is unchanged."""

    @abstractmethod
    def get_command(self, command_id: int) -> CommandRecord:
        """One command; ``RetuneError`` subclass ``InvalidArgument`` when unknown."""

    @abstractmethod
    def list_commands(self, run_id: str) -> list[CommandRecord]:
        """The run's commands, oldest first."""

    # -- checkpoints ------------------------------------------------------------------------
    @abstractmethod
    def add_checkpoint(
        self,
        run_id: str,
        *,
        node: int,
        step: int,
        tag: str | None,
        reason: str,
        manifest: dict[str, Any],
        nbytes: int,
    ) -> CheckpointRecord:
        """Record a checkpoint whose blobs are already written (the manifest goes last)."""

    @abstractmethod
    def list_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """The run's checkpoints ordered by number."""

    @abstractmethod
    def delete_checkpoints(self, run_id: str, ids: Sequence[int]) -> None:
        """Forget checkpoints (their blobs go at the next garbage collection)."""

    @abstractmethod
    def all_manifests(self) -> list[dict[str, Any]]:
        """Every checkpoint manifest of every run (for garbage collection of blobs)."""

    # -- events -----------------------------------------------------------------------------
    @abstractmethod
    def add_event(
        self,
        run_id: str,
        kind: str,
        payload: dict[str, Any],
        *,
        node: int | None = None,
        step: int | None = None,
    ) -> EventRecord:
        """Record something that happened to the run."""

    @abstractmethod
    def list_events(self, run_id: str, *, after_id: int = 0) -> list[EventRecord]:
        """The run's events with ``id > after_id``, oldest first."""

    # -- lifecycle --------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None:
        """Release connections. The store must not be used afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

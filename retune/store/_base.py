"""The one storage interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from retune.store._records import (
    CheckpointRecord,
    CommandRecord,
    EventRecord,
    MetricChunk,
    MetricSeries,
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
      A node's ``end_step`` is set once, when the node closes. A command moves forward only:
      ``pending -> applying -> applied | rejected`` (or ``pending -> rejected``), each step
      once; only one caller wins :meth:`claim_command`. A run's status may change while it is
      ``running`` or ``paused``; ``finished``, ``stopped`` and ``crashed`` runs keep their
      metrics and tree but may be resumed by a new process (:meth:`attach_run`, which sets
      ``running`` again and refuses a run whose process is still alive).
    * **Errors.** Lookups of unknown things raise ``RunNotFound`` / ``NodeNotFound`` /
      ``CheckpointNotFound``, and so do writes that name an unknown run or node;
      infrastructure failures raise ``StoreUnavailable`` or ``StoreError``; an incompatible
      schema raises ``SchemaMismatch``. Never a driver error, and no message shows the URL's
      password (``retune.errors.redact``).
    * **Read-only stores** (``read_only`` true: a SQLite file on read-only media) answer every
      read; every write raises ``StoreUnavailable`` saying the store is read-only.
    """

    read_only: bool = False

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
        root_values: dict[str, Any] | None = None,
        created_by: str | None = None,
    ) -> RunRecord:
        """Create a run in status ``running`` with a fresh unique id (names may repeat).

        With ``root_values`` the root node ``n1`` (``change_kind="start"`` at step 0, with
        those values, made by ``created_by``) is created in the same transaction: a failure
        (a full disk) never leaves a run without its root. Raises ``InvalidArgument`` for an
        empty or over-long name.
        """

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
        unless_status: Collection[str] = (),
    ) -> bool:
        """Set the given fields of a run; ``None`` leaves a field alone. ``meta`` is merged.

        A ``status`` that ends the run (not ``running``/``paused``) rejects, in the same
        transaction, every command of the run still ``pending`` ("the run ended (STATUS)
        before it was applied"); one being applied (``applying``) is left to the process
        applying it, which may still record it ``applied``, or to the next ``attach_run``.

        ``unless_status``: when the run's status is one of these, ``status`` and ``error``
        are left alone (the other fields are still set), decided in the same transaction as
        the write (a compare-and-set: no other writer can slip in between). Returns whether
        ``status`` and ``error`` were written (True when neither was given)."""

    @abstractmethod
    def set_run_tags(
        self,
        run_id: str,
        tags: Sequence[str] | None = None,
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
    ) -> RunRecord:
        """Replace the run's tags with ``tags`` (when given), then add and remove, atomically.

        Stored sorted and unique; works whatever the run's status. Raises:
            InvalidArgument: a tag fails :func:`check_tag`, or more than ``MAX_TAGS`` result
                (nothing changes).
            RunNotFound: no run has that id.
        """

    @abstractmethod
    def set_run_note(self, run_id: str, note: str) -> RunRecord:
        """Replace the run's free-text note (``""`` clears it); any status.

        Raises ``InvalidArgument`` (see :func:`check_note`) or ``RunNotFound``.
        """

    @abstractmethod
    def reopen_run(self, run_id: str) -> RunRecord:
        """Mark an ended run ``running`` again unconditionally: clears the end time and error,
        sets a fresh heartbeat. A resuming process uses :meth:`attach_run` instead."""

    @abstractmethod
    def attach_run(self, run_id: str, *, owner: dict[str, Any], reason: str) -> RunRecord:
        """Attach a new process to a run, atomically (compare-and-set in one transaction).

        Succeeds only when no live process holds the run: its status is not live, or its
        heartbeat is older than ``retune.store.STALE_AFTER``. Then the run becomes
        ``running`` (end time and error cleared, fresh heartbeat), ``meta["process"]`` is set
        to ``owner`` (``{"host", "pid", "user"}``), every command still ``pending`` (sent
        while no process was live) becomes ``rejected`` with ``reason``, and every one still
        ``applying`` (its process died before recording the outcome: a change whose
        checkpoint was still being written, an exploration) becomes ``rejected`` with
        :data:`~retune.store.INTERRUPTED_WHILE_APPLYING`.
        Of two processes attaching at once, exactly one wins.

        Returns:
            The run as attached.
        Raises:
            RunNotFound: no run has that id.
            RunInUse: a live process holds the run; the message names its host and pid.
        """

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
        info: dict[str, Any] | None = None,
    ) -> NodeRecord:
        """Add a node numbered one past the run's highest node number (``n1`` is the root)."""

    @abstractmethod
    def update_node_info(self, run_id: str, node: int, info: dict[str, Any]) -> NodeRecord:
        """Merge ``info`` into the node's ``info`` (top-level keys replaced), atomically.

        Raises ``RunNotFound`` when the run or node does not exist.
        """

    @abstractmethod
    def add_node_values(self, run_id: str, node: int, values: dict[str, Any]) -> NodeRecord:
        """Add to the node's ``values`` those of ``values`` it does not record yet, atomically;
        the ones it records stay as they are. For a knob declared after its node began: knobs
        change only by commands, which open nodes, so its value then is its value at the
        node's start.

        Raises ``NodeNotFound`` when the run or node does not exist.
        """

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
    ) -> MetricSeries:
        """Every stored point of ``key`` with ``start <= step <= end`` (bounds optional)."""

    def iter_metric_chunks(
        self,
        run_id: str,
        *,
        keys: Sequence[str] | None = None,
        nodes: Sequence[int] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[MetricChunk]:
        """Every stored point of the run (or of ``keys`` / ``nodes``, within ``start <= step
        <= end``), as a stream of chunks: the way exports read runs of any size.

        Order: keys in sorted order; within a key, chunks in order of their first step (chunks
        of different nodes interleave; points are not merged across chunks); within a chunk,
        points in step order. Each chunk holds one node's points of one key; no chunk is empty.
        Backends read the store page by page, so memory stays bounded by a page, not by the
        run; each page is one read transaction, so points appended while the iteration runs
        may or may not appear (none appears twice). The arrays are read-only.

        This default reads one key at a time through :meth:`read_metric` (memory bounded by
        the largest key); backends override it with a paged read.

        Raises:
            StoreUnavailable, StoreError: as every read.
        """
        wanted = sorted(set(keys)) if keys is not None else self.metric_keys(run_id)
        for key in wanted:
            series = self.read_metric(run_id, key, nodes=nodes, start=start, end=end)
            parts = []
            for node in np.unique(series.nodes).tolist():
                index = np.flatnonzero(series.nodes == node)
                parts.append((int(series.steps[index[0]]), node, index))
            for _first, node, index in sorted(parts):
                arrays = [series.steps[index], series.values[index], series.times[index]]
                for array in arrays:
                    array.flags.writeable = False
                yield MetricChunk(node, key, *arrays)

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
        status: str = "pending",
        reason: str | None = None,
    ) -> CommandRecord:
        """Record a command, in one transaction. Validation is the caller's job.

        ``status="pending"`` queues it for the training process; ``status="rejected"`` (with
        ``reason``) records a command found invalid at submission, which no poller ever sees
        as pending. Raises ``RunNotFound`` for an unknown run, ``InvalidArgument`` for another
        status.
        """

    @abstractmethod
    def pending_commands(self, run_id: str, *, after_id: int = 0) -> list[CommandRecord]:
        """Pending commands of the run with ``id > after_id``, oldest first.

        Pollers ask for all of them (``after_id=0``) and skip those they already hold: ids
        are not committed in order on every backend, so an id watermark could skip one.
        """

    @abstractmethod
    def claim_command(self, command_id: int) -> CommandRecord | None:
        """Move a ``pending`` command to ``applying``; the one caller that wins gets it back.

        Returns ``None`` when the command is no longer pending (claimed by someone else,
        resolved, or rejected at submission): the caller must then leave it alone. Raises
        ``InvalidArgument`` for an unknown id.
        """

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
        """Move a ``pending`` or ``applying`` command to ``applied`` or ``rejected``.

        A resolved command is left unchanged; the record returned is the stored one.
        """

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
    def change_token(self) -> object | None:
        """An opaque value that differs after any other connection committed to this store.

        A poller compares it with the value it read before its last query and skips the query
        when it is equal (nothing new can be there). ``None`` means the backend cannot tell
        cheaply: poll every time. Any thread; never raises (``None`` on trouble).
        """
        return None

    def maintain(self) -> None:
        """Housekeeping that need not delay an acknowledged write, run when a caller has a
        moment (the metric writer's thread calls it between flushes). SQLite folds the
        write-ahead log that :meth:`append_metrics` left behind into the database file; other
        backends have nothing to do. Any thread; never raises (what fails is tried again at
        the next call).
        """
        return None

    @abstractmethod
    def close(self) -> None:
        """Release connections. The store must not be used afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Frozen snapshots the store returns. Mutating one never changes the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from retune._downsample import minmax_indices
from retune.errors import InvalidArgument

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CHANGE_KINDS",
    "COMMAND_KINDS",
    "COMMAND_STATUSES",
    "LIVE_STATUSES",
    "MAX_NOTE_LENGTH",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "RUN_STATUSES",
    "CheckpointRecord",
    "CommandRecord",
    "EventRecord",
    "MetricChunk",
    "MetricSeries",
    "NodeRecord",
    "RunRecord",
    "check_note",
    "check_tag",
]

RunStatus = Literal["running", "paused", "finished", "crashed", "stopped"]
RUN_STATUSES: tuple[str, ...] = ("running", "paused", "finished", "crashed", "stopped")
LIVE_STATUSES: frozenset[str] = frozenset({"running", "paused"})

ChangeKind = Literal["start", "set", "scale", "restore", "resume", "explore", "guard"]
CHANGE_KINDS: tuple[str, ...] = ("start", "set", "scale", "restore", "resume", "explore", "guard")
"""``explore``: a candidate of an exploration; ``guard``: a recovery made by the guard."""

CommandKind = Literal[
    "set", "scale", "pause", "continue", "stop", "checkpoint", "restore", "explore", "guard"
]
COMMAND_KINDS: tuple[str, ...] = (
    "set",
    "scale",
    "pause",
    "continue",
    "stop",
    "checkpoint",
    "restore",
    "explore",
    "guard",
)
"""Command kinds as stored. ``guard``: a person's switch/veto of the guard (source ``cli``,
``python``, ...) or a recovery the guard made (source ``guard``). ``continue`` un-pauses a
paused run; submission also accepts its old name ``resume`` and stores ``continue``
(``resume`` now only means continuing a run in a new process from a checkpoint)."""
CommandStatus = Literal["pending", "applying", "applied", "rejected"]
COMMAND_STATUSES: tuple[str, ...] = ("pending", "applying", "applied", "rejected")


MAX_TAGS = 32
MAX_TAG_LENGTH = 64
MAX_NOTE_LENGTH = 20_000


def check_tag(tag: object) -> str:
    """A tag as stored: 1-64 printable characters without spaces or commas, or ValueError."""
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"a tag is a non-empty string, got {tag!r}")
    if len(tag) > MAX_TAG_LENGTH:
        raise ValueError(f"a tag has at most {MAX_TAG_LENGTH} characters, got {len(tag)}")
    if not tag.isprintable() or any(c.isspace() or c == "," for c in tag):
        raise ValueError(f"a tag has no spaces, commas or control characters, got {tag!r}")
    return tag


def check_note(note: object) -> str:
    """A run's note as stored (any printable text and newlines, bounded), or ValueError."""
    if not isinstance(note, str):
        raise ValueError(f"a note is a string, got {type(note).__name__}")
    if len(note) > MAX_NOTE_LENGTH:
        raise ValueError(f"a note has at most {MAX_NOTE_LENGTH} characters, got {len(note)}")
    if any(not (c.isprintable() or c in "\n\t") for c in note):
        raise ValueError("a note has no control characters other than newlines and tabs")
    return note


@dataclass(frozen=True)
class RunRecord:
    """One run: the whole tuning history of one model.

    ``step`` is the last global step the training process reported; ``heartbeat_at`` the last
    time it reported anything (epoch seconds). ``meta`` holds what ``retune.init`` captured
    automatically (model summary, optimizer, scheduler, environment, git, command line, host,
    seeds); ``config`` is the user's own configuration; ``tunables`` the declared knobs.
    ``tags`` (sorted, unique) and ``note`` are what people wrote about the run.
    """

    id: str
    name: str
    status: str
    created_at: float
    ended_at: float | None
    heartbeat_at: float | None
    step: int
    config: dict[str, Any]
    meta: dict[str, Any]
    tunables: list[dict[str, Any]]
    error: str | None
    tags: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def duration(self) -> float | None:
        """Seconds from creation to the end (or to the last heartbeat while live)."""
        end = self.ended_at if self.ended_at is not None else self.heartbeat_at
        return None if end is None else max(0.0, end - self.created_at)


@dataclass(frozen=True)
class NodeRecord:
    """A segment of training with one fixed set of hyperparameters.

    ``id`` is the node's number within its run (shown as ``n{id}``). ``end_step`` is ``None``
    while the node is open. ``values`` are the full tunable values at the node's start, ``diff``
    maps a tunable to ``[old, new]`` relative to the parent. ``info`` is free-form JSON the
    process that made the node adds about it (an exploration's score, the guard's reason).
    """

    run_id: str
    id: int
    parent: int | None
    start_step: int
    end_step: int | None
    change_kind: str
    values: dict[str, Any]
    diff: dict[str, Any]
    created_by: str | None
    created_at: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"n{self.id}"


@dataclass(frozen=True)
class CommandRecord:
    """A request to a run, queued in the store: ``pending -> applying -> applied | rejected``.

    A command found invalid at submission is stored ``rejected`` at once; the training process
    claims a pending command (``applying``, one winner) before it touches anything.
    """

    id: int
    run_id: str
    kind: str
    payload: dict[str, Any]
    status: str
    reason: str | None
    source: str
    user: str | None
    created_at: float
    resolved_at: float | None
    applied_step: int | None
    node: int | None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointRecord:
    """The full training state at a step; ``manifest`` names the blobs that hold its tensors."""

    run_id: str
    id: int
    node: int
    step: int
    tag: str | None
    reason: str
    manifest: dict[str, Any] = field(repr=False)  # every blob and the RNG state: kilobytes
    nbytes: int
    created_at: float

    @property
    def label(self) -> str:
        return f"c{self.id}"


@dataclass(frozen=True)
class EventRecord:
    """Something that happened to a run (status changes, warnings, crashes)."""

    id: int
    run_id: str
    kind: str
    node: int | None
    step: int | None
    payload: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class MetricChunk:
    """A batch of points of one metric key of one node, as the writer appends them.

    The arrays are equally long: ``steps`` int64, ``values`` float64 (NaN and inf kept),
    ``times`` float64 epoch seconds.
    """

    node: int
    key: str
    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray


@dataclass(frozen=True)
class MetricSeries:
    """Points of one metric: equally long read-only arrays, ordered by step within each node.

    ``nonfinite`` flags NaN and +/-inf points, which are kept, never dropped.
    """

    key: str
    steps: np.ndarray
    values: np.ndarray
    times: np.ndarray
    nodes: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def nonfinite(self) -> np.ndarray:
        mask: np.ndarray = ~np.isfinite(self.values)
        return mask

    @property
    def has_nonfinite(self) -> bool:
        return bool(self.nonfinite.any())

    def last(self) -> float | None:
        return float(self.values[-1]) if len(self.values) else None

    def select(
        self, start: int | None = None, end: int | None = None, max_points: int | None = None
    ) -> MetricSeries:
        """Points with ``start <= step <= end``, downsampled by min/max buckets to ``max_points``.

        Downsampling keeps each bucket's minimum, maximum and first NaN, so no spike is lost.
        """
        mask = np.ones(len(self.steps), dtype=bool)
        if start is not None:
            mask &= self.steps >= start
        if end is not None:
            mask &= self.steps <= end
        index = np.flatnonzero(mask)
        if max_points is not None:
            if max_points < 3:
                raise InvalidArgument(f"max_points must be at least 3, got {max_points}")
            index = index[minmax_indices(self.values[index], max_points)]
        return self.take(index)

    def take(self, index: np.ndarray) -> MetricSeries:
        """The points at ``index`` (positions, in that order), as read-only copies."""
        return MetricSeries(
            self.key,
            _frozen(self.steps[index]),
            _frozen(self.values[index]),
            _frozen(self.times[index]),
            _frozen(self.nodes[index]),
        )

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame with columns step, value, time, node (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from e
        return pd.DataFrame(
            {"step": self.steps, "value": self.values, "time": self.times, "node": self.nodes}
        )


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array

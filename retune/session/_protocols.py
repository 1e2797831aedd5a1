"""The small interfaces the session's parts see of a run, so that none imports the run handle.

:class:`~retune.session.Run` implements all of them. The command applier sees a
:class:`RunIdentity`; checkpoint capture and restore see a :class:`StatefulRun`; command
handlers see a :class:`TrainingSession`, which adds what a change needs (a checkpoint saver,
the loop flags, opening a node).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from retune.store import CheckpointRecord, CommandRecord, Store

if TYPE_CHECKING:
    from retune.control import LiveTunables

__all__ = [
    "ActiveExploration",
    "CheckpointSaver",
    "PendingSave",
    "RunIdentity",
    "SessionFlags",
    "StatefulRun",
    "TrainingSession",
]


@dataclass
class SessionFlags:
    """What the commands asked of the loop: hold (``paused``) or end (``stop_requested``)."""

    paused: bool = False
    stop_requested: bool = False


class RunIdentity(Protocol):
    """Which run, where it is stored, and where its training is now."""

    @property
    def id(self) -> str: ...

    @property
    def node(self) -> int: ...

    @property
    def global_step(self) -> int: ...

    @property
    def store(self) -> Store: ...


class StatefulRun(RunIdentity, Protocol):
    """What a checkpoint captures and a restore puts back (training objects may be None)."""

    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    state: dict[str, Any]
    state_parts: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]
    unclaimed_parts: dict[str, Any]

    @property
    def tunables(self) -> LiveTunables: ...

    def loop_state(self) -> dict[str, int]:
        """Epoch, batch, data seed and global step, as a checkpoint stores them."""

    def set_loop_state(self, state: dict[str, int]) -> None:
        """Move the loop position (and the global step) to ``state``."""

    def flush(self) -> None:
        """Write every buffered metric point now."""


class PendingSave(Protocol):
    """A save being written in the background (``Checkpointer.save_later``)."""

    record: CheckpointRecord | None
    """Set once the checkpoint is listed."""
    background: bool
    """Whether it is written in the background (False: written before the call returned)."""

    @property
    def failure(self) -> str | None:
        """Why the save failed (type and message); None unless it failed."""

    def wait(self, timeout: float | None = None) -> CheckpointRecord | None:
        """Wait until the writing has ended; the listed record, or None."""

    def then(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(self)`` once the writing has ended (at once if it has)."""


class CheckpointSaver(Protocol):
    """Saves the run's state now and loads a saved one (verified)."""

    def save(self, reason: str, tag: str | None = None) -> CheckpointRecord: ...

    def save_later(self, reason: str, tag: str | None = None) -> PendingSave:
        """The state copied now, written in the background; never skipped."""

    def load(self, record: CheckpointRecord) -> Any: ...

    def wait(self, timeout: float | None = None) -> Any:
        """Wait until the save being written in the background (if any) is listed or failed."""


class ActiveExploration(Protocol):
    """An exploration the session is running (see ``_explore``): fed every step boundary."""

    command_id: int

    def after_step(self, values: dict[str, float]) -> None:
        """The step just completed, with its metrics (may switch candidates)."""

    def observe(self, values: dict[str, float]) -> None:
        """Metrics logged at the current step."""

    def cancel(self, command: CommandRecord) -> dict[str, Any]:
        """End the exploration on a ``stop``; returns the stop command's result."""

    def interrupt(self, reason: str) -> None:
        """The run is ending: record the exploration as interrupted."""


class TrainingSession(StatefulRun, Protocol):
    """What a command handler may see and do of a live run."""

    exploration: ActiveExploration | None
    """The exploration being run, if any (commands that change values wait for its end)."""

    @property
    def checkpointer(self) -> CheckpointSaver: ...

    @property
    def flags(self) -> SessionFlags: ...

    def start_node(
        self, kind: str, diff: dict[str, Any], who: str | None, *, parent: int | None = None
    ) -> None:
        """Close the current node at the current step and train on a new child of ``parent``
        (default: the current node) from here, with the current values."""

    def load_state(self, state: Any) -> None:
        """Put a decoded checkpoint state into the live model, optimizer, RNG and loop."""

    def publish_tunables(self) -> None:
        """Store the declared tunables, and their values on the current node."""

    def resolve_applied(
        self, command_id: int, *, step: int, node: int, result: dict[str, Any]
    ) -> None:
        """Record a command applied at ``step`` on ``node`` once its work has ended (any
        thread; never raises: what the store refuses is written later, before the run
        ends)."""

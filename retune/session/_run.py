"""The run handle: what the training script holds and calls every step."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from retune.errors import InvalidArgument, RetuneError
from retune.session import _lifecycle
from retune.session._writer import MetricWriter
from retune.store import NodeRecord, RunRecord, Store

__all__ = ["Run"]

_NUMBER_TYPES = (float, int)


def _coerce_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Turn every value into a float (tensors, numpy scalars, bools) or raise InvalidArgument."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"metric names must be non-empty strings, got {key!r}")
        if isinstance(value, str) or not hasattr(value, "__float__"):
            raise InvalidArgument(
                f"metric {key!r} must be a number, got {type(value).__name__} {value!r:.60}"
            )
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidArgument(f"metric {key!r} must be a single number: {e}") from e
    return out


class Run:
    """A training run being recorded. Create it with :func:`retune.init`.

    Call :meth:`step` once per optimizer step (from the training thread) and :meth:`log` for
    metrics of the current step; end with :meth:`finish` or use the run as a context manager.
    ``step()`` only appends to an in-memory buffer; a background thread writes batches.
    """

    def __init__(
        self,
        store: Store,
        record: RunRecord,
        root: NodeRecord,
        *,
        flush_interval: float,
        poll_interval: float,
        owns_store: bool,
    ) -> None:
        self.store = store
        self._record = record
        self._node = root.id
        self._step = 0
        self._owns_store = owns_store
        self._ended = False
        self._end_lock = threading.Lock()
        self._writer = MetricWriter(
            store,
            record.id,
            flush_interval=flush_interval,
            poll_interval=poll_interval,
            progress=lambda: self._step,
        )
        self._buffer = self._writer.buffer
        _lifecycle.track(self)

    # -- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._record.id

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def global_step(self) -> int:
        """The last completed global step (0 before the first :meth:`step`)."""
        return self._step

    @property
    def node(self) -> int:
        """The number of the node now being trained (``n1`` is the root)."""
        return self._node

    @property
    def ended(self) -> bool:
        return self._ended

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, id={self.id!r}, step={self._step})"

    # -- hot path ---------------------------------------------------------------------------
    def step(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> int:
        """Complete one global step and record its metrics; returns the step number (from 1).

        Values must be numbers (floats, ints, one-element tensors, numpy scalars); NaN and inf
        are kept and flagged. Metrics may be given as keywords or, for names that are not
        identifiers (``"val/loss"``), as a mapping.
        """
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        values = kwargs if metrics is None else {**metrics, **kwargs}
        for value in values.values():
            if type(value) not in _NUMBER_TYPES:
                values = _coerce_metrics(values)
                break
        self._step += 1
        if values:
            self._buffer.append((self._step, self._node, time.time(), values))
        return self._step

    def log(self, metrics: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Record metrics at the current step (e.g. validation after an epoch)."""
        if self._ended:
            raise InvalidArgument(f"run {self.name} ({self.id}) has ended; start a new one")
        values = _coerce_metrics(kwargs if metrics is None else {**metrics, **kwargs})
        if values:
            self._buffer.append((self._step, self._node, time.time(), values))

    def flush(self) -> None:
        """Write every buffered point now (the background thread does this every second)."""
        self._writer.flush()

    # -- ending -----------------------------------------------------------------------------
    def finish(self, status: str = "finished", *, error: str | None = None) -> None:
        """Flush everything, close the current node and mark the run ``status``. Idempotent."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        _lifecycle.untrack(self)
        try:
            self._writer.close()
        finally:
            now = time.time()
            self.store.end_node(self.id, self._node, self._step)
            self.store.update_run(
                self.id,
                status=status,
                ended_at=now,
                heartbeat_at=now,
                step=self._step,
                error=error,
            )
            if status != "finished":
                self.store.add_event(
                    self.id,
                    status,
                    {"error": error} if error else {},
                    node=self._node,
                    step=self._step,
                )
            if self._owns_store:
                self.store.close()

    def _end_from_lifecycle(self, status: str, error: str | None) -> None:
        try:
            self.finish(status, error=error)
        except RetuneError as e:  # at interpreter exit there is no caller left to raise to
            print(f"retune: could not finish run {self.name} ({self.id}): {e}")

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped", error="interrupted (KeyboardInterrupt)")
        else:
            self.finish("crashed", error="".join(traceback.format_exception(exc_type, exc, tb)))

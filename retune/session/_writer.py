"""The background thread that writes buffered metrics (and heartbeats) to the store.

The training thread only appends ``(step, node, time, metrics)`` tuples to a deque (their keys
and values already validated by the run); this thread drains it every ``flush_interval``
seconds (sooner when it grows past ``max_buffer``) and writes one batch per flush: one packed
chunk per (node, key). ``flush()`` drains synchronously from any thread.

What is never lost:

* Draining is one C-level call into the writer's own list of unwritten points, so an
  interruption (Ctrl-C, SIGTERM) at any moment of a flush leaves every point either written or
  still held for the next flush; ``close()`` writes what is held.
* When the store refuses a batch for its content (``StoreError``), its chunks are written one
  by one: a chunk refused for its content (a poison point) is held apart and, after
  :data:`MAX_STRIKES` refusals, dropped with a warning and a ``metrics_dropped`` event; it
  never blocks the other points. When the store cannot be used (``StoreUnavailable``: down,
  locked, disk full), nothing is dropped: it is all retried, and ``close()`` raises if it
  still fails, so data acknowledged by ``finish()`` is never silently lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import repeat, starmap

import numpy as np

from retune.errors import RetuneError, StoreError, StoreUnavailable
from retune.store import STALE_AFTER, MetricChunk, Store

__all__ = ["MAX_STRIKES", "MetricWriter", "Point"]

log = logging.getLogger("retune")

Point = tuple[int, int, float, Mapping[str, float]]
"""(step, node, wall time, {key: value})"""

MAX_STRIKES = 3
"""Refusals of one chunk for its content before it is dropped."""


def pack(points: list[Point]) -> list[MetricChunk]:
    """Group points into one chunk per (node, key), keeping arrival order."""
    columns: dict[tuple[int, str], tuple[list[int], list[float], list[float]]] = {}
    for step, node, wall, metrics in points:
        for key, value in metrics.items():
            column = columns.get((node, key))
            if column is None:
                column = columns[(node, key)] = ([], [], [])
            column[0].append(step)
            column[1].append(value)
            column[2].append(wall)
    return [
        MetricChunk(
            node=node,
            key=key,
            steps=np.asarray(steps, dtype=np.int64),
            values=np.asarray(values, dtype=np.float64),
            times=np.asarray(times, dtype=np.float64),
        )
        for (node, key), (steps, values, times) in columns.items()
    ]


class MetricWriter:
    """Owns the metric buffer of one run and the thread that empties it into the store.

    ``tick`` (optional) runs on the same thread every ``poll_interval`` seconds, for work that
    must happen often but off the training thread (polling commands). ``after_flush``
    (optional) runs after every successful flush, on the flushing thread. Neither may raise.
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        *,
        flush_interval: float = 1.0,
        poll_interval: float = 0.05,
        max_buffer: int = 100_000,
        progress: Callable[[], int],
        tick: Callable[[], None] | None = None,
        after_flush: Callable[[], None] | None = None,
    ) -> None:
        self.buffer: deque[Point] = deque()
        self._store = store
        self._run_id = run_id
        self._flush_interval = flush_interval
        self._poll_interval = poll_interval
        self._max_buffer = max_buffer
        self._progress = progress
        self._tick = tick
        self._after_flush = after_flush
        self._unwritten: list[Point] = []  # drained from the buffer, not yet written
        self._held: list[tuple[MetricChunk, int]] = []  # chunks refused alone, with strikes
        self.dropped = 0
        """Points dropped because the store refused them while it took the others."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name=f"retune-writer-{run_id}")
        self._thread.daemon = True
        self._thread.start()

    def _loop(self) -> None:
        # the heartbeat rides on the flush: never let it age past a third of STALE_AFTER,
        # or a long flush_interval makes a live run look dead (and resumable elsewhere)
        interval = min(self._flush_interval, STALE_AFTER / 3)
        next_flush = time.monotonic() + interval
        while not self._stop.wait(self._poll_interval):
            if self._tick is not None:
                self._tick()
            now = time.monotonic()
            if now >= next_flush or len(self.buffer) >= self._max_buffer:
                next_flush = now + interval
                try:
                    self.flush()
                except RetuneError as e:
                    if not self._warned:
                        log.warning("retune: metrics not written yet, will retry: %s", e)
                        self._warned = True

    def flush(self) -> int:
        """Write every point buffered so far; returns how many points were written.

        Raises ``StoreUnavailable`` (a ``StoreError``) when the store cannot be used (down,
        locked, disk full): every point stays held for a retry. Chunks the store refuses for
        their content are held apart and dropped after :data:`MAX_STRIKES` refusals.
        """
        with self._lock:
            buffer = self.buffer
            # one C call: every drained point is in _unwritten before any signal handler runs
            self._unwritten.extend(starmap(buffer.popleft, repeat((), len(buffer))))
            if self._unwritten or self._held:
                written = self._write_points()
            else:
                self._write([])  # the heartbeat and progress only
                written = 0
            self._warned = False
        if self._after_flush is not None:
            self._after_flush()
        return written

    def _write_points(self) -> int:
        """Write ``_unwritten`` and the held chunks (lock held); returns points written."""
        fresh = pack(self._unwritten)
        held = [chunk for chunk, _ in self._held]
        try:
            self._write([*held, *fresh])
        except StoreUnavailable:
            self._held = [*self._held, *((chunk, 0) for chunk in fresh)]
            self._unwritten = []
            raise
        except RetuneError:
            return self._isolate(fresh)
        self._held = []
        self._unwritten = []
        return sum(len(c.steps) for c in [*held, *fresh])

    def _write(self, chunks: list[MetricChunk]) -> None:
        try:
            self._store.append_metrics(
                self._run_id, chunks, step=self._progress(), heartbeat_at=time.time()
            )
        except RetuneError:
            raise
        except Exception as e:  # a driver error that escaped the store's translation
            raise StoreError(f"metrics could not be written: {type(e).__name__}: {e}") from e

    def _isolate(self, fresh: list[MetricChunk]) -> int:
        """The batch was refused for its content: write chunk by chunk. A chunk refused for
        its content gets a strike (dropped at :data:`MAX_STRIKES`); one refused because the
        store cannot be used is kept as it is."""
        candidates = [*self._held, *((chunk, 0) for chunk in fresh)]
        kept: list[tuple[MetricChunk, int]] = []
        written = 0
        unavailable: StoreUnavailable | None = None
        for chunk, strikes in candidates:
            try:
                self._write([chunk])
            except StoreUnavailable as e:
                unavailable = e
                kept.append((chunk, strikes))
            except RetuneError as e:
                if strikes + 1 < MAX_STRIKES:
                    kept.append((chunk, strikes + 1))
                else:
                    self._drop(chunk, e)
            else:
                written += len(chunk.steps)
        # only now: an interruption above leaves everything to be written again (never lost)
        self._held, self._unwritten = kept, []
        if unavailable is not None and not written:
            raise unavailable
        return written

    def _drop(self, chunk: MetricChunk, error: RetuneError) -> None:
        count = len(chunk.steps)
        self.dropped += count
        reason = str(error)[:500]
        log.warning(
            "retune: dropped %d point(s) of metric %r (node n%d): the store refused them: %s",
            count,
            chunk.key,
            chunk.node,
            reason,
        )
        try:
            self._store.add_event(
                self._run_id,
                "metrics_dropped",
                {
                    "key": chunk.key,
                    "points": count,
                    "first_step": int(chunk.steps.min()),
                    "last_step": int(chunk.steps.max()),
                    "reason": reason,
                },
                node=chunk.node,
                step=int(chunk.steps.max()),
            )
        except RetuneError as e:
            log.warning("retune: could not record the dropped points: %s", e)

    @property
    def unwritten(self) -> int:
        """Points buffered or held that are not in the store yet."""
        held = sum(len(chunk.steps) for chunk, _ in self._held)
        return len(self.buffer) + len(self._unwritten) + held

    def close(self) -> None:
        """Stop the thread and write what is left.

        Raises ``StoreError`` when the store cannot be used (the points stay held, and a
        later ``close()`` tries again). Chunks it refuses for their content get one last try
        each and are then dropped (a warning and a ``metrics_dropped`` event).
        """
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()
        with self._lock:
            held, self._held = self._held, []
            for index, (chunk, _) in enumerate(held):
                try:
                    self._write([chunk])
                except StoreUnavailable:
                    self._held = held[index:]
                    raise
                except RetuneError as e:
                    self._drop(chunk, e)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

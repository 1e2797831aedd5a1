"""The background thread that writes buffered metrics (and heartbeats) to the store.

The training thread only appends ``(step, node, time, metrics)`` tuples to a deque; this thread
drains it every ``flush_interval`` seconds (sooner when it grows past ``max_buffer``) and writes
one batch per flush: one packed chunk per (node, key). ``flush()`` drains synchronously from any
thread. Points that fail to write are kept and retried; ``close()`` raises if they still fail,
so data acknowledged by ``finish()`` is never silently lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from retune.errors import RetuneError, StoreError
from retune.store import MetricChunk, Store

__all__ = ["MetricWriter", "Point"]

log = logging.getLogger("retune")

Point = tuple[int, int, float, Mapping[str, float]]
"""(step, node, wall time, {key: value})"""


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
    must happen often but off the training thread (polling commands). It must not raise.
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
    ) -> None:
        self.buffer: deque[Point] = deque()
        self._store = store
        self._run_id = run_id
        self._flush_interval = flush_interval
        self._poll_interval = poll_interval
        self._max_buffer = max_buffer
        self._progress = progress
        self._tick = tick
        self._retry: list[Point] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name=f"retune-writer-{run_id}")
        self._thread.daemon = True
        self._thread.start()

    def _loop(self) -> None:
        next_flush = time.monotonic() + self._flush_interval
        while not self._stop.wait(self._poll_interval):
            if self._tick is not None:
                self._tick()
            now = time.monotonic()
            if now >= next_flush or len(self.buffer) >= self._max_buffer:
                next_flush = now + self._flush_interval
                try:
                    self.flush()
                except RetuneError as e:
                    if not self._warned:
                        log.warning("retune: metrics not written yet, will retry: %s", e)
                        self._warned = True

    def flush(self) -> int:
        """Write every point buffered so far; returns how many were written.

        Raises ``StoreError`` when the store refuses them; they stay buffered for a retry.
        """
        with self._lock:
            drained = len(self.buffer)
            points = self._retry + [self.buffer.popleft() for _ in range(drained)]
            self._retry = []
            try:
                self._store.append_metrics(
                    self._run_id,
                    pack(points),
                    step=self._progress(),
                    heartbeat_at=time.time(),
                )
            except RetuneError:
                self._retry = points
                raise
            except Exception as e:  # a value that numpy cannot take; should not happen
                self._retry = points
                raise StoreError(f"metrics could not be written: {e}") from e
            self._warned = False
            return len(points)

    def close(self) -> None:
        """Stop the thread and write what is left; raises if the store still refuses it."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

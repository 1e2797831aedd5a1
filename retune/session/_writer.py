"""The background thread that writes buffered metrics (and heartbeats) to the store.

The training thread appends points to column buffers (:class:`Columns`, one per node): for
each set of metric names logged together, a :class:`Group` of three typed arrays (steps and
wall times, one entry per call; the values, one per name per call). Appending is a few C-level
array appends, nothing the garbage collector tracks stays alive, and the values are checked by
the array itself (a value it cannot hold sends the call to the full check). This thread drains
the columns every ``flush_interval`` seconds (sooner when they hold ``max_buffer`` rows) and
writes one batch per flush: one packed chunk per (node, key). ``flush()`` drains synchronously
from any thread.

Draining without a lock on the hot path: in a group, a call's values and time are appended
before its step, so the rows counted by ``len(steps)`` are complete; the writer copies those
rows and deletes them from the front of the arrays (each a single C call under the GIL), while
the training thread only ever appends at the end. A failed append is undone under the
writer's lock (:meth:`MetricWriter.undo_partial`).

What is never lost:

* A drained batch is in the writer's list of unwritten rows before it is deleted from the
  columns (the deletion runs in a ``finally``), so an interruption (Ctrl-C, SIGTERM) during a
  flush leaves every point written or still held (at worst, held twice); ``close()`` writes
  what is held.
* When the store refuses a batch for its content (``StoreError``), its chunks are written one
  by one: a chunk refused for its content (a poison point) is held apart and, after
  :data:`MAX_STRIKES` refusals, dropped with a warning and a ``metrics_dropped`` event; it
  never blocks the other points. When the store cannot be used (``StoreUnavailable``: down,
  locked, disk full), nothing is dropped: it is all retried, and ``close()`` raises if it
  still fails, so data acknowledged by ``finish()`` is never silently lost.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from retune.errors import RetuneError, StoreError, StoreUnavailable
from retune.store import STALE_AFTER, MetricChunk, Store

__all__ = ["MAX_STRIKES", "Columns", "Group", "MetricWriter", "Rows"]

log = logging.getLogger("retune")

MAX_STRIKES = 3
"""Refusals of one chunk for its content before it is dropped."""


class Group:
    """The unwritten calls of one node that logged exactly the names ``keys``.

    ``values`` holds ``len(keys)`` values per call, in ``keys`` order. Appended by the
    training thread: values, then time, then step (a call is complete once its step is in).
    ``take(named)`` gives a mapping's values in ``keys`` order and raises ``KeyError`` when a
    name is missing: with ``len(named) == width`` first, that is the hot path's whole check
    that a call logs this group's names (in any order), cheaper than comparing them.

    ``pack(*values)`` converts one call's values to their bytes (``float()``'s rules, or an
    exception) before anything is appended: ``values.frombytes(pack(...))`` is then one
    atomic append. ``values.extend(iterable)`` was not: it converts item by item, and a
    conversion that lets other threads run (a torch tensor's ``__float__`` releases the GIL)
    let the writer's drain shift the array under it, which stored garbage values.
    """

    __slots__ = ("keys", "pack", "steps", "take", "times", "values", "width")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.width = len(keys)
        self.steps = array("q")
        self.times = array("d")
        self.values = array("d")
        self.pack: Callable[..., bytes] = struct.Struct(f"{self.width}d").pack
        self.take: Callable[[Mapping[str, Any]], tuple[Any, ...]]
        if self.width > 1:
            self.take = itemgetter(*keys)
        elif keys:  # itemgetter of one name returns the value, not a 1-tuple
            (key,) = keys
            self.take = lambda named: (named[key],)
        else:  # NO_GROUP: no call logs nothing, so none gets here
            self.take = lambda named: ()


NO_GROUP = Group(())
"""Matches no call (every call logs at least one name): the hot path's starting point."""


class Columns:
    """The unwritten points of one node: a :class:`Group` per set of names logged together."""

    __slots__ = ("groups", "node")

    def __init__(self, node: int) -> None:
        self.node = node
        self.groups: dict[tuple[str, ...], Group] = {}

    def group(self, keys: tuple[str, ...]) -> Group:
        """The group of ``keys`` (names already validated), created on first use."""
        group = self.groups.get(keys)
        if group is None:
            group = self.groups[keys] = Group(keys)
        return group

    @property
    def rows(self) -> int:
        return sum(len(g.steps) for g in list(self.groups.values()))

    @property
    def points(self) -> int:
        return sum(len(g.steps) * g.width for g in list(self.groups.values()))


@dataclass(frozen=True)
class Rows:
    """Drained calls of one group: ``values`` is ``(len(steps), len(keys))``."""

    node: int
    keys: tuple[str, ...]
    steps: np.ndarray
    times: np.ndarray
    values: np.ndarray

    @property
    def points(self) -> int:
        return int(self.values.size)


def pack(rows: list[Rows]) -> list[MetricChunk]:
    """One chunk per (node, key), keys in the order first logged, points ordered by step
    (a stable sort: calls at one step keep their order within a group)."""
    parts: dict[tuple[int, str], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for batch in rows:
        for index, key in enumerate(batch.keys):
            parts.setdefault((batch.node, key), []).append(
                (batch.steps, batch.values[:, index], batch.times)
            )
    chunks = []
    for (node, key), pieces in parts.items():
        if len(pieces) == 1:  # the common case: no copy but the value column's
            steps, values, times = pieces[0]
        else:
            steps = np.concatenate([p[0] for p in pieces])
            values = np.concatenate([p[1] for p in pieces])
            times = np.concatenate([p[2] for p in pieces])
            order = np.argsort(steps, kind="stable")
            steps, values, times = steps[order], values[order], times[order]
        chunks.append(MetricChunk(node=node, key=key, steps=steps, values=values, times=times))
    return chunks


class MetricWriter:
    """Owns the metric buffer of one run and the thread that empties it into the store.

    ``tick`` (optional) runs on the same thread every ``poll_interval`` seconds, for work that
    must happen often but off the training thread (polling commands). ``after_flush``
    (optional) runs after every successful flush, on the flushing thread. Neither may raise.
    ``progress`` gives the run's step, written with a heartbeat at every flush; None for a
    writer that only adds points (a distributed rank other than 0: rank 0 owns the run's
    step and heartbeat).
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        *,
        flush_interval: float = 1.0,
        poll_interval: float = 0.05,
        max_buffer: int = 100_000,
        progress: Callable[[], int] | None,
        tick: Callable[[], None] | None = None,
        after_flush: Callable[[], None] | None = None,
    ) -> None:
        self._columns: list[Columns] = []  # the current node's last; older ones until drained
        self._store = store
        self._run_id = run_id
        self._flush_interval = flush_interval
        self._poll_interval = poll_interval
        self._max_buffer = max_buffer
        self._progress = progress
        self._tick = tick
        self._after_flush = after_flush
        self._unwritten: list[Rows] = []  # drained from the columns, not yet written
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
            if now >= next_flush or self._rows() >= self._max_buffer:
                next_flush = now + interval
                try:
                    self.flush()
                except RetuneError as e:
                    if not self._warned:
                        log.warning("retune: metrics not written yet, will retry: %s", e)
                        self._warned = True
            try:
                self._store.maintain()  # off every acknowledged path: flush() does not wait
            except Exception as e:  # a third-party store's; this thread must live on
                log.debug("retune: store maintenance failed: %s", e)

    def columns(self, node: int) -> Columns:
        """Fresh columns for the points of ``node`` (training thread, when the node changes);
        the previous ones are written by the next flush."""
        with self._lock:
            columns = Columns(node)
            self._columns.append(columns)
            return columns

    def undo_partial(self, group: Group) -> None:
        """Remove what a call whose append stopped midway left (training thread): its values
        and its time, before its step made it complete."""
        with self._lock:  # no drain meanwhile: complete calls are len(steps) * width values
            rows = len(group.steps)
            del group.values[rows * group.width :]
            del group.times[rows:]

    def _rows(self) -> int:
        return sum(columns.rows for columns in list(self._columns))

    def _drain(self) -> None:
        """Move every complete call from the columns to ``_unwritten`` (lock held)."""
        for columns in list(self._columns):
            for group in list(columns.groups.values()):
                count = len(group.steps)
                if not count:
                    continue
                width = group.width
                drained = False
                try:
                    steps, times = group.steps[:count], group.times[:count]
                    values = group.values[: count * width]
                    self._unwritten.append(
                        Rows(
                            node=columns.node,
                            keys=group.keys,
                            steps=np.frombuffer(steps, dtype=np.int64),
                            times=np.frombuffer(times, dtype=np.float64),
                            values=np.frombuffer(values, dtype=np.float64).reshape(count, width),
                        )
                    )
                    drained = True
                finally:
                    if drained:  # held before removed: an interruption never loses a point
                        del group.values[: count * width]
                        del group.times[:count]
                        del group.steps[:count]
        self._columns[:-1] = [c for c in self._columns[:-1] if c.rows]  # older nodes: done

    def flush(self) -> int:
        """Write every point buffered so far; returns how many points were written.

        Raises ``StoreUnavailable`` (a ``StoreError``) when the store cannot be used (down,
        locked, disk full): every point stays held for a retry. Chunks the store refuses for
        their content are held apart and dropped after :data:`MAX_STRIKES` refusals.
        """
        with self._lock:
            self._drain()
            written = 0
            if self._unwritten or self._held:
                written = self._write_points()
            elif self._progress is not None:
                self._write([])  # the heartbeat and progress only
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
        return sum(len(c.steps) for c in [*held, *fresh])  # points: one per (step, key)

    def _write(self, chunks: list[MetricChunk]) -> None:
        progress = self._progress
        try:
            self._store.append_metrics(
                self._run_id,
                chunks,
                step=None if progress is None else progress(),
                heartbeat_at=None if progress is None else time.time(),
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
        buffered = sum(columns.points for columns in list(self._columns))
        return buffered + sum(rows.points for rows in self._unwritten) + held

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

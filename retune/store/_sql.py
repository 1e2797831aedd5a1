"""The SQLAlchemy backend: SQLite (WAL) today, PostgreSQL through the same code."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)

from retune import _json
from retune.errors import (
    InvalidArgument,
    NodeNotFound,
    RetuneError,
    RunInUse,
    RunNotFound,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from retune.store import _migrate
from retune.store._base import Store
from retune.store._liveness import INTERRUPTED_WHILE_APPLYING, in_use_message, is_live
from retune.store._records import (
    LIVE_STATUSES,
    MAX_TAGS,
    CheckpointRecord,
    CommandRecord,
    EventRecord,
    MetricChunk,
    MetricSeries,
    NodeRecord,
    RunRecord,
    check_note,
    check_tag,
)
from retune.store._schema import checkpoints, commands, events, metric_chunks, nodes, runs

__all__ = ["SqlStore"]

log = logging.getLogger("retune")

FOLD_AFTER_BYTES = 4 * 1024 * 1024
"""Metric bytes committed to SQLite's write-ahead log before :meth:`SqlStore.maintain` folds
it: about SQLite's own mark (1,000 pages of 4 KB)."""

_ID_MIN, _ID_MAX = -(2**31), 2**31 - 1  # command ids are 32-bit integer columns

_BUSY_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a PostgreSQL server to answer a new connection (``connect_timeout``)."""


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _blob(values: np.ndarray, dtype: str) -> memoryview:
    """The bytes of ``values`` as ``dtype``, without a copy when they already are (the
    driver copies them into the database; a copy here would be a second one)."""
    return np.ascontiguousarray(values, dtype=dtype).data.cast("B")


def _steps_blob(steps: np.ndarray) -> memoryview | bytes:
    """A chunk's ``steps`` column: empty when the steps are consecutive (``first_step``,
    ``first_step + 1``, ... ``last_step``: one call per step, the common case), which
    :func:`_steps` rebuilds from ``first_step`` and ``count`` (schema v0.3.0); else every
    step, little-endian int64."""
    count = len(steps)
    spans = bool(count) and int(steps[-1]) - int(steps[0]) == count - 1  # cheap first test
    if spans and (count < 3 or bool(np.all(np.diff(steps) == 1))):
        return b""
    return _blob(steps, "<i8")


def _steps(blob: bytes, first_step: int, count: int) -> np.ndarray:
    """The steps of a stored chunk (see :func:`_steps_blob`), int64."""
    if not blob and count:
        return np.arange(first_step, first_step + count, dtype=np.int64)
    return np.frombuffer(blob, dtype="<i8").astype(np.int64, copy=False)


class SqlStore(Store):
    """A :class:`Store` on any SQLAlchemy database (tested: SQLite, PostgreSQL).

    SQLite runs in WAL mode with ``synchronous=FULL``; writes take the database lock at the
    start of their transaction (``BEGIN IMMEDIATE``) so concurrent writers queue instead of
    failing with "database is locked". A new, empty database is created at the current schema;
    any other schema version raises :class:`SchemaMismatch` naming the command to run.
    """

    def __init__(self, url: str, *, upgrade: bool = False, create: bool = True) -> None:
        self.url = url
        self.read_only = False
        """True when the SQLite file or its folder is not writable: reads work, writes raise."""
        self._is_sqlite = url.startswith("sqlite")
        self._token_uri: str | None = None
        self._token_connection: sqlite3.Connection | None = None
        self._token_lock = threading.Lock()
        try:
            if self._is_sqlite:
                path = self._sqlite_path(url)
                if path is not None:
                    self._token_uri = f"file:{quote(path)}?mode=ro"
                mode = self._sqlite_mode(url, path, create=create)
                self.read_only = mode == "ro"
                if self.read_only:
                    self._writer = self._reader = self._readable_engine(url, path)
                    self._appender = self._writer
                else:
                    self._writer = self._sqlite_engine(url, path, mode, "BEGIN IMMEDIATE")
                    self._reader = self._sqlite_engine(url, path, mode, "BEGIN")
                    self._appender = self._sqlite_engine(
                        url, path, mode, "BEGIN IMMEDIATE", fold_on_commit=False
                    )
            else:
                connect_args: dict[str, Any] = {}
                if "connect_timeout" not in url:
                    connect_args["connect_timeout"] = CONNECT_TIMEOUT
                engine = create_engine(
                    url,
                    json_serializer=_json.dumps,
                    pool_pre_ping=True,
                    connect_args=connect_args,
                    future=True,
                )
                self._writer = self._reader = self._appender = engine
        except (ArgumentError, NoSuchModuleError, ValueError) as e:
            raise StoreUnavailable(f"cannot open store {url!r}: {e}") from e
        self._unfolded = 0  # bytes of metric batches committed to SQLite's log since a fold
        self._unfolded_lock = threading.Lock()
        self._fold_lock = threading.Lock()  # one fold at a time; close() waits for it
        self._closed = False
        self.revision_at_open: str | None = None
        self.revision: str = _migrate.head_revision()
        try:
            self._open(upgrade=upgrade, create=create)
        except BaseException:
            self.close()
            raise

    # -- engine setup -----------------------------------------------------------------------
    @staticmethod
    def _sqlite_path(url: str) -> str | None:
        """The file of a SQLite URL; ``None`` for an in-memory database."""
        path = url.split("///", 1)[1] if "///" in url else ""
        if not path or path == ":memory:" or path.startswith("file:") or "?" in path:
            return None
        return path

    @staticmethod
    def _sqlite_mode(url: str, path: str | None, *, create: bool) -> str:
        """``rwc`` (may create), ``rw`` (must exist) or ``ro`` (exists, not writable)."""
        if path is None:
            return "rwc"
        file = Path(path)
        if not file.exists():
            if not create:
                raise StoreNotFound(
                    f"no store at {file}: check --store / RETUNE_STORE (nothing was created)"
                )
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreUnavailable(f"cannot create the folder for store {url}: {e}") from e
            return "rwc"
        if not create and file.is_file() and file.stat().st_size == 0:
            raise StoreNotFound(
                f"{file} is an empty file, not a Retune store: check --store / RETUNE_STORE"
                " (nothing was created)"
            )
        writable = os.access(file, os.W_OK) and os.access(file.parent, os.W_OK)
        return "rw" if writable else "ro"

    @staticmethod
    def _sqlite_engine(
        url: str, path: str | None, mode: str, begin: str, *, fold_on_commit: bool = True
    ) -> Engine:
        """An engine whose transactions start with ``begin``. ``fold_on_commit=False``: its
        commits never fold the write-ahead log into the database file (SQLite does that by
        default in the commit that takes the log past 1,000 pages: ~70% of committing a
        large batch of metrics); :meth:`maintain` folds it later, off the caller's path."""
        options: dict[str, Any] = {"json_serializer": _json.dumps}
        if path is None:
            options["connect_args"] = {
                "timeout": _BUSY_TIMEOUT_MS / 1000,
                "check_same_thread": False,
            }
        else:
            uri = f"file:{quote(path)}?mode={mode}"
            options["creator"] = lambda: sqlite3.connect(
                uri, uri=True, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
        engine = create_engine(url, **options)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            if not mode.startswith("ro"):
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
                if not fold_on_commit:
                    cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql(begin)

        return engine

    @classmethod
    def _readable_engine(cls, url: str, path: str | None) -> Engine:
        """A read-only engine: ``mode=ro``, else ``immutable=1`` when SQLite cannot even
        create the WAL index beside the file (a read-only mount)."""
        assert path is not None
        engine = cls._sqlite_engine(url, path, "ro", "BEGIN")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
            return engine
        except DBAPIError:
            engine.dispose()
        immutable = cls._sqlite_engine(url, path, "ro&immutable=1", "BEGIN")
        return immutable

    def _open(self, *, upgrade: bool, create: bool) -> None:
        if self.read_only or not create:
            with self._tx(write=False) as conn:
                self.revision_at_open = _migrate.current_revision(conn)
                if _migrate.is_empty(conn):
                    raise StoreNotFound(
                        f"{self.url} holds no Retune store yet: check --store / RETUNE_STORE"
                        " (nothing was created)"
                    )
                if not upgrade:
                    _migrate.check_schema(conn, self.url)
                    return
            if self.read_only:
                raise StoreUnavailable(f"the store at {self.url} is read-only: cannot upgrade it")
        with self._tx(write=True) as conn:
            if conn.dialect.name == "postgresql":  # one process at a time creates or migrates
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7256438)")
            self.revision_at_open = _migrate.current_revision(conn)
            if upgrade or _migrate.is_empty(conn):
                _migrate.upgrade(conn)
            _migrate.check_schema(conn, self.url)

    @contextmanager
    def _tx(
        self, *, write: bool, run_id: str | None = None, appending: bool = False
    ) -> Iterator[Connection]:
        """One transaction; driver errors become Retune errors here and nowhere else.

        A foreign-key violation in a transaction about ``run_id`` means the run (or one of
        its nodes) does not exist: ``RunNotFound`` / ``NodeNotFound``, not a store failure.
        ``appending``: a write on the engine whose commits leave the log for
        :meth:`maintain` to fold (the metric writer's batches).
        """
        if write and self.read_only:
            raise StoreUnavailable(
                f"the store at {self.url} is read-only (its file or folder is not writable);"
                " only reading commands work on it"
            )
        engine = (self._appender if appending else self._writer) if write else self._reader
        try:
            with engine.begin() as conn:
                yield conn
        except RetuneError:
            raise
        except IntegrityError as e:
            reason = str(e.orig if e.orig is not None else e).splitlines()[0]
            if run_id is not None and "foreign key" in reason.lower():
                raise self._missing(run_id) from e
            raise StoreError(f"store {self.url} refused the write: {reason}") from e
        except DataError as e:  # a value the database cannot hold: NUL in text, int range
            reason = str(e.orig if e.orig is not None else e).splitlines()[0]
            raise InvalidArgument(f"store {self.url} cannot hold a value given: {reason}") from e
        except DBAPIError as e:
            reason = str(e.orig if e.orig is not None else e).splitlines()[0]
            if not self._is_sqlite and "timeout expired" in reason.lower():
                reason += (
                    f" (no answer within the {CONNECT_TIMEOUT:g} s connect timeout; is the"
                    " server up? add ?connect_timeout=SECONDS to the URL to wait longer)"
                )
            raise StoreUnavailable(f"store {self.url} cannot be used: {reason}") from e
        except SQLAlchemyError as e:
            reason = str(e).splitlines()[0]
            raise StoreError(f"store {self.url} failed: {reason}") from e

    def _missing(self, run_id: str) -> RetuneError:
        """The error for a foreign-key violation: the run is unknown, else one of its nodes."""
        try:
            with self._tx(write=False) as conn:
                found = conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first()
        except RetuneError:
            found = None
        if found is None:
            return RunNotFound(f"no run with id {run_id!r} in {self.url}")
        return NodeNotFound(f"run {run_id} has no such node")

    @staticmethod
    def _lock_run(conn: Connection, run_id: str) -> None:
        """Serialize numbering within a run: a row lock on PostgreSQL (SQLite's writer lock,
        taken by BEGIN IMMEDIATE, already serializes every write)."""
        conn.execute(select(runs.c.id).where(runs.c.id == run_id).with_for_update())

    def change_token(self) -> object | None:
        """SQLite: ``PRAGMA data_version`` on a connection of its own, which changes exactly
        when another connection (any process, or this store's own pool) commits: a few
        microseconds instead of a query through SQLAlchemy. PostgreSQL: ``None``."""
        if self._token_uri is None:
            return None
        with self._token_lock:
            try:
                if self._token_connection is None:
                    self._token_connection = sqlite3.connect(
                        self._token_uri, uri=True, check_same_thread=False
                    )
                row = self._token_connection.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error:
                return None
        return int(row[0]) if row else None

    def maintain(self) -> None:
        """SQLite: fold the write-ahead log that metric batches left into the database file
        (a passive checkpoint: it waits for no reader or writer and folds what it can). A
        commit is durable without it (``synchronous=FULL`` syncs the log); folding keeps the
        log from growing and reads fast.

        It folds once :data:`FOLD_AFTER_BYTES` of metrics were committed since the last
        complete fold (as SQLite would: an idle run's heartbeats do not sync the database file
        every second). A fold that fails, or that a reader or another checkpoint cut short,
        is retried at the next call."""
        if self._unfolded < FOLD_AFTER_BYTES or not self._fold_lock.acquire(blocking=False):
            return
        try:
            if self._closed:  # a fold now would open the engine again
                return
            taken = self._unfolded
            connection = self._appender.raw_connection()
            try:
                driver = connection.driver_connection
                if driver is None:
                    return
                busy, logged, folded = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                connection.close()
            if not busy and folded == logged:  # complete: keep what came in meanwhile
                with self._unfolded_lock:
                    self._unfolded -= taken
        except (sqlite3.Error, SQLAlchemyError) as e:
            log.debug("retune: folding the log of %s failed, will retry: %s", self.url, e)
        finally:
            self._fold_lock.release()

    def close(self) -> None:
        with self._fold_lock:
            self._closed = True
        with self._token_lock:
            if self._token_connection is not None:
                self._token_connection.close()
                self._token_connection = None
        for engine in {id(e): e for e in (self._appender, self._writer, self._reader)}.values():
            engine.dispose()

    # -- runs -------------------------------------------------------------------------------
    @staticmethod
    def _run(row: Row[Any]) -> RunRecord:
        m = row._mapping
        return RunRecord(
            id=m["id"],
            name=m["name"],
            status=m["status"],
            created_at=m["created_at"],
            ended_at=m["ended_at"],
            heartbeat_at=m["heartbeat_at"],
            step=m["step"],
            config=m["config"],
            meta=m["meta"],
            tunables=m["tunables"],
            error=m["error"],
            tags=list(m["tags"] or []),
            note=m["note"] or "",
        )

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
        if not name or len(name) > 255:
            raise InvalidArgument("a run name must be 1 to 255 characters long")
        now = time.time()
        with self._tx(write=True) as conn:
            while True:
                run_id = secrets.token_hex(4)
                taken = conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first()
                if taken is None:
                    break
            conn.execute(
                insert(runs).values(
                    id=run_id,
                    name=name,
                    status="running",
                    created_at=now,
                    ended_at=None,
                    heartbeat_at=now,
                    step=0,
                    config=_json.jsonable(config),
                    meta=_json.jsonable(meta),
                    tunables=_json.jsonable(tunables),
                    error=None,
                )
            )
            if root_values is not None:
                conn.execute(
                    insert(nodes).values(
                        run_id=run_id,
                        id=1,
                        parent=None,
                        start_step=0,
                        end_step=None,
                        change_kind="start",
                        values=_json.jsonable(root_values),
                        diff={},
                        created_by=created_by,
                        created_at=now,
                    )
                )
            row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
        return self._run(row)

    def get_run(self, ref: str) -> RunRecord:
        with self._tx(write=False) as conn:
            row = conn.execute(select(runs).where(runs.c.id == ref)).first()
            if row is None:
                row = conn.execute(
                    select(runs)
                    .where(runs.c.name == ref)
                    .order_by(runs.c.created_at.desc(), runs.c.id.desc())
                    .limit(1)
                ).first()
        if row is None:
            raise RunNotFound(f"no run named or with id {ref!r} in {self.url}")
        return self._run(row)

    def list_runs(
        self, *, name: str | None = None, statuses: Sequence[str] | None = None
    ) -> list[RunRecord]:
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc())
        if name is not None:
            query = query.where(runs.c.name == name)
        if statuses:
            query = query.where(runs.c.status.in_(list(statuses)))
        with self._tx(write=False) as conn:
            return [self._run(row) for row in conn.execute(query)]

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
        values: dict[str, Any] = {}
        for column, value in (
            ("status", status),
            ("step", step),
            ("heartbeat_at", heartbeat_at),
            ("ended_at", ended_at),
            ("error", error),
        ):
            if value is not None:
                values[column] = value
        if tunables is not None:
            values["tunables"] = _json.jsonable(tunables)
        ending = status is not None and status not in LIVE_STATUSES
        written = True
        with self._tx(write=True) as conn:
            if unless_status and (status is not None or error is not None):
                self._lock_run(conn, run_id)  # held to the commit: the check stays true
                current_status = conn.execute(
                    select(runs.c.status).where(runs.c.id == run_id)
                ).scalar()
                if current_status is None:
                    raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
                if current_status in unless_status:
                    values.pop("status", None)
                    values.pop("error", None)
                    written = ending = False
            if meta is not None:
                current = conn.execute(select(runs.c.meta).where(runs.c.id == run_id)).scalar()
                if current is None:
                    raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
                values["meta"] = {**current, **_json.jsonable(meta)}
            if not values:
                return written
            result = conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
            if result.rowcount == 0:
                raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
            if ending:  # nothing will apply what is still queued: say so, in this transaction
                # (the UPDATE above holds the run's row: a submit waits, then sees it ended).
                # Commands being applied are left to the process applying them (a change whose
                # checkpoint another rank's crash record races), or to the next attach.
                reason = f"the run ended ({status}) before it was applied"
                self._reject_queued(conn, run_id, reason, time.time(), applying=None)
        return written

    def set_run_tags(
        self,
        run_id: str,
        tags: Sequence[str] | None = None,
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
    ) -> RunRecord:
        try:
            for tag in [*(tags or ()), *add, *remove]:
                check_tag(tag)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        with self._tx(write=True, run_id=run_id) as conn:
            self._lock_run(conn, run_id)
            found = conn.execute(select(runs.c.tags).where(runs.c.id == run_id)).one_or_none()
            if found is None:
                raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
            result = set(found[0] or []) if tags is None else set(tags)
            result = (result | set(add)) - set(remove)
            if len(result) > MAX_TAGS:
                raise InvalidArgument(
                    f"a run has at most {MAX_TAGS} tags, this would give it {len(result)}"
                )
            conn.execute(update(runs).where(runs.c.id == run_id).values(tags=sorted(result)))
            row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
        return self._run(row)

    def set_run_note(self, run_id: str, note: str) -> RunRecord:
        try:
            check_note(note)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        with self._tx(write=True, run_id=run_id) as conn:
            result = conn.execute(update(runs).where(runs.c.id == run_id).values(note=note))
            if result.rowcount == 0:
                raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
            row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
        return self._run(row)

    def reopen_run(self, run_id: str) -> RunRecord:
        with self._tx(write=True) as conn:
            result = conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status="running", ended_at=None, error=None, heartbeat_at=time.time())
            )
            if result.rowcount == 0:
                raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
            row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
        return self._run(row)

    def attach_run(self, run_id: str, *, owner: dict[str, Any], reason: str) -> RunRecord:
        with self._tx(write=True) as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id).with_for_update()).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
            current = self._run(row)
            now = time.time()
            if is_live(current, now):
                raise RunInUse(in_use_message(current, now))
            # compare-and-set: the row still is what was read (SQLite's BEGIN IMMEDIATE and
            # PostgreSQL's row lock already serialize attachers; this states the condition)
            attached = conn.execute(
                update(runs)
                .where(
                    and_(
                        runs.c.id == run_id,
                        runs.c.status == current.status,
                        runs.c.heartbeat_at == current.heartbeat_at
                        if current.heartbeat_at is not None
                        else runs.c.heartbeat_at.is_(None),
                    )
                )
                .values(
                    status="running",
                    ended_at=None,
                    error=None,
                    heartbeat_at=now,
                    meta={**current.meta, "process": _json.jsonable(owner)},
                )
            )
            if attached.rowcount != 1:
                raise RunInUse(f"run {current.name} ({run_id}) was attached by another process")
            self._reject_queued(conn, run_id, reason, now, applying=INTERRUPTED_WHILE_APPLYING)
            row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
        return self._run(row)

    @staticmethod
    def _reject_queued(
        conn: Connection, run_id: str, reason: str, now: float, *, applying: str | None
    ) -> None:
        """Reject every command of the run still pending with ``reason`` (no process will
        apply it), and those being applied with ``applying`` when given."""
        for status, why in (("pending", reason), ("applying", applying)):
            if why is not None:
                conn.execute(
                    update(commands)
                    .where(and_(commands.c.run_id == run_id, commands.c.status == status))
                    .values(status="rejected", reason=why, resolved_at=now)
                )

    # -- nodes ------------------------------------------------------------------------------
    @staticmethod
    def _node(row: Row[Any]) -> NodeRecord:
        m = row._mapping
        return NodeRecord(
            run_id=m["run_id"],
            id=m["id"],
            parent=m["parent"],
            start_step=m["start_step"],
            end_step=m["end_step"],
            change_kind=m["change_kind"],
            values=m["values"],
            diff=m["diff"],
            created_by=m["created_by"],
            created_at=m["created_at"],
            info=dict(m["info"] or {}),
        )

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
        with self._tx(write=True, run_id=run_id) as conn:
            self._lock_run(conn, run_id)
            highest = conn.execute(
                select(func.max(nodes.c.id)).where(nodes.c.run_id == run_id)
            ).scalar()
            node_id = (highest or 0) + 1
            conn.execute(
                insert(nodes).values(
                    run_id=run_id,
                    id=node_id,
                    parent=parent,
                    start_step=start_step,
                    end_step=None,
                    change_kind=change_kind,
                    values=_json.jsonable(values),
                    diff=_json.jsonable(diff),
                    created_by=created_by,
                    created_at=time.time(),
                    info=_json.jsonable(info or {}),
                )
            )
            row = conn.execute(
                select(nodes).where(and_(nodes.c.run_id == run_id, nodes.c.id == node_id))
            ).one()
        return self._node(row)

    def update_node_info(self, run_id: str, node: int, info: dict[str, Any]) -> NodeRecord:
        where = and_(nodes.c.run_id == run_id, nodes.c.id == node)
        with self._tx(write=True, run_id=run_id) as conn:
            self._lock_run(conn, run_id)
            current = conn.execute(select(nodes.c.info).where(where)).one_or_none()
            if current is None:
                raise NodeNotFound(f"run {run_id} has no node n{node}")
            merged = {**(current[0] or {}), **_json.jsonable(info)}
            conn.execute(update(nodes).where(where).values(info=merged))
            row = conn.execute(select(nodes).where(where)).one()
        return self._node(row)

    def add_node_values(self, run_id: str, node: int, values: dict[str, Any]) -> NodeRecord:
        where = and_(nodes.c.run_id == run_id, nodes.c.id == node)
        with self._tx(write=True, run_id=run_id) as conn:
            self._lock_run(conn, run_id)
            current = conn.execute(select(nodes.c["values"]).where(where)).one_or_none()
            if current is None:
                raise NodeNotFound(f"run {run_id} has no node n{node}")
            recorded = current[0] or {}
            missing = {k: v for k, v in _json.jsonable(values).items() if k not in recorded}
            if missing:
                conn.execute(update(nodes).where(where).values(values={**recorded, **missing}))
            row = conn.execute(select(nodes).where(where)).one()
        return self._node(row)

    def end_node(self, run_id: str, node: int, end_step: int) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                update(nodes)
                .where(
                    and_(nodes.c.run_id == run_id, nodes.c.id == node, nodes.c.end_step.is_(None))
                )
                .values(end_step=end_step)
            )

    def list_nodes(self, run_id: str) -> list[NodeRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(select(nodes).where(nodes.c.run_id == run_id).order_by(nodes.c.id))
            return [self._node(row) for row in rows]

    # -- metrics ----------------------------------------------------------------------------
    def append_metrics(
        self,
        run_id: str,
        chunks: Iterable[MetricChunk],
        *,
        step: int | None = None,
        heartbeat_at: float | None = None,
    ) -> None:
        rows: list[dict[str, Any]] = [
            {
                "run_id": run_id,
                "node": chunk.node,
                "key": chunk.key,
                "first_step": int(chunk.steps.min()),
                "last_step": int(chunk.steps.max()),
                "count": len(chunk.steps),
                "nonfinite": int(np.count_nonzero(~np.isfinite(chunk.values))),
                "steps": _steps_blob(chunk.steps),
                "values": _blob(chunk.values, "<f8"),
                "times": _blob(chunk.times, "<f8"),
            }
            for chunk in chunks
            if len(chunk.steps)
        ]
        progress: dict[str, Any] = {}
        if step is not None:
            progress["step"] = step
        if heartbeat_at is not None:
            progress["heartbeat_at"] = heartbeat_at
        if not rows and not progress:
            return
        with self._tx(write=True, run_id=run_id, appending=True) as conn:
            if rows:
                conn.execute(insert(metric_chunks), rows)
            if progress:
                conn.execute(update(runs).where(runs.c.id == run_id).values(**progress))
        if self._appender is not self._writer:  # left in SQLite's log for maintain()
            size = sum(len(r["steps"]) + len(r["values"]) + len(r["times"]) for r in rows)
            with self._unfolded_lock:
                self._unfolded += size + 512 * (len(rows) + 1)  # blobs, rows, the run's row

    def read_metric(
        self,
        run_id: str,
        key: str,
        *,
        nodes: Sequence[int] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> MetricSeries:
        c = metric_chunks.c
        query = (
            select(c.node, c.first_step, c.count, c.steps, c["values"], c.times)
            .where(and_(c.run_id == run_id, c.key == key))
            .order_by(c.node, c.first_step, c.id)
        )
        if nodes is not None:
            query = query.where(c.node.in_(list(nodes)))
        if start is not None:
            query = query.where(c.last_step >= start)
        if end is not None:
            query = query.where(c.first_step <= end)
        node_parts, step_parts, value_parts, time_parts = [], [], [], []
        with self._tx(write=False) as conn:
            for node, first_step, count, steps_b, values_b, times_b in conn.execute(query):
                steps = _steps(steps_b, first_step, count)
                node_parts.append(np.full(len(steps), node, dtype=np.int64))
                step_parts.append(steps)
                value_parts.append(np.frombuffer(values_b, dtype="<f8"))
                time_parts.append(np.frombuffer(times_b, dtype="<f8"))
        if not step_parts:
            empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float64)
            return MetricSeries(key, empty_i, empty_f, empty_f.copy(), empty_i.copy())
        node_arr = np.concatenate(node_parts)
        step_arr = np.concatenate(step_parts).astype(np.int64)
        value_arr = np.concatenate(value_parts).astype(np.float64)
        time_arr = np.concatenate(time_parts).astype(np.float64)
        order = np.lexsort((step_arr, node_arr))
        mask = np.ones(len(step_arr), dtype=bool)
        if start is not None:
            mask &= step_arr >= start
        if end is not None:
            mask &= step_arr <= end
        keep = order[mask[order]]
        return MetricSeries(
            key,
            steps=_readonly(step_arr[keep]),
            values=_readonly(value_arr[keep]),
            times=_readonly(time_arr[keep]),
            nodes=_readonly(node_arr[keep]),
        )

    ITER_PAGE = 32
    """Chunk rows per read transaction of :meth:`iter_metric_chunks` (a chunk is one flush of
    one key: up to tens of thousands of points)."""

    def iter_metric_chunks(
        self,
        run_id: str,
        *,
        keys: Sequence[str] | None = None,
        nodes: Sequence[int] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[MetricChunk]:
        # Keyset pagination in the order of ix_metric_chunks_run_key (run_id, key, first_step;
        # id breaks ties): each page is one short read transaction and an index range scan.
        c = metric_chunks.c
        base = select(
            c.id, c.node, c.key, c.first_step, c.count, c.steps, c["values"], c.times
        ).where(c.run_id == run_id)
        if keys is not None:
            base = base.where(c.key.in_(sorted(set(keys))))
        if nodes is not None:
            base = base.where(c.node.in_(list(nodes)))
        if start is not None:
            base = base.where(c.last_step >= start)
        if end is not None:
            base = base.where(c.first_step <= end)
        base = base.order_by(c.key, c.first_step, c.id).limit(self.ITER_PAGE)
        after: tuple[str, int, int] | None = None
        while True:
            query = base
            if after is not None:
                query = query.where(tuple_(c.key, c.first_step, c.id) > tuple_(*after))
            with self._tx(write=False) as conn:
                rows = conn.execute(query).all()
            for chunk_id, node, key, first_step, count, steps_b, values_b, times_b in rows:
                after = (key, first_step, chunk_id)
                steps = _steps(steps_b, first_step, count)
                values = np.frombuffer(values_b, dtype="<f8").astype(np.float64)
                times = np.frombuffer(times_b, dtype="<f8").astype(np.float64)
                keep = np.argsort(steps, kind="stable")
                if start is not None:
                    keep = keep[steps[keep] >= start]
                if end is not None:
                    keep = keep[steps[keep] <= end]
                if len(keep):
                    yield MetricChunk(
                        node,
                        key,
                        _readonly(steps[keep]),
                        _readonly(values[keep]),
                        _readonly(times[keep]),
                    )
            if len(rows) < self.ITER_PAGE:
                return

    def metric_keys(self, run_id: str) -> list[str]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(metric_chunks.c.key)
                .where(metric_chunks.c.run_id == run_id)
                .distinct()
                .order_by(metric_chunks.c.key)
            )
            return [row[0] for row in rows]

    def last_metrics(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, float]]]:
        if not run_ids:
            return {}
        c = metric_chunks.c
        latest = (
            select(func.max(c.id).label("id"))
            .where(c.run_id.in_(list(run_ids)))
            .group_by(c.run_id, c.key)
            .subquery()
        )
        query = select(c.run_id, c.key, c.first_step, c.count, c.steps, c["values"]).join(
            latest, c.id == latest.c.id
        )
        out: dict[str, dict[str, tuple[int, float]]] = {run_id: {} for run_id in run_ids}
        with self._tx(write=False) as conn:
            for run_id, key, first_step, count, steps_b, values_b in conn.execute(query):
                steps = _steps(steps_b, first_step, count)
                values = np.frombuffer(values_b, dtype="<f8")
                out[run_id][key] = (int(steps[-1]), float(values[-1]))
        return out

    # -- commands ---------------------------------------------------------------------------
    @staticmethod
    def _command(row: Row[Any]) -> CommandRecord:
        m = row._mapping
        return CommandRecord(
            id=m["id"],
            run_id=m["run_id"],
            kind=m["kind"],
            payload=m["payload"],
            status=m["status"],
            reason=m["reason"],
            source=m["source"],
            user=m["user"],
            created_at=m["created_at"],
            resolved_at=m["resolved_at"],
            applied_step=m["applied_step"],
            node=m["node"],
            result=m["result"],
        )

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
        if status not in ("pending", "rejected"):
            raise InvalidArgument(f"a command is recorded pending or rejected, not {status!r}")
        now = time.time()
        with self._tx(write=True, run_id=run_id) as conn:
            if status == "pending":  # the run's status, read under a share lock: an ending
                # update_run holds the row until its queued commands are rejected, then we see it
                row = conn.execute(
                    select(runs.c.status).where(runs.c.id == run_id).with_for_update(read=True)
                ).first()
                if row is not None and row.status not in LIVE_STATUSES:
                    status = "rejected"
                    reason = f"the run is {row.status}; commands need a running or paused run"
            result = conn.execute(
                insert(commands).values(
                    run_id=run_id,
                    kind=kind,
                    payload=_json.jsonable(payload),
                    status=status,
                    reason=reason if status == "rejected" else None,
                    source=source,
                    user=user,
                    created_at=now,
                    resolved_at=now if status == "rejected" else None,
                    applied_step=None,
                    node=None,
                    result={},
                )
            )
            command_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            row = conn.execute(select(commands).where(commands.c.id == command_id)).one()
        return self._command(row)

    def pending_commands(self, run_id: str, *, after_id: int = 0) -> list[CommandRecord]:
        c = commands.c
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(commands)
                .where(and_(c.run_id == run_id, c.status == "pending", c.id > after_id))
                .order_by(c.id)
            )
            return [self._command(row) for row in rows]

    def claim_command(self, command_id: int) -> CommandRecord | None:
        with self._tx(write=True) as conn:
            claimed = conn.execute(
                update(commands)
                .where(and_(commands.c.id == command_id, commands.c.status == "pending"))
                .values(status="applying")
            )
            row = conn.execute(select(commands).where(commands.c.id == command_id)).first()
        if row is None:
            raise InvalidArgument(f"no command with id {command_id}")
        return self._command(row) if claimed.rowcount == 1 else None

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
        if status not in ("applied", "rejected"):
            raise InvalidArgument(f"a command resolves to applied or rejected, not {status!r}")
        with self._tx(write=True) as conn:
            conn.execute(
                update(commands)
                .where(
                    and_(
                        commands.c.id == command_id,
                        commands.c.status.in_(("pending", "applying")),
                    )
                )
                .values(
                    status=status,
                    reason=reason,
                    applied_step=applied_step,
                    node=node,
                    result=_json.jsonable(result or {}),
                    resolved_at=time.time(),
                )
            )
            row = conn.execute(select(commands).where(commands.c.id == command_id)).first()
        if row is None:
            raise InvalidArgument(f"no command with id {command_id}")
        return self._command(row)

    def get_command(self, command_id: int) -> CommandRecord:
        if not _ID_MIN <= command_id <= _ID_MAX:  # beyond the id column: no such command
            raise InvalidArgument(f"no command with id {command_id}")
        with self._tx(write=False) as conn:
            row = conn.execute(select(commands).where(commands.c.id == command_id)).first()
        if row is None:
            raise InvalidArgument(f"no command with id {command_id}")
        return self._command(row)

    def list_commands(self, run_id: str) -> list[CommandRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(commands).where(commands.c.run_id == run_id).order_by(commands.c.id)
            )
            return [self._command(row) for row in rows]

    # -- checkpoints ------------------------------------------------------------------------
    @staticmethod
    def _checkpoint(row: Row[Any]) -> CheckpointRecord:
        m = row._mapping
        return CheckpointRecord(
            run_id=m["run_id"],
            id=m["id"],
            node=m["node"],
            step=m["step"],
            tag=m["tag"],
            reason=m["reason"],
            manifest=m["manifest"],
            nbytes=m["nbytes"],
            created_at=m["created_at"],
        )

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
        with self._tx(write=True, run_id=run_id) as conn:
            self._lock_run(conn, run_id)
            highest = conn.execute(
                select(func.max(checkpoints.c.id)).where(checkpoints.c.run_id == run_id)
            ).scalar()
            checkpoint_id = (highest or 0) + 1
            conn.execute(
                insert(checkpoints).values(
                    run_id=run_id,
                    id=checkpoint_id,
                    node=node,
                    step=step,
                    tag=tag,
                    reason=reason,
                    manifest=manifest,
                    nbytes=nbytes,
                    created_at=time.time(),
                )
            )
            row = conn.execute(
                select(checkpoints).where(
                    and_(checkpoints.c.run_id == run_id, checkpoints.c.id == checkpoint_id)
                )
            ).one()
        return self._checkpoint(row)

    def list_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(checkpoints).where(checkpoints.c.run_id == run_id).order_by(checkpoints.c.id)
            )
            return [self._checkpoint(row) for row in rows]

    def delete_checkpoints(self, run_id: str, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._tx(write=True) as conn:
            conn.execute(
                sql_delete(checkpoints).where(
                    and_(checkpoints.c.run_id == run_id, checkpoints.c.id.in_(list(ids)))
                )
            )

    def all_manifests(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            return [row[0] for row in conn.execute(select(checkpoints.c.manifest))]

    # -- events -----------------------------------------------------------------------------
    @staticmethod
    def _event(row: Row[Any]) -> EventRecord:
        m = row._mapping
        return EventRecord(
            id=m["id"],
            run_id=m["run_id"],
            kind=m["kind"],
            node=m["node"],
            step=m["step"],
            payload=m["payload"],
            created_at=m["created_at"],
        )

    def add_event(
        self,
        run_id: str,
        kind: str,
        payload: dict[str, Any],
        *,
        node: int | None = None,
        step: int | None = None,
    ) -> EventRecord:
        with self._tx(write=True, run_id=run_id) as conn:
            result = conn.execute(
                insert(events).values(
                    run_id=run_id,
                    kind=kind,
                    node=node,
                    step=step,
                    payload=_json.jsonable(payload),
                    created_at=time.time(),
                )
            )
            event_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            row = conn.execute(select(events).where(events.c.id == event_id)).one()
        return self._event(row)

    def list_events(self, run_id: str, *, after_id: int = 0) -> list[EventRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(events)
                .where(and_(events.c.run_id == run_id, events.c.id > after_id))
                .order_by(events.c.id)
            )
            return [self._event(row) for row in rows]

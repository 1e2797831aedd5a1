"""The command poller asks the store only when something was committed since it last asked."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

from sqlalchemy import event

import retune
from retune.control import connect
from retune.store import open_store
from retune.store._sql import SqlStore
from tests._postgres import fresh_postgres


def test_the_change_token_moves_exactly_when_another_connection_commits(store_url: str) -> None:
    store = open_store(store_url)
    run = store.create_run("tok", config={}, meta={}, tunables=[])
    first = store.change_token()
    assert first is not None and store.change_token() == first  # reads commit nothing
    store.list_runs()
    assert store.change_token() == first
    store.update_run(run.id, step=3)  # this store's own pool is another connection
    second = store.change_token()
    assert second != first
    code = (
        "import sys; from retune.store import open_store;"
        "s = open_store(sys.argv[1]); s.update_run(sys.argv[2], step=4); s.close()"
    )
    subprocess.run([sys.executable, "-c", code, store_url, run.id], check=True)
    assert store.change_token() != second  # and so does another process
    store.close()


def test_a_memory_store_says_it_cannot_tell() -> None:
    memory = open_store("sqlite://")
    assert memory.change_token() is None
    memory.close()


def test_postgres_says_it_cannot_tell_so_the_poller_always_queries() -> None:
    store = open_store(fresh_postgres())
    try:
        assert store.change_token() is None
    finally:
        store.close()


def test_an_idle_run_does_not_query_its_commands_on_every_tick(store_url: str) -> None:
    """Polling 20 times a second through SQLAlchemy cost ~2% of a core of an idle trainer
    (what an integration's per-step overhead measured); a tick that finds the store unchanged
    must not query. A command committed later is still found and applied."""
    run = retune.init("idle", store=store_url, poll_interval=0.005, flush_interval=3600)
    knob = run.tunable("clip", 1.0, bounds=(0, None))
    store = run.store
    assert isinstance(store, SqlStore)
    queries: list[str] = []
    ticks = threading.Semaphore(0)
    real_poll = run._applier.poll

    def counted_poll(session: Any) -> None:
        real_poll(session)
        ticks.release()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM commands" in statement:
            queries.append(statement)

    run._applier.poll = counted_poll  # type: ignore[method-assign,assignment]
    event.listen(store._reader, "before_cursor_execute", on_execute)
    event.listen(store._writer, "before_cursor_execute", on_execute)
    try:
        for _ in range(60):  # sixty poller ticks with nothing committed by anyone
            assert ticks.acquire(timeout=30)
        assert len(queries) <= 2, f"{len(queries)} queries of the commands table in 60 idle ticks"
        with connect(run.id, store=store_url) as controller:
            command = controller.set(clip=2.0)
            deadline = time.monotonic() + 30
            while knob.value != 2.0 and time.monotonic() < deadline:
                run.step(loss=1.0)
            assert knob.value == 2.0
            assert controller.wait(command.id).status == "applied"
    finally:
        run.finish()

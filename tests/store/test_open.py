"""Opening a store: never creating one by reading, read-only media, secrets, dead servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retune.errors import RetuneError, StoreNotFound, StoreUnavailable, redact
from retune.store import MetricChunk, open_store


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_reading_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    before = _tree(tmp_path)
    for url in (
        str(tmp_path / "typo" / "deeper" / "retune.db"),
        f"sqlite:///{tmp_path / 'typo2' / 'retune.db'}",
        str(tmp_path / "retune.db"),
    ):
        with pytest.raises(StoreNotFound, match="no store at") as caught:
            open_store(url, create=False)
        assert "nothing was created" in str(caught.value)
        assert isinstance(caught.value, StoreUnavailable)  # callers catching that keep working
    assert _tree(tmp_path) == before


def test_reading_an_empty_file_leaves_it_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StoreNotFound, match="not a Retune store"):
        open_store(str(path), create=False)
    assert path.stat().st_size == 0
    assert _tree(tmp_path) == ["empty.db"]


def test_reading_an_existing_store_works_without_create(tmp_path: Path) -> None:
    path = tmp_path / "s" / "retune.db"
    with open_store(str(path)) as store:  # training creates it
        run = store.create_run("r", config={}, meta={}, tunables=[])
    with open_store(str(path), create=False) as store:
        assert store.get_run("r").id == run.id


def _fill(path: Path) -> str:
    with open_store(str(path)) as store:
        run = store.create_run("ro", config={}, meta={}, tunables=[])
        store.create_node(
            run.id,
            parent=None,
            start_step=0,
            change_kind="start",
            values={},
            diff={},
            created_by=None,
        )
        steps = np.arange(1, 11, dtype=np.int64)
        chunk = MetricChunk(1, "loss", steps, steps * 0.5, steps.astype(np.float64))
        store.append_metrics(run.id, [chunk], step=10)
    return run.id


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder whose store cannot be written: a read-only bind mount as root (root ignores
    permission bits, as on a read-only NFS or container mount), else permission bits."""
    source = tmp_path / "source"
    source.mkdir()
    if os.geteuid() != 0:
        yield source
        for path in [source, *source.iterdir()]:
            path.chmod(0o755)
        return
    mount = shutil.which("mount")
    view = tmp_path / "view"
    view.mkdir()
    if mount is None:
        pytest.skip("read-only case needs `mount` when tests run as root")
    yield source  # filled by the test, then mounted read-only by _seal
    subprocess.run(["umount", str(view)], check=False, capture_output=True)


def _seal(source: Path) -> Path:
    """Make ``source`` read-only; returns the path to read the store through."""
    if os.geteuid() != 0:
        for path in source.iterdir():
            path.chmod(0o444)
        source.chmod(0o555)
        return source
    view = source.parent / "view"
    done = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(source), str(view)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
    return view


@pytest.mark.parametrize("create", [False, True])
def test_a_store_on_read_only_media_opens_for_reading(read_only_folder: Path, create: bool) -> None:
    run_id = _fill(read_only_folder / "retune.db")
    view = _seal(read_only_folder)
    assert not os.access(view, os.W_OK)
    before = _tree(view)
    with open_store(str(view / "retune.db"), create=create) as store:
        assert store.read_only  # type: ignore[attr-defined]
        assert [r.id for r in store.list_runs()] == [run_id]
        assert store.get_run("ro").step == 10
        assert store.read_metric(run_id, "loss").values.tolist() == [i * 0.5 for i in range(1, 11)]
        assert [n.id for n in store.list_nodes(run_id)] == [1]
        with pytest.raises(StoreUnavailable, match="read-only"):
            store.update_run(run_id, status="finished")
    assert _tree(view) == before


def test_no_error_shows_a_password(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql+psycopg://mia:s3cr%3Dt@127.0.0.1:{port}/retune"
    with pytest.raises(StoreUnavailable) as caught:
        open_store(url)
    for text in (str(caught.value), repr(caught.value), caught.value.to_dict()["message"]):
        assert "s3cr" not in text
    assert "mia:***@127.0.0.1" in str(caught.value)
    # any RetuneError built from a message with a URL or a libpq string is redacted
    error = RetuneError("cannot use postgresql://u:pw@db/x or 'host=db password=pw2 user=u'")
    assert "pw" not in str(error).replace("password=", "")
    assert redact("sqlite:///home/mia/retune.db") == "sqlite:///home/mia/retune.db"
    assert redact("http://127.0.0.1:8765/runs/abc") == "http://127.0.0.1:8765/runs/abc"


def test_a_server_that_never_answers_times_out_with_a_clear_message() -> None:
    """A PostgreSQL address that accepts the connection and never answers: the open fails
    after the connect timeout instead of hanging for minutes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = (
        "from retune.store import open_store\n"
        "from retune.errors import StoreUnavailable\n"
        "try:\n"
        f"    open_store('postgresql+psycopg://mia:pw@127.0.0.1:{port}/retune')\n"
        "except StoreUnavailable as e:\n"
        "    print(e)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
        )
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    assert done.returncode == 0, done.stderr
    assert "connect timeout" in done.stdout and ":pw@" not in done.stdout


def test_a_postgres_database_without_a_store_is_not_created_by_reading() -> None:
    from sqlalchemy import create_engine, inspect, text

    from tests._postgres import postgres_url

    url = postgres_url()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    with pytest.raises(StoreNotFound, match="holds no Retune store"):
        open_store(url, create=False)
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == []
    engine.dispose()


def test_a_run_is_never_left_without_its_root_node(tmp_path: Path) -> None:
    """The disk fills between the run row and its root node: nothing of the run remains."""
    import sqlite3

    import retune
    from retune.errors import StoreError

    path = tmp_path / "retune.db"
    open_store(str(path)).close()
    with sqlite3.connect(path) as db:  # the node insert fails as on a full disk
        db.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON nodes "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    with pytest.raises(StoreError, match="disk is full"):
        retune.init("starved", store=str(path))
    with open_store(str(path), create=False) as store:
        assert store.list_runs() == []

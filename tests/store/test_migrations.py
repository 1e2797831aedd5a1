"""Schema versions: migrations agree with the models; other versions give a clear error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from retune.errors import SchemaMismatch
from retune.store import open_store, upgrade_store
from retune.store._migrate import head_revision
from retune.store._schema import metadata


def test_migrations_produce_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_store(url).close()  # a new store is created by running every migration
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_a_new_store_is_stamped_at_head(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    open_store(str(path)).close()
    with sqlite3.connect(path) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == head_revision()


def _stamp(path: Path, revision: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def test_a_newer_schema_says_to_upgrade_retune(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    open_store(str(path)).close()
    _stamp(path, "v99.0.0")
    with pytest.raises(SchemaMismatch, match="newer Retune"):
        open_store(str(path))


def test_tables_without_a_version_are_not_a_retune_store(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE something (x INTEGER)")
    with pytest.raises(SchemaMismatch, match="not a Retune store"):
        open_store(str(path))


def test_db_upgrade_is_idempotent_at_head(tmp_path: Path) -> None:
    url = str(tmp_path / "u.db")
    before, after = upgrade_store(url)
    assert before is None and after == head_revision()
    assert upgrade_store(url) == (head_revision(), head_revision())


FIXTURE = Path(__file__).parent / "fixtures" / "retune-v0.1.0.db"


def test_a_store_written_by_0_1_0_asks_for_an_upgrade_then_works(tmp_path: Path) -> None:
    import shutil

    from retune.cli import main

    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    with pytest.raises(SchemaMismatch, match=r"older schema \(v0\.1\.0.*run `retune db upgrade"):
        open_store(str(path))
    assert main(["db", "upgrade", "--store", str(path)]) == 0
    store = open_store(str(path))
    run = store.get_run("old-run")
    assert run.config == {"made_by": "retune 0.1.0"} and run.status == "finished"
    assert store.read_metric(run.id, "loss").steps.tolist() == list(range(1, 101))
    assert [c.tag for c in store.list_checkpoints(run.id)] == ["old"]
    # v0.2.0's columns come with their defaults on old rows, and take new values
    assert run.tags == [] and run.note == ""
    assert all(node.info == {} for node in store.list_nodes(run.id))
    assert store.set_run_tags(run.id, ["old"]).tags == ["old"]
    store.close()


def test_downgrading_below_0_3_0_writes_the_implied_steps_out(tmp_path: Path) -> None:
    """Schema v0.3.0 stores no steps for consecutive ones; a downgrade writes them back,
    where an older Retune reads them (``np.frombuffer`` of the blob, as it did)."""
    import numpy as np
    from alembic import command
    from sqlalchemy import text

    from retune.store import MetricChunk
    from retune.store._migrate import _config, upgrade

    url = f"sqlite:///{tmp_path / 'd.db'}"
    with open_store(url) as store:
        run = store.create_run("r", config={}, meta={}, tunables=[])
        store.create_node(run.id, parent=None, start_step=0, change_kind="start", values={},
                          diff={}, created_by=None)  # fmt: skip
        for key, steps in (("consecutive", [4, 5, 6, 7]), ("gapped", [1, 3])):
            array = np.asarray(steps, dtype=np.int64)
            store.append_metrics(run.id, [MetricChunk(1, key, array, array * 0.5, array * 1.0)])
    engine = create_engine(url)
    with engine.begin() as conn:
        command.downgrade(_config(conn), "v0.2.0")
        stored: dict[str, bytes] = dict(
            conn.execute(text("SELECT key, steps FROM metric_chunks")).all()
        )
    assert np.frombuffer(stored["consecutive"], "<i8").tolist() == [4, 5, 6, 7]
    assert np.frombuffer(stored["gapped"], "<i8").tolist() == [1, 3]
    with engine.begin() as conn:
        upgrade(conn)
    engine.dispose()
    with open_store(url) as store:
        assert store.read_metric(run.id, "consecutive").steps.tolist() == [4, 5, 6, 7]
        assert store.read_metric(run.id, "gapped").values.tolist() == [0.5, 1.5]

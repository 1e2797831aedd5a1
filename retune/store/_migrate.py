"""Schema versions: Alembic migrations shipped in the package, checked when a store opens."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from retune.errors import SchemaMismatch

__all__ = ["check_schema", "head_revision", "upgrade"]

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The schema revision this version of Retune writes."""
    head = _scripts().get_current_head()
    assert head is not None, "retune ships at least one migration"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database, or ``None`` when it has none."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Bring the schema to ``revision`` inside the caller's transaction."""
    command.upgrade(_config(connection), revision)


def is_empty(connection: Connection) -> bool:
    """True when the database holds no tables at all (a brand-new store)."""
    return not inspect(connection).get_table_names()


def check_schema(connection: Connection, url: str) -> None:
    """Raise :class:`SchemaMismatch` unless the database is at this Retune's head revision."""
    current = current_revision(connection)
    head = head_revision()
    if current == head:
        return
    known = {rev.revision for rev in _scripts().walk_revisions()}
    if current is None:
        raise SchemaMismatch(
            f"{url} holds tables but no Retune schema version; it is not a Retune store "
            "(point --store / RETUNE_STORE at another database)"
        )
    if current in known:
        raise SchemaMismatch(
            f"the store at {url} has an older schema ({current}, this Retune needs {head}); "
            f"run `retune db upgrade --store {url}`"
        )
    raise SchemaMismatch(
        f"the store at {url} was written by a newer Retune (schema {current}); "
        "upgrade Retune with `pip install -U retune`"
    )

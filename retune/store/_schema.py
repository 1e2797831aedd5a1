"""The database tables, as SQLAlchemy Core metadata.

Portable SQL only: the same tables serve SQLite and PostgreSQL. Migrations under
``migrations/versions`` must produce exactly this metadata (a test compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("step", BigInteger, nullable=False),
    Column("config", JSON, nullable=False),
    Column("meta", JSON, nullable=False),
    Column("tunables", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("tags", JSON, nullable=False, server_default="[]"),  # since v0.2.0
    Column("note", Text, nullable=False, server_default=""),  # since v0.2.0
    Index("ix_runs_name_created", "name", "created_at"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("parent", Integer, nullable=True),
    Column("start_step", BigInteger, nullable=False),
    Column("end_step", BigInteger, nullable=True),
    Column("change_kind", String(16), nullable=False),
    Column("values", JSON, nullable=False),
    Column("diff", JSON, nullable=False),
    Column("created_by", String(255), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("info", JSON, nullable=False, server_default="{}"),  # since v0.2.0
)

metric_chunks = Table(
    "metric_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("node", Integer, nullable=False),
    Column("key", String(255), nullable=False),
    Column("first_step", BigInteger, nullable=False),
    Column("last_step", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("nonfinite", Integer, nullable=False),
    Column("steps", LargeBinary, nullable=False),
    Column("values", LargeBinary, nullable=False),
    Column("times", LargeBinary, nullable=False),
    ForeignKeyConstraint(["run_id", "node"], ["nodes.run_id", "nodes.id"], ondelete="CASCADE"),
    Index("ix_metric_chunks_run_key", "run_id", "key", "first_step"),
)

commands = Table(
    "commands",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("source", String(32), nullable=False),
    Column("user", String(255), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("resolved_at", Float, nullable=True),
    Column("applied_step", BigInteger, nullable=True),
    Column("node", Integer, nullable=True),
    Column("result", JSON, nullable=False),
    Index("ix_commands_run_status", "run_id", "status", "id"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("node", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("tag", String(255), nullable=True),
    Column("reason", String(32), nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("nbytes", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(["run_id", "node"], ["nodes.run_id", "nodes.id"], ondelete="CASCADE"),
    Index("ix_checkpoints_run_node_step", "run_id", "node", "step"),  # since v0.1.1
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("node", Integer, nullable=True),
    Column("step", BigInteger, nullable=True),
    Column("payload", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_events_run", "run_id", "id"),
)

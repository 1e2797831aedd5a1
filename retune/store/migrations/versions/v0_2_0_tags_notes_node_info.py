"""retune 0.2.0: tags and a note per run; free-form info per node

Tags and notes are edited by people (``retune tag``, ``retune note``, the dashboard); a node's
``info`` holds what the process that made the node knows about it beyond its values and diff
(an exploration's score, the guard's reason and skipped batches).

Revision ID: v0.2.0
Revises: v0.1.1
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "v0.2.0"
down_revision = "v0.1.1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("info", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("info")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("note")
        batch_op.drop_column("tags")

"""retune 0.3.0: consecutive steps of a metric chunk are implied, not stored

A chunk of one metric whose steps are ``first_step, first_step + 1, ..., last_step`` (one
point per step: nearly every chunk) stores an empty ``steps`` blob; readers rebuild the
steps from ``first_step`` and ``count``. That is a third of a chunk's bytes, and of the time
a flush spends inserting and syncing them. No table changes: the revision exists so that an
older Retune, which would read an empty blob as "no points", refuses a store holding such
chunks (it says the store was written by a newer Retune). Upgrading leaves old chunks as they
are (they still read); downgrading writes the implied steps out again.

Revision ID: v0.3.0
Revises: v0.2.0
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "v0.3.0"
down_revision = "v0.2.0"
branch_labels = None
depends_on = None

_chunks = sa.table(
    "metric_chunks",
    sa.column("id", sa.Integer),
    sa.column("first_step", sa.BigInteger),
    sa.column("count", sa.Integer),
    sa.column("steps", sa.LargeBinary),
)


def upgrade() -> None:
    """Nothing to rewrite: chunks with every step stored read as before."""


def downgrade() -> None:
    connection = op.get_bind()
    implied = connection.execute(
        sa.select(_chunks.c.id, _chunks.c.first_step, _chunks.c.count).where(
            sa.func.length(_chunks.c.steps) == 0, _chunks.c.count > 0
        )
    ).all()
    for chunk_id, first_step, count in implied:
        steps = np.arange(first_step, first_step + count, dtype="<i8").tobytes()
        connection.execute(sa.update(_chunks).where(_chunks.c.id == chunk_id).values(steps=steps))

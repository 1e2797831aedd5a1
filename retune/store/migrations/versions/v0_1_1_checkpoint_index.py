"""retune 0.1.1: index checkpoints by (run, node, step) for ``n3@1200`` lookups

Revision ID: v0.1.1
Revises: v0.1.0
"""

from __future__ import annotations

from alembic import op

revision = "v0.1.1"
down_revision = "v0.1.0"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.create_index(
            "ix_checkpoints_run_node_step", ["run_id", "node", "step"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_checkpoints_run_node_step")

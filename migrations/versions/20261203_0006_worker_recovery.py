"""Worker recovery: per-job send tracking, environment retries, the run config recorded at first
start, and heartbeats for upload screening.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("sends", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("retry_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("env_retries", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("run_config", sa.JSON(), nullable=True))

    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("safety_worker", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("safety_heartbeat_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("safety_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("safety_attempts")
        batch_op.drop_column("safety_heartbeat_at")
        batch_op.drop_column("safety_worker")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("run_config")
        batch_op.drop_column("env_retries")
        batch_op.drop_column("retry_at")
        batch_op.drop_column("sends")
        batch_op.drop_column("sent_at")

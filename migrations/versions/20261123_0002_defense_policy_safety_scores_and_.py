"""Defense policy, aligned models, safety scores, the release gate and upload screening.

Server defaults let existing rows take the new NOT NULL columns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:02:54.094542
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("safety", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("deployable", sa.Boolean(), nullable=True))

    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("safety_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("safety_report", sa.JSON(), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="fine_tune")
        )
        batch_op.add_column(
            sa.Column("defense_params", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(sa.Column("served_model", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("safety", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("flagged_lines", sa.JSON(), nullable=True))

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="base")
        )
        batch_op.add_column(sa.Column("base_model", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("adapter_path", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("method", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("alignment_job_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("safety", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=False, server_default="{}"))

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("policy")

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("policy")
        batch_op.drop_column("safety")
        batch_op.drop_column("alignment_job_id")
        batch_op.drop_column("method")
        batch_op.drop_column("adapter_path")
        batch_op.drop_column("base_model")
        batch_op.drop_column("kind")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("flagged_lines")
        batch_op.drop_column("safety")
        batch_op.drop_column("served_model")
        batch_op.drop_column("defense_params")
        batch_op.drop_column("kind")

    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("safety_report")
        batch_op.drop_column("safety_status")

    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("deployable")
        batch_op.drop_column("safety")

"""Quotas, rate limits and fair scheduling: job running time and estimates, the tenants'
round-robin stamp, and the database's token buckets.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("estimated_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("running_s", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("wall_clock_limit_s", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_jobs_status_tenant", ["status", "tenant_id"])

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_claimed_at", sa.Float(), nullable=True))

    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("last_claimed_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_tenant")
        batch_op.drop_column("wall_clock_limit_s")
        batch_op.drop_column("running_s")
        batch_op.drop_column("estimated_tokens")

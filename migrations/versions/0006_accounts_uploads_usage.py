"""accounts, uploads, usage: roles, per-tenant limits, image captions, usage records

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # "owner" was the only role before; it becomes the tenant administrator.
    op.execute("UPDATE users SET role = 'tenant_admin' WHERE role = 'owner'")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_concepts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("requests_per_minute", sa.Integer(), nullable=True))
    with op.batch_alter_table("concept_images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("caption", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("caption_state", sa.String(length=20), server_default="pending",
                                      nullable=False))
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_records_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint("job_id", "kind", name=op.f("uq_usage_records_job_id_kind")),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_records_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_usage_records_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_records_created_at"))
        batch_op.drop_index(batch_op.f("ix_usage_records_tenant_id"))
    op.drop_table("usage_records")
    with op.batch_alter_table("concept_images", schema=None) as batch_op:
        batch_op.drop_column("caption_state")
        batch_op.drop_column("caption")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("requests_per_minute")
        batch_op.drop_column("max_concurrent_jobs")
        batch_op.drop_column("max_concepts")
    op.execute("UPDATE users SET role = 'owner' WHERE role = 'tenant_admin'")

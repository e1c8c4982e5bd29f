"""training features: retries, save-now / stop-and-keep controls, version lineage, training snapshots

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # retry_of_id / parent_version_id carry no foreign key: both rows always belong to the same
    # concept and go with it (ON DELETE CASCADE), and on SQLite adding a key would rebuild `jobs`
    # and `concept_versions`, which fires the ON DELETE actions of every table pointing at them.
    with op.batch_alter_table("jobs", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("retry_of_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("save_requests", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("keep_on_stop", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    with op.batch_alter_table("concept_versions", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("parent_version_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("source", sa.String(length=20), server_default="trained", nullable=False))
    op.create_table(
        "training_snapshots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("image_key", sa.String(length=500), nullable=True),
        sa.Column("tokens_prefix", sa.String(length=500), nullable=True),
        sa.Column("prompt", sa.String(length=200), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_training_snapshots_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_training_snapshots_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_snapshots")),
        sa.UniqueConstraint("job_id", "kind", "step", name=op.f("uq_training_snapshots_job_id_kind_step")),
    )
    with op.batch_alter_table("training_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_snapshots_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_snapshots_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_table("training_snapshots")
    with op.batch_alter_table("concept_versions", schema=None) as batch_op:
        batch_op.drop_column("source")
        batch_op.drop_column("parent_version_id")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("keep_on_stop")
        batch_op.drop_column("save_requests")
        batch_op.drop_column("retry_of_id")

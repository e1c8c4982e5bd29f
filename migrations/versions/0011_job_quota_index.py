"""jobs.batch_id and a partial index for the concurrency quota: every job creation counts the
tenant's unfinished train/render jobs outside batches, which read every job of the tenant and
probed renders once per job to leave batch items out

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 13:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As api.models.QUOTA_JOBS_PREDICATE at this revision (a migration does not import the models).
QUOTA_JOBS = "kind IN ('train', 'render') AND state IN ('queued', 'running') AND batch_id IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite adds a column with a key through a batch
        batch.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key("fk_jobs_batch_id_batches", "batches", ["batch_id"], ["id"], ondelete="CASCADE")
    # Batch items made before this revision: their render knows the batch.
    op.execute("UPDATE jobs SET batch_id = (SELECT renders.batch_id FROM renders WHERE renders.job_id = jobs.id) "
               "WHERE EXISTS (SELECT 1 FROM renders WHERE renders.job_id = jobs.id AND renders.batch_id IS NOT NULL)")
    op.create_index("ix_jobs_tenant_quota", "jobs", ["tenant_id"], postgresql_where=sa.text(QUOTA_JOBS),
                    sqlite_where=sa.text(QUOTA_JOBS))


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_quota", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_batch_id_batches", type_="foreignkey")
        batch.drop_column("batch_id")

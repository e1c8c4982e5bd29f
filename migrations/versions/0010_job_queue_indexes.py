"""indexes for what every status read and job creation counts: jobs by (queue, state, created_at,
id) and by (tenant_id, state), so the counts read the queued/running rows of one queue or tenant
instead of every job that queue or tenant ever ran

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 09:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_queue_state_created", "jobs", ["queue", "state", "created_at", "id"])
    op.create_index("ix_jobs_tenant_state", "jobs", ["tenant_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_state", table_name="jobs")
    op.drop_index("ix_jobs_queue_state_created", table_name="jobs")

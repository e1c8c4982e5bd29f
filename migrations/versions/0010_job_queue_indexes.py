"""index for what every status read counts: jobs by (queue, state, created_at, id), so the count
of queued jobs ahead reads those rows instead of every job the queue ever ran

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


def downgrade() -> None:
    op.drop_index("ix_jobs_queue_state_created", table_name="jobs")

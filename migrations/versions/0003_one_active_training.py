"""one unfinished training job per concept

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:21:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_TRAINING = "kind = 'train' AND state IN ('queued', 'running')"


def upgrade() -> None:
    op.create_index("uq_jobs_one_active_training", "jobs", ["concept_id"], unique=True,
                    postgresql_where=sa.text(ACTIVE_TRAINING), sqlite_where=sa.text(ACTIVE_TRAINING))


def downgrade() -> None:
    op.drop_index("uq_jobs_one_active_training", table_name="jobs")

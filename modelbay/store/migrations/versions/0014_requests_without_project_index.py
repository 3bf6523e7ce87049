"""requests: no index of project_id alone

- `ix_requests_project_id` is dropped: `ix_requests_project_created` (project_id, created_at, id),
  made by 0013, begins with the same column and serves every query it served. Each request
  written entered both; one index fewer is one page fewer written per request.

Revision ID: 0014
Revises: 0013
"""
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_requests_project_id", table_name="requests")


def downgrade() -> None:
    op.create_index("ix_requests_project_id", "requests", ["project_id"])

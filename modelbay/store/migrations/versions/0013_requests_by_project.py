"""requests: an index of each project's requests by created time and id

- `ix_requests_project_created` (project_id, created_at, id): the web console lists a project's
  requests newest first, a page at a time from the last (created_at, id) seen; this index serves
  that page by reading its rows alone, however many requests the project has.

Revision ID: 0013
Revises: 0012
"""
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_requests_project_created", "requests", ["project_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_requests_project_created", table_name="requests")

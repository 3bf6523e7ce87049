"""jobs on a deployment of their own: `jobs.ephemeral`

- `jobs.ephemeral` (JSON, null for a job on an existing deployment): the version whose code the
  job's own instances run, how many there are and their instance type, and the template as the
  client gave it. The instances start with the job and stop when its items have run.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("ephemeral", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("ephemeral")

"""runs: a partial index of each version's claimed runs

- `ix_runs_claimed` (version_id) holds the runs that are runnable, starting or running: a claim
  counts those of its version through it, a few entries, where through `ix_runs_status` it walked
  the claimed runs of every version and the entries of every run claimed since the last vacuum.

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# As `store.tables.RUNS_CLAIMED` says it now; a migration keeps its own copy.
RUNS_CLAIMED = "status IN ('runnable', 'starting', 'running')"


def upgrade() -> None:
    op.create_index("ix_runs_claimed", "runs", ["version_id"],
                    postgresql_where=sa.text(RUNS_CLAIMED), sqlite_where=sa.text(RUNS_CLAIMED))


def downgrade() -> None:
    op.drop_index("ix_runs_claimed", table_name="runs")

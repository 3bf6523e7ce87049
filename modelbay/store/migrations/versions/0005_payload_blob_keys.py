"""payload blob keys: large request inputs and results live in the blob store

Revision ID: 0005
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("requests", "pipeline_requests", "operator_requests")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("data_key", sa.String(length=200), nullable=True))
            batch_op.add_column(sa.Column("result_key", sa.String(length=200), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("result_key")
            batch_op.drop_column("data_key")

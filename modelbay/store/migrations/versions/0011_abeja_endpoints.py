"""endpoints: a deployment's stable names for its services (ABEJA's `default` endpoint)

- `endpoints`: one row per name (`alias`, unique in its deployment) pointing at one service of the
  deployment; deleted with the service or the deployment, so no endpoint points nowhere.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("deployment_id", sa.String(length=36), nullable=False),
        sa.Column("service_id", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deployment_id", "alias", name="uq_endpoints_deployment_alias"),
    )
    op.create_index("ix_endpoints_service_id", "endpoints", ["service_id"])


def downgrade() -> None:
    op.drop_index("ix_endpoints_service_id", table_name="endpoints")
    op.drop_table("endpoints")

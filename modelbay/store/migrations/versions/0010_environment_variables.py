"""environment variables: UbiOps-style variables of a project, a deployment or a version

- `environment_variables`: one row per variable, named uniquely within its scope (`scope_id`: the
  version's id, else the deployment's, else the project's); removed with what it belongs to.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "environment_variables",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("deployment_id", sa.String(length=36), nullable=True),
        sa.Column("version_id", sa.String(length=36), nullable=True),
        sa.Column("scope_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("secret", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope_id", "name"),
    )
    op.create_index("ix_environment_variables_project_id", "environment_variables", ["project_id"])
    op.create_index("ix_environment_variables_deployment_id", "environment_variables", ["deployment_id"])
    op.create_index("ix_environment_variables_version_id", "environment_variables", ["version_id"])


def downgrade() -> None:
    op.drop_index("ix_environment_variables_version_id", table_name="environment_variables")
    op.drop_index("ix_environment_variables_deployment_id", table_name="environment_variables")
    op.drop_index("ix_environment_variables_project_id", table_name="environment_variables")
    op.drop_table("environment_variables")

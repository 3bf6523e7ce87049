"""project public ids: a number and a handle instead of ABEJA's and Datature's ids

The organization id was the number as text; the Datature id was `proj_` before the handle. The
dialects derive those ids from the new columns, so every project keeps the ids it had.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DATATURE_PREFIX = "proj_"


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("number", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("handle", sa.String(length=32), nullable=True))
    op.execute(
        f"UPDATE projects SET number = CAST(organization_id AS BIGINT), "
        f"handle = SUBSTR(datature_project_id, {len(DATATURE_PREFIX) + 1})"
    )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.alter_column("number", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("handle", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint("uq_projects_number", ["number"])
        batch_op.create_unique_constraint("uq_projects_handle", ["handle"])
        batch_op.drop_column("organization_id")  # its unique constraint goes with it
        batch_op.drop_column("datature_project_id")


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("organization_id", sa.String(length=13), nullable=True))
        batch_op.add_column(sa.Column("datature_project_id", sa.String(length=40), nullable=True))
    op.execute(
        f"UPDATE projects SET organization_id = CAST(number AS VARCHAR(13)), "
        f"datature_project_id = '{DATATURE_PREFIX}' || handle"
    )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.alter_column("organization_id", existing_type=sa.String(length=13), nullable=False)
        batch_op.alter_column("datature_project_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.create_unique_constraint("uq_projects_organization_id", ["organization_id"])
        batch_op.create_unique_constraint("uq_projects_datature_project_id", ["datature_project_id"])
        batch_op.drop_column("number")
        batch_op.drop_column("handle")

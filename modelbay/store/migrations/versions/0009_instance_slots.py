"""instance slots: the instances every node runs, so a version's limits count across the cluster

- `instance_slots`: one row per instance a node runs (or is starting: `loaded_at` is set once it
  has loaded), by pool (a version's own, or a service's). A node takes a slot before it starts an instance, under a lock per pool, only
  while the pool's live slots are below its limit (`core.instance_slots`).
- `nodes.address`: where other nodes reach a node, to run a call on an instance it holds.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_slots",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("pool", sa.String(length=100), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_instance_slots_pool", "instance_slots", ["pool"])
    op.create_index("ix_instance_slots_node_id", "instance_slots", ["node_id"])
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("address", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("address")
    op.drop_index("ix_instance_slots_node_id", table_name="instance_slots")
    op.drop_index("ix_instance_slots_pool", table_name="instance_slots")
    op.drop_table("instance_slots")

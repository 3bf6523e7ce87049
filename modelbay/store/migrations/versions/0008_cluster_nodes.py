"""cluster nodes: servers sharing one database, the work each has claimed, and blobs every node reaches

- `nodes`: one row per server process, with its heartbeat; a node whose heartbeat lapsed is dead
  and a live node recovers its work (`core.nodes`).
- `owner` on every row a node claims before it runs it (requests, pipeline requests, runs, jobs,
  deliveries, revisions, services): finishing writes are fenced by it.
- `ix_requests_pending`: the queue order of a version's pending requests, so a claim reads a few
  rows whatever the backlog.
- `blobs` and `blob_chunks`: packages, datasets and large payloads kept in the database itself
  when several nodes share it (`store.blobs`).

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OWNED = ("requests", "pipeline_requests", "runs", "jobs", "deliveries", "revisions", "services")


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner", sa.String(length=36), nullable=True))
    pending = sa.text("status = 'pending'")
    op.create_index("ix_requests_pending", "requests", ["version_id", "priority", "created_at", "id"],
                    postgresql_where=pending, sqlite_where=pending)
    op.create_table(
        "blobs",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "blob_chunks",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["key"], ["blobs.key"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key", "seq"),
    )


def downgrade() -> None:
    op.drop_table("blob_chunks")
    op.drop_table("blobs")
    op.drop_index("ix_requests_pending", table_name="requests")
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
    op.drop_table("nodes")

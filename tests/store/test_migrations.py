"""Migrations that change stored rows, run on a database holding rows of the schema before them."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from modelbay.core.bus import Bus
from modelbay.core.errors import Conflict
from modelbay.core.projects import Caller, Projects
from modelbay.dialects.abeja import ids as abeja_ids
from modelbay.dialects.datature import ids as datature_ids
from modelbay.store.db import HEAD_REVISION, MIGRATIONS_DIR, Database
from modelbay.store.tables import ProjectRow

ORGANIZATION_ID = "4821093746512"
DATATURE_PROJECT_ID = "proj_" + "0123456789abcdef" * 2
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'test.db'}")
    yield database
    database.close()


def old_project(db: Database) -> None:
    """A project as the schema before 0006 stored it (the vendors' ids in its columns), and a deployment of it."""
    db.run_migrations(command.upgrade, "0005")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO projects (id, name, token_hash, organization_id, datature_project_id, "
                          "created_at) VALUES ('p', 'old', 'h', :org, :datature, :now)"),
                     {"org": ORGANIZATION_ID, "datature": DATATURE_PROJECT_ID, "now": NOW})
        conn.execute(text("INSERT INTO deployments (id, project_id, name, description, input_type, output_type, "
                          "input_fields, output_fields, labels, created_at, updated_at) "
                          "VALUES ('d', 'p', 'dep', '', 'plain', 'plain', '[]', '[]', '{}', :now, :now)"),
                     {"now": NOW})


def test_a_stored_project_keeps_its_abeja_and_datature_ids_through_0006(db: Database) -> None:
    old_project(db)
    db.migrate()

    with db.read() as session:
        project = session.scalar(select(ProjectRow))
    assert abeja_ids.organization_id(project.number) == ORGANIZATION_ID
    assert datature_ids.project_id(project.handle) == DATATURE_PROJECT_ID
    projects = Projects(db, "admin", Bus())
    admin = Caller(project_id=None)
    assert abeja_ids.find_organization(projects, admin, ORGANIZATION_ID).id == "p"
    assert datature_ids.find_project(projects, admin, DATATURE_PROJECT_ID).id == "p"
    with db.engine.connect() as conn:  # rebuilding the table dropped the old one: nothing cascaded from it
        assert conn.execute(text("SELECT project_id FROM deployments")).scalars().all() == ["p"]


def test_0006_keeps_the_public_ids_unique(db: Database) -> None:
    old_project(db)
    db.migrate()
    with pytest.raises(Conflict), db.write() as session:  # the unique index, as Database.write answers it
        session.add(ProjectRow(id="q", name="other", token_hash="h2", number=int(ORGANIZATION_ID), handle="x",
                               created_at=NOW))


def test_0006_downgrades_to_the_ids_stored_before(db: Database) -> None:
    old_project(db)
    db.migrate()
    db.run_migrations(command.downgrade, "0005")

    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, organization_id, datature_project_id FROM projects")).all()
        assert [tuple(row) for row in rows] == [("p", ORGANIZATION_ID, DATATURE_PROJECT_ID)]
        assert conn.execute(text("SELECT project_id FROM deployments")).scalars().all() == ["p"]


def test_0006_alters_the_table_in_place_on_postgresql() -> None:
    """PostgreSQL alters the table without rebuilding it; the SQL is rendered offline, as `alembic --sql` does."""
    migration = ScriptDirectory(str(MIGRATIONS_DIR)).get_revision("0006").module
    for step in (migration.upgrade, migration.downgrade):
        out = io.StringIO()
        context = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True, "output_buffer": out})
        with Operations.context(context):
            step()
        sql = out.getvalue()
        assert "CREATE TABLE" not in sql and "DROP TABLE" not in sql
        assert sql.count("ADD CONSTRAINT") == 2 and sql.count("DROP COLUMN") == 2


def test_the_head_revision_the_store_checks_is_alembics() -> None:
    assert ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head() == HEAD_REVISION


def test_a_migration_in_a_child_process_brings_the_store_to_the_head(db: Database) -> None:
    db.run_migrations(command.upgrade, "0005")
    db.migrate(in_child=True)
    assert db.revision() == HEAD_REVISION
    with db.engine.connect() as conn:  # tables that later migrations made
        tables = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars().all()
    assert {"server_secrets", "instance_slots", "environment_variables"} <= set(tables)


def test_a_store_at_the_head_is_not_migrated_again_nor_is_alembic_loaded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'test.db'}"
    check = ("import sys; from modelbay.store.db import Database; db = Database(sys.argv[1]); db.migrate(); "
             "print('alembic' in sys.modules)")
    assert Database(url).revision() is None
    runs = [subprocess.run([sys.executable, "-c", check, url], capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert [run.stdout.strip() for run in runs] == ["True", "False"]
    assert Database(url).revision() == HEAD_REVISION


def test_a_failed_migration_in_a_child_process_raises(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'test.db'}")
    with db.engine.begin() as conn:  # a store claiming a revision no migration knows
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('9999')"))
    with pytest.raises(subprocess.CalledProcessError):
        db.migrate(in_child=True)
    db.close()


def _request_indexes(db: Database) -> set[str]:
    return {index["name"] for index in inspect(db.engine).get_indexes("requests")}


def test_0014_drops_the_index_of_project_id_alone_that_the_index_by_project_and_time_covers(db: Database) -> None:
    db.run_migrations(command.upgrade, "0013")
    assert {"ix_requests_project_id", "ix_requests_project_created"} <= _request_indexes(db)
    db.migrate()
    assert "ix_requests_project_id" not in _request_indexes(db)
    assert "ix_requests_project_created" in _request_indexes(db)  # what serves a project's requests
    db.run_migrations(command.downgrade, "0013")
    assert "ix_requests_project_id" in _request_indexes(db)


def _run_indexes(db: Database) -> set[str]:
    return {index["name"] for index in inspect(db.engine).get_indexes("runs")}


def test_0015_adds_the_partial_index_of_claimed_runs(db: Database) -> None:
    db.run_migrations(command.upgrade, "0014")
    assert "ix_runs_claimed" not in _run_indexes(db)
    db.migrate()
    assert "ix_runs_claimed" in _run_indexes(db)
    db.run_migrations(command.downgrade, "0014")
    assert "ix_runs_claimed" not in _run_indexes(db)

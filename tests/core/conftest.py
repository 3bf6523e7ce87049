"""What the core tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelbay.store.db import Database


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated store of the test's own: a SQLite file, or a fresh PostgreSQL database."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.close()

"""Server secrets: the URL-signing key and the admin token's hash, kept in the store.

Every server on one database signs URLs and checks the admin token alike, so a URL one server
hands out works on another. Each secret is made once: a server inserts it if absent and reads back
what is stored, so servers starting together end with one. A key or token that a server of an
older version kept in its data dir is moved in on the first start (the URLs and the token users
hold keep working).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from modelbay.core.clock import utcnow
from modelbay.core.projects import hash_token
from modelbay.store.db import Database
from modelbay.store.tables import ServerSecretRow

log = logging.getLogger(__name__)

SIGNING_KEY = "url_signing_key"
ADMIN_TOKEN_HASH = "admin_token_hash"

#: The operator's copy of the admin token, in the data dir of the server that made it (the store
#: keeps only its hash).
ADMIN_TOKEN_FILE = "admin_token"

#: Where servers before the store kept the signing key, in their data dir.
SIGNING_KEY_FILE = "url_signing_key"


def stored_once(db: Database, name: str, value: str) -> str:
    """The value of secret `name`: `value` if none was stored yet, else the one stored first."""
    insert = postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert
    statement = insert(ServerSecretRow).values(name=name, value=value, created_at=utcnow())
    with db.write() as session:
        # A racing server's row wins quietly; reading it back in the same transaction sees it
        # (PostgreSQL waits for the other insert to commit; SQLite writers take turns).
        session.execute(statement.on_conflict_do_nothing(index_elements=["name"]))
        stored = session.scalar(select(ServerSecretRow.value).where(ServerSecretRow.name == name))
    assert stored is not None
    return stored


def stored(db: Database, name: str) -> str | None:
    with db.read() as session:
        return session.scalar(select(ServerSecretRow.value).where(ServerSecretRow.name == name))


def signing_key(db: Database, data_dir: Path) -> bytes:
    """The URL-signing key every server on `db` shares; a key left in `data_dir` is moved in."""
    path = data_dir / SIGNING_KEY_FILE
    kept = bytes.fromhex(path.read_text().strip()) if path.exists() else None
    key = bytes.fromhex(stored_once(db, SIGNING_KEY, (kept or secrets.token_bytes(32)).hex()))
    if kept is not None:
        if kept != key:
            log.warning("the URL-signing key in %s is not this database's: URLs it signed no longer pass", path)
        path.unlink()
    return key


@dataclass(frozen=True)
class AdminToken:
    """The admin token as this server knows it."""

    hash: str
    #: The token itself, made just now: shown once.
    new_token: str | None = None
    #: The file holding the token, when this server's data dir has it.
    kept_in: Path | None = None


def admin_token(db: Database, data_dir: Path) -> AdminToken:
    """The admin token every server on `db` accepts, made (and kept in `data_dir`) on the first start."""
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        digest = hash_token(path.read_text().strip())
        shared = stored_once(db, ADMIN_TOKEN_HASH, digest)
        if shared != digest:
            log.warning("the admin token in %s is not this database's admin token: it is not accepted", path)
            return AdminToken(shared)
        return AdminToken(shared, kept_in=path)
    if (shared := stored(db, ADMIN_TOKEN_HASH)) is not None:
        return AdminToken(shared)  # made by another server on this database
    token = secrets.token_hex(20)
    # The file first: a server stopped before the insert finds it on its next start and moves it in.
    # Created owner-only, so the token is never readable by others, not even for a moment.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(token + "\n")
    digest = hash_token(token)
    shared = stored_once(db, ADMIN_TOKEN_HASH, digest)
    if shared != digest:  # another server starting at the same time made one first
        path.unlink()
        return AdminToken(shared)
    return AdminToken(shared, new_token=token, kept_in=path)

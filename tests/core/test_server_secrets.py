"""Server secrets: made once per database, shared by every server on it, moved in from a data dir."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from modelbay.core import server_secrets
from modelbay.core.bus import Bus
from modelbay.core.projects import Caller, Projects, hash_token
from modelbay.store.db import Database

OLD_KEY = bytes(range(32))


def data_dirs(tmp_path: Path, count: int) -> list[Path]:
    dirs = [tmp_path / f"node-{i}" for i in range(count)]
    for path in dirs:
        path.mkdir()
    return dirs


def at_once(count: int, call: object) -> list[object]:
    """`call(i)` on `count` threads started together; their results in order."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = call(i)  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_the_signing_key_is_made_once_and_every_data_dir_gets_the_same(db: Database, tmp_path: Path) -> None:
    first, second = data_dirs(tmp_path, 2)

    key = server_secrets.signing_key(db, first)

    assert len(key) == 32
    assert server_secrets.signing_key(db, second) == key
    assert server_secrets.signing_key(db, first) == key
    assert not (first / server_secrets.SIGNING_KEY_FILE).exists()  # nothing kept outside the store


def test_servers_making_the_signing_key_at_once_end_with_one(db: Database, tmp_path: Path) -> None:
    dirs = data_dirs(tmp_path, 4)

    keys = at_once(4, lambda i: server_secrets.signing_key(db, dirs[i]))

    assert len(set(keys)) == 1


def test_a_signing_key_kept_in_the_data_dir_is_moved_into_the_store(db: Database, tmp_path: Path) -> None:
    old, new = data_dirs(tmp_path, 2)
    (old / server_secrets.SIGNING_KEY_FILE).write_text(OLD_KEY.hex() + "\n")

    assert server_secrets.signing_key(db, old) == OLD_KEY  # the URLs it signed keep passing

    assert not (old / server_secrets.SIGNING_KEY_FILE).exists()
    assert server_secrets.signing_key(db, new) == OLD_KEY
    assert server_secrets.signing_key(db, old) == OLD_KEY


def test_a_data_dir_key_of_another_database_gives_way_to_the_stored_one(db: Database, tmp_path: Path) -> None:
    first, joining = data_dirs(tmp_path, 2)
    key = server_secrets.signing_key(db, first)
    (joining / server_secrets.SIGNING_KEY_FILE).write_text(OLD_KEY.hex() + "\n")

    assert server_secrets.signing_key(db, joining) == key
    assert not (joining / server_secrets.SIGNING_KEY_FILE).exists()


def test_the_admin_token_is_made_once_kept_in_its_data_dir_and_accepted_everywhere(
    db: Database, tmp_path: Path
) -> None:
    first, second = data_dirs(tmp_path, 2)

    made = server_secrets.admin_token(db, first)

    assert made.new_token is not None and made.hash == hash_token(made.new_token)
    path = first / server_secrets.ADMIN_TOKEN_FILE
    assert made.kept_in == path and path.read_text().strip() == made.new_token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = server_secrets.admin_token(db, first)
    assert (again.hash, again.new_token, again.kept_in) == (made.hash, None, path)
    other = server_secrets.admin_token(db, second)
    assert (other.hash, other.new_token, other.kept_in) == (made.hash, None, None)
    assert not (second / server_secrets.ADMIN_TOKEN_FILE).exists()  # only its hash is shared
    assert Projects(db, other.hash, Bus()).authenticate(made.new_token) == Caller(project_id=None)


def test_servers_making_the_admin_token_at_once_end_with_one_token_in_one_data_dir(
    db: Database, tmp_path: Path
) -> None:
    dirs = data_dirs(tmp_path, 4)

    tokens = at_once(4, lambda i: server_secrets.admin_token(db, dirs[i]))

    assert len({token.hash for token in tokens}) == 1  # type: ignore[attr-defined]
    made = [token for token in tokens if token.new_token is not None]  # type: ignore[attr-defined]
    assert len(made) == 1
    assert [d for d in dirs if (d / server_secrets.ADMIN_TOKEN_FILE).exists()] == [made[0].kept_in.parent]


def test_an_admin_token_kept_in_the_data_dir_is_moved_into_the_store(db: Database, tmp_path: Path) -> None:
    old, new = data_dirs(tmp_path, 2)
    path = old / server_secrets.ADMIN_TOKEN_FILE
    path.write_text("kept-token-0123456789abcdef\n")

    moved = server_secrets.admin_token(db, old)

    assert (moved.hash, moved.new_token, moved.kept_in) == (hash_token("kept-token-0123456789abcdef"), None, path)
    assert path.read_text().strip() == "kept-token-0123456789abcdef"  # still the operator's copy
    assert server_secrets.admin_token(db, new).hash == moved.hash


def test_an_admin_token_file_of_another_database_is_not_accepted(db: Database, tmp_path: Path) -> None:
    first, joining = data_dirs(tmp_path, 2)
    made = server_secrets.admin_token(db, first)
    (joining / server_secrets.ADMIN_TOKEN_FILE).write_text("stale-token-0123456789abcdef\n")

    joined = server_secrets.admin_token(db, joining)

    assert (joined.hash, joined.new_token, joined.kept_in) == (made.hash, None, None)

"""Helpers for the integration tests: own servers, raw-HTTP deployments, the store read as a user would.

Everything here talks to a real `modelbay serve` subprocess over real HTTP (httpx, not the SDK).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sqlite3
import textwrap
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.databases import database_url_for
from tests.fixtures.server import Server, free_port, wait_until

BUILD_DEADLINE_S = 120.0

#: Plain deployment that sleeps as many seconds as its input says, then answers "done".
SLEEPS = '''
import time


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        time.sleep(float(data))
        return "done"
'''


# --- HTTP ----------------------------------------------------------------------------------


def ubiops(server: Server, token: str, prefix: str = "/v2.1", scheme: str = "Token") -> httpx.Client:
    """A raw httpx client for the UbiOps dialect, authenticated with `token`."""
    return httpx.Client(
        base_url=f"{server.url}{prefix}", headers={"Authorization": f"{scheme} {token}"}, timeout=120
    )


def error_of(response: httpx.Response) -> str:
    """The `{"error": "..."}` message of a UbiOps error answer (asserting that shape)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


# --- packages ------------------------------------------------------------------------------


def zip_bytes(files: dict[str, str], top_folder: str | None = "deployment_package") -> bytes:
    """A zip archive, in memory, holding `files` (path -> text), under `top_folder/` unless None."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{top_folder}/{name}" if top_folder else name, textwrap.dedent(text))
    return buffer.getvalue()


def package_zip(deployment_py: str, requirements: str = "") -> bytes:
    return zip_bytes({"deployment.py": deployment_py, "requirements.txt": requirements})


# --- deployments ---------------------------------------------------------------------------


def create_deployment(client: httpx.Client, project: str, name: str, *, plain: bool = True) -> dict[str, Any]:
    fields = [{"name": "x", "data_type": "int"}]
    body: dict[str, Any] = {
        "name": name,
        "input_type": "plain" if plain else "structured",
        "output_type": "plain" if plain else "structured",
    }
    if not plain:
        body |= {"input_fields": fields, "output_fields": fields}
    response = client.post(f"/projects/{project}/deployments", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def create_version(client: httpx.Client, project: str, deployment: str, version: str = "v1", **fields: Any) -> None:
    response = client.post(f"/projects/{project}/deployments/{deployment}/versions", json={"version": version, **fields})
    assert response.status_code == 201, response.text


def upload(client: httpx.Client, project: str, deployment: str, version: str, archive: bytes) -> str:
    """Upload a revision as multipart `file`; returns the revision id."""
    response = client.post(
        f"/projects/{project}/deployments/{deployment}/versions/{version}/revisions",
        files={"file": ("pkg.zip", archive, "application/zip")},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["revision"])


def version_status(client: httpx.Client, project: str, deployment: str, version: str = "v1") -> str:
    response = client.get(f"/projects/{project}/deployments/{deployment}/versions/{version}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def wait_built(client: httpx.Client, project: str, deployment: str, version: str = "v1") -> str:
    """Poll the version until its build ends; returns `available` or `failed`."""
    status: str = wait_until(
        lambda: (s := version_status(client, project, deployment, version)) in ("available", "failed") and s,
        timeout=BUILD_DEADLINE_S,
        interval=0.1,
    )
    return status


def deploy(
    client: httpx.Client,
    project: str,
    name: str,
    source: str,
    *,
    plain: bool = True,
    requirements: str = "",
    **version_fields: Any,
) -> str:
    """Deployment + version v1 + upload of `source` as deployment.py, built and available."""
    create_deployment(client, project, name, plain=plain)
    create_version(client, project, name, "v1", **version_fields)
    upload(client, project, name, "v1", package_zip(source, requirements))
    status = wait_built(client, project, name, "v1")
    assert status == "available", client.get(f"/projects/{project}/deployments/{name}/versions/v1/revisions").text
    return name


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- the store, read as an operator would --------------------------------------------------


@contextlib.contextmanager
def read_only_db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """The server's SQLite database, opened read-only with the stdlib module."""
    conn = sqlite3.connect(f"file:{data_dir / 'modelbay.db'}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


class Row(tuple[Any, ...]):
    """A PostgreSQL row read as `sqlite3.Row` reads: by index or by column name."""

    def __new__(cls, names: list[str], values: Any) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._names.index(key) if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self._names)


def query(data_dir: Path, sql: str, *params: Any) -> list[Any]:
    """Rows of the store of `data_dir` (SQL with `?` placeholders), as an operator reads them:
    JSON and time columns as text, whichever database the store is."""
    url = database_url_for(data_dir)
    if url is None:
        with read_only_db(data_dir) as conn:
            return list(conn.execute(sql, params))
    import psycopg
    from psycopg.types.string import TextLoader

    def rows(cursor: Any) -> Callable[[Any], Row]:
        names = [column.name for column in cursor.description]
        return lambda values: Row(names, values)

    libpq_url = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq_url, autocommit=True, row_factory=rows) as conn:
        for type_name in ("json", "jsonb", "timestamptz", "timestamp"):  # as text, as SQLite keeps them
            conn.adapters.register_loader(type_name, TextLoader)
        return list(conn.execute(sql.replace("%", "%%").replace("?", "%s"), params))


@contextlib.contextmanager
def writes_stalled(data_dir: Path) -> Iterator[None]:
    """The store of `data_dir` takes no write while the block runs (reads go on), as when a
    committer is starved: another connection holds SQLite's write lock, or locks PostgreSQL's tables."""
    url = database_url_for(data_dir)
    if url is None:
        blocker = sqlite3.connect(data_dir / "modelbay.db", isolation_level=None, timeout=10)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            yield
        finally:
            blocker.close()
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        tables = [name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        conn.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")  # what a write takes waits; reads do not
        yield
        conn.rollback()


# --- processes -----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live process, from /proc; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of `pid`: pid -> start time (which tells a reused pid apart)."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[1] != "Z":
            parents.setdefault(st[0], []).append((int(entry), st[2]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, start in parents.get(todo.pop(), []):
            found[child] = start
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def is_worker(pid: int) -> bool:
    """A worker process itself (not the sandbox's own processes, whose command lines name it too)."""
    argv = cmdline(pid).split()
    return len(argv) > 2 and argv[2].endswith("worker.py") and not argv[0].endswith("bwrap")


def alive(processes: dict[int, int]) -> dict[int, int]:
    """Those of `processes` (pid -> start time) that still run (zombies count as gone)."""
    still = {}
    for pid, start in processes.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            still[pid] = start
    return still


def kill_leftovers(processes: dict[int, int]) -> None:
    """SIGKILL those of `processes` (started on this test's behalf) that still run, by pid."""
    for pid in alive(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- own servers ---------------------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts servers of this test's own (to restart or kill); every one is stopped at the end,
    and any worker a killed server left behind is ended."""
    started: list[Server] = []
    seen: dict[int, int] = {}

    def start(
        data_dir: Path | None = None, extra_env: dict[str, str] | None = None, port: int | None = None
    ) -> Server:
        srv = Server(data_dir=data_dir or tmp_path / "data", port=port or free_port())
        srv.data_dir.mkdir(parents=True, exist_ok=True)
        started.append(srv)
        return srv.start(extra_env)

    def remember() -> None:
        for srv in started:
            if srv.process is not None and srv.process.poll() is None:
                seen.update(descendants(srv.process.pid))

    start.remember_children = remember  # type: ignore[attr-defined]
    start.children_seen = seen  # type: ignore[attr-defined]
    yield start
    remember()
    for srv in started:
        if srv.process is not None:
            srv.stop()
    kill_leftovers(seen)


"""The `modelbay` command: run the server; create, list and delete projects, and renew their tokens."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import orjson

import typer
import uvicorn
from pydantic import ValidationError

from modelbay.http_protocol import HttpProtocol
from modelbay.runtime import sandbox
from modelbay.settings import Settings

if TYPE_CHECKING:
    from modelbay.core.projects import Projects

app = typer.Typer(help="modelbay: a self-hosted platform that runs model code and serves requests to it.")
project_app = typer.Typer(help="Manage projects.")
app.add_typer(project_app, name="project")


def _say(line: str) -> None:
    """A line on standard error; click drops the styles when it is not a terminal. (Not rich: the
    server would keep it loaded, 2.4 MiB, for a few lines at its start.)"""
    typer.echo(line, err=True)


def _bold(value: object) -> str:
    return typer.style(str(value), bold=True)

#: Connections the kernel queues while the server starts (uvicorn's default).
LISTEN_BACKLOG = 2048

#: A line of the server's log in the `text` format.
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: What every log record has: the rest are the event's own fields (`extra=`). `color_message` is
#: uvicorn's colored copy of the message.
_RECORD_ATTRIBUTES = {*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime",
                      "color_message"}

_DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help=f"Data directory (default: MODELBAY_DATA_DIR or ./{_DEFAULTS['data_dir']})."),
]

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL, e.g. postgresql://user:password@host/modelbay "
        "(default: MODELBAY_DATABASE_URL or a SQLite file in the data directory).",
    ),
]


def _version(show: bool) -> None:
    if show:
        print(f"modelbay {importlib.metadata.version('modelbay')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """modelbay: a self-hosted platform that runs model code and serves requests to it."""


def _settings(data_dir: Path | None, **overrides: object) -> Settings:
    """The settings from the environment and the command line; a bad value is one line, not a traceback."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"MODELBAY_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"bad setting: {problems}")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help=f"Address to listen on (default: MODELBAY_HOST or {_DEFAULTS['host']}).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help=f"Port to listen on (default: MODELBAY_PORT or {_DEFAULTS['port']}).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    runtime: Annotated[
        str | None, typer.Option(help=f"Where instances run: local or ray (default: MODELBAY_RUNTIME or "
                                 f"{_DEFAULTS['runtime']}).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="The Ray cluster for --runtime ray, host:port of its head (default: "
                                 "MODELBAY_RAY_ADDRESS, else a local Ray instance the server starts).")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="How the server logs: text, or json (one object per line: time, level, "
                                 f"logger, message and the event's fields) (default: MODELBAY_LOG_FORMAT or "
                                 f"{_DEFAULTS['log_format']}).")
    ] = None,
    access_log: Annotated[
        bool | None, typer.Option("--access-log/--no-access-log",
                                  help="Log every HTTP request (default: MODELBAY_ACCESS_LOG or off: a line per "
                                  "request costs the direct-request path CPU).")
    ] = None,
) -> None:
    """Start the server: every dialect, the scheduler and the workers, on one port."""
    from modelbay.datadir_lock import DataDirInUse, lock_data_dir

    settings = _settings(data_dir, host=host, port=port, database_url=database_url, runtime=runtime,
                         ray_address=ray_address, log_format=log_format, access_log=access_log)
    try:
        sandbox.from_settings(settings.sandbox)
    except sandbox.SandboxUnavailable as exc:
        _fail(str(exc))
    if settings.sandbox == "none":
        _say(typer.style("warning:", fg="yellow") + " MODELBAY_SANDBOX=none: user code runs unsandboxed on this host")
    # The data dir, then the port, before anything reads the database: a second server on the
    # same data or port stops here, before recovery could touch the first one's requests.
    try:
        lock = lock_data_dir(settings.data_dir)
    except DataDirInUse as exc:
        _fail(str(exc))
    try:
        sock = _listen(settings.host, settings.port)
    except OSError as exc:
        _fail(f"cannot listen on {settings.host}:{settings.port}: {(exc.strerror or str(exc)).lower()}")
    address = _address(sock)
    lock.record(address)
    if settings.runtime == "ray":
        _join_ray(settings)
    if settings.node_url is None:
        settings = settings.model_copy(update={"node_url": _node_url(sock)})
    from modelbay.app import create_app  # only now: a refused second server exits without loading it
    from modelbay.engine import admin_token, open_database

    try:  # migrated here, before the app (the admin token lives in the store), in a child process
        db = open_database(settings, migrate_in_child=True)
    except subprocess.CalledProcessError:
        _fail("could not bring the store's schema up to date (the migration's error is above)")
    try:
        token = admin_token(settings, db)
    finally:
        db.close()
    configure_logging(settings)
    _say(f"modelbay serving on {_bold(address)}")
    _say(f"data directory: {settings.data_dir.resolve()}")
    if settings.database_url:
        _say(f"database: {_safe_url(settings.sqlalchemy_url)}")
    if token.new_token is not None:
        _say(f"admin token (shown once, kept in the data directory): {_bold(token.new_token)}")
    elif settings.admin_token:
        _say("admin token: MODELBAY_ADMIN_TOKEN")
    elif token.kept_in is not None:
        _say(f"admin token: kept in {token.kept_in.resolve()}")
    else:
        _say("admin token: the one made by the first server on this database (kept in its data directory)")
    # uvicorn drains on SIGTERM, then re-raises it; exiting 0 tells supervisors it was clean.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # No logging config of uvicorn's own: its lines go through the root logger, in the server's format.
    # No WebSocket protocol: no route speaks it, and loading one costs the server 4 MiB.
    config = uvicorn.Config(create_app(settings), log_config=None, log_level=settings.log_level,
                            access_log=settings.access_log, timeout_graceful_shutdown=30, ws="none",
                            http=HttpProtocol)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:  # the app failed to start; it has logged why
        raise typer.Exit(1)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the event's own fields, and the
    traceback of an exception logged with one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((key, value) for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(settings: Settings) -> None:
    """The server's log: on standard error, at `log_level`, in `log_format`; every logger's lines
    (modelbay's, uvicorn's, the libraries') go through the root logger's one handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its notes at every start say nothing to an operator


def _join_ray(settings: Settings) -> None:
    """Join the Ray cluster now: one clear line when it cannot be used."""
    from modelbay.runtime.ray_runtime import RuntimeUnavailable, connect

    cluster = f"the Ray cluster at {settings.ray_address}" if settings.ray_address else "a new local Ray instance"
    _say(f"joining {cluster}")
    try:
        connect(settings.ray_address, settings.ray_namespace)
    except RuntimeUnavailable as exc:
        _fail(str(exc))


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, as uvicorn would bind it (IPv6 when the host is an IPv6 address)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse the port at once
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)  # listening now, so another server can no longer bind the port
    except OSError:
        sock.close()
        raise
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def _node_url(sock: socket.socket) -> str:
    """Where other servers reach this one: its listening address, or this machine's name when it
    listens on every address."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        return f"http://{socket.getfqdn()}:{port}"
    return _address(sock)


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def _fail(message: str) -> NoReturn:
    """One line on stderr (never wrapped), then exit 1."""
    _say(typer.style("error:", fg="red") + f" {message}")
    raise typer.Exit(1)


def _dialect_ids(number: int, handle: str) -> dict[str, str]:
    """A project's ids as the ABEJA and Datature clients take them (the SDKs' configuration)."""
    from modelbay.dialects.abeja import ids as abeja_ids
    from modelbay.dialects.datature import ids as datature_ids

    return {
        "organization_id": abeja_ids.organization_id(number),
        "datature_project_id": datature_ids.project_id(handle),
    }


@project_app.command("create")
def project_create(
    name: str,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the credentials as one JSON object.")] = False,
    init: Annotated[
        bool, typer.Option("--init", help="Create a new database if the data directory holds none.")
    ] = False,
) -> None:
    """Create a project and print its credentials."""
    from modelbay.core.bus import Bus
    from modelbay.core.errors import ModelbayError
    from modelbay.core.projects import Projects
    from modelbay.engine import admin_token, database_exists, open_database

    settings = _settings(data_dir, database_url=database_url)
    # A mistyped --data-dir must not quietly become a new, empty platform. No server lock here:
    # projects are created next to a running server.
    if not init and not database_exists(settings):
        where = settings.data_dir.resolve() if settings.database_url is None else _safe_url(settings.database_url)
        _fail(f"no modelbay database in {where}; pass --init to create a new one")
    db = open_database(settings)
    try:
        credentials = Projects(db, admin_token(settings, db).hash, Bus(db)).create(name)
    except ModelbayError as exc:
        _fail(exc.message)
    finally:
        db.close()
    payload = {
        "name": credentials.name,
        "token": credentials.token,
        **_dialect_ids(credentials.number, credentials.handle),
    }
    if as_json:
        print(json.dumps(payload))
    else:
        for key, value in payload.items():
            _say(f"{key}: {_bold(value)}")


@contextlib.contextmanager
def _projects(data_dir: Path | None, database_url: str | None) -> Iterator[Projects]:
    """The projects of an existing store (never a new one: a mistyped --data-dir fails); a core
    error inside the block is one line on stderr and exit 1. No server lock: these run next to a
    running server, which sees the change at once on PostgreSQL and within seconds on SQLite."""
    from modelbay.core.bus import Bus
    from modelbay.core.errors import ModelbayError
    from modelbay.core.projects import Projects
    from modelbay.engine import admin_token, database_exists, open_database

    settings = _settings(data_dir, database_url=database_url)
    if not database_exists(settings):
        where = settings.data_dir.resolve() if settings.database_url is None else _safe_url(settings.database_url)
        _fail(f"no modelbay database in {where}")
    db = open_database(settings)
    try:
        yield Projects(db, admin_token(settings, db).hash, Bus(db))
    except ModelbayError as exc:
        _fail(exc.message)
    finally:
        db.close()


@project_app.command("list")
def project_list(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per project.")] = False,
) -> None:
    """List the projects and their ids (never their tokens)."""
    from modelbay.core.projects import Caller

    with _projects(data_dir, database_url) as projects:
        rows = projects.list(Caller(project_id=None))
    for row in rows:
        payload = {
            "name": row.name,
            **_dialect_ids(row.number, row.handle),
            "created": row.created_at.isoformat(),
        }
        if as_json:
            print(json.dumps(payload))
        else:
            print("\t".join(str(value) for value in payload.values()))


@project_app.command("delete")
def project_delete(
    name: str,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete a project and everything in it (deployments, pipelines, requests, jobs, ...)."""
    from modelbay.core.projects import Caller

    with _projects(data_dir, database_url) as projects:
        projects.get(Caller(project_id=None), name)  # an unknown name fails before the question
        if not yes:
            try:
                confirmed = typer.confirm(f"Delete project '{name}' and everything in it?")
            except typer.Abort:  # no answer: standard input is closed
                confirmed = False
            if not confirmed:
                _fail("nothing deleted (pass --yes to delete without being asked)")
        projects.delete(Caller(project_id=None), name)
    _say(f"project {_bold(name)} deleted")


@project_app.command("token")
def project_token(
    name: str,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Give a project a new token and print it; the old token stops working."""
    from modelbay.core.projects import Caller

    with _projects(data_dir, database_url) as projects:
        token = projects.renew_token(Caller(project_id=None), name)
    print(token)


if __name__ == "__main__":
    app()

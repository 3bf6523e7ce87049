"""The `modelbay` command: run the server, create projects."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from modelbay.runtime import sandbox
from modelbay.settings import Settings

app = typer.Typer(help="modelbay: a self-hosted platform that runs model code and serves requests to it.")
project_app = typer.Typer(help="Manage projects.")
app.add_typer(project_app, name="project")
console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (default ./.modelbay).")]


def _settings(data_dir: Path | None, **overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)  # type: ignore[arg-type]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Start the server: every dialect, the scheduler and the workers, on one port."""
    from modelbay.app import create_app
    from modelbay.core.engine import admin_token

    settings = _settings(data_dir, host=host, port=port)
    try:
        sandbox.from_settings(settings.sandbox)
    except sandbox.SandboxUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if settings.sandbox == "none":
        console.print("[yellow]warning:[/yellow] MODELBAY_SANDBOX=none: user code runs unsandboxed on this host")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token, is_new = admin_token(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(f"modelbay serving on [bold]http://{settings.host}:{settings.port}[/bold]")
    console.print(f"data directory: {settings.data_dir.resolve()}")
    if is_new:
        console.print(f"admin token (shown once, kept in the data directory): [bold]{token}[/bold]")
    else:
        console.print(f"admin token: kept in {(settings.data_dir / 'admin_token').resolve()}")
    # uvicorn drains on SIGTERM, then re-raises it; exiting 0 tells supervisors it was clean.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


@project_app.command("create")
def project_create(
    name: str,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the credentials as one JSON object.")] = False,
) -> None:
    """Create a project and print its credentials."""
    from modelbay.core.engine import admin_token, open_database
    from modelbay.core.errors import ModelbayError
    from modelbay.core.projects import Projects

    settings = _settings(data_dir)
    db = open_database(settings)
    try:
        credentials = Projects(db, admin_token(settings)[0]).create(name)
    except ModelbayError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    finally:
        db.close()
    payload = {
        "name": credentials.name,
        "token": credentials.token,
        "organization_id": credentials.organization_id,
        "datature_project_id": credentials.datature_project_id,
    }
    if as_json:
        print(json.dumps(payload))
    else:
        for key, value in payload.items():
            console.print(f"{key}: [bold]{value}[/bold]")


if __name__ == "__main__":
    app()

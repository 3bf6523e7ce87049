"""The web console: server-rendered pages (Jinja2) with live parts (htmx), served at `/ui/`.

It reads and acts through the engine and the core, as the dialects do, and never through a
dialect. Its scripts and styles are files of this package (`static/`): a box with no internet
serves it whole.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from modelbay.console import more_pages, pages, pipeline_pages
from modelbay.console.rendering import HERE
from modelbay.console.session import ROOT


def install_console(app: FastAPI) -> None:
    """Serve the console at `/ui/`, its assets at `/ui/static/`, and send `/` there."""

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{ROOT}/", status_code=307)

    app.mount(f"{ROOT}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(pages.router)
    app.include_router(more_pages.router)
    app.include_router(pipeline_pages.router)

"""How the console answers: Jinja2 pages and fragments, and its errors as pages (never a 500 for
what a person did wrong)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from modelbay.console import session
from modelbay.core.clock import as_utc
from modelbay.core.errors import Forbidden, ModelbayError, NotFound, TooLarge

HERE = Path(__file__).parent


def _time(value: datetime | None) -> str:
    return "" if value is None else as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(as_utc(end) - as_utc(start)).total_seconds():.3f} s"


def _size(count: int | None) -> str:
    count = count or 0
    if count < 1024:
        return f"{count} B"
    return f"{count / 1024:.1f} KiB" if count < 1024**2 else f"{count / 1024**2:.1f} MiB"


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


@cache
def _templates() -> Any:
    """The pages' templates, loaded on the first page asked for: a server nobody browses never
    loads Jinja2 (1.7 MiB)."""
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(time=_time, size=_size, json=_json)
    templates.env.globals.update(seconds=_seconds, root=session.ROOT, csrf_field=session.CSRF_FIELD)
    return templates


def render(request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200) -> Response:
    """A template rendered for this browser, with its CSRF token (sent as a cookie when new)."""
    csrf, new = session.csrf_of(request)
    response = _templates().TemplateResponse(request, name, {"csrf": csrf, **(context or {})}, status_code=status)
    response.headers["Cache-Control"] = "no-store"  # a signed-in page is never kept for the back button
    if new:
        session.set_csrf(request, response, csrf)
    return response


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    return render(request, "error.html", {"title": title, "message": message}, status)


class ConsoleRoute(APIRoute):
    """A console route: a POST passes `session.check_post` first; what it raises is answered as a page
    (the sign-in page when no one is signed in)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                if request.method not in ("GET", "HEAD"):
                    await session.check_post(request)
                return await handler(request)
            except session.SignInNeeded:
                if request.headers.get("hx-request"):  # a live fragment: reload the whole page into the sign-in
                    return Response(status_code=401, headers={"HX-Redirect": f"{session.ROOT}/sign-in"})
                return RedirectResponse(f"{session.ROOT}/sign-in", status_code=303)
            except session.CrossSiteRefused as exc:
                return _error_page(request, 403, "Refused", str(exc))
            except NotFound as exc:
                return _error_page(request, 404, "Not found", exc.message)
            except Forbidden:  # another project's: told apart from a missing one by nothing
                return _error_page(request, 404, "Not found", "Nothing of that name is in your projects")
            except TooLarge as exc:
                return _error_page(request, 413, "Too large", exc.message)
            except ModelbayError as exc:
                return _error_page(request, 400, "Cannot do that", exc.message)

        return handle

"""Who is signed in to the console, and the guard every state-changing request passes.

The token a person signs in with is kept in an HttpOnly, SameSite=Strict cookie (Secure on https):
page scripts cannot read it and no other site's page sends it. A POST is accepted only when it
comes from a page of this host (its Origin, else its Referer, names this host) and carries the
CSRF token of its cookie in its form (`csrf_token`) or in a header (`X-CSRF-Token`, sent by htmx):
a double submit that another site cannot forge, since it can neither read nor set the cookie.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from modelbay.core.errors import Forbidden, NotFound, TooLarge, Unauthorized
from modelbay.core.projects import Caller
from modelbay.engine import Engine
from modelbay.store.tables import ProjectRow

#: Where the console lives; its cookies are sent to nothing else.
ROOT = "/ui"
TOKEN_COOKIE = "modelbay_console_token"
CSRF_COOKIE = "modelbay_console_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

#: How long a sign-in lasts (the browser forgets the cookie then).
SIGN_IN_MAX_AGE_S = 12 * 3600


class SignInNeeded(Exception):
    """Raised when a page is asked for without a valid sign-in: the answer is the sign-in page."""


class CrossSiteRefused(Exception):
    """Raised for a state-changing request that may come from another site (answered 403)."""


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def caller_of(request: Request) -> Caller:
    """The signed-in caller; raises `SignInNeeded` without a cookie or with a token no longer valid."""
    try:
        return engine_of(request).projects.authenticate(request.cookies.get(TOKEN_COOKIE))
    except Unauthorized:
        raise SignInNeeded() from None


def project_of(request: Request, name: str) -> ProjectRow:
    """The project named `name` if the caller may see it; another project's reads as missing (404),
    so a token cannot tell which names exist elsewhere."""
    caller = caller_of(request)
    try:
        return engine_of(request).projects.get(caller, name)
    except Forbidden:
        raise NotFound("project", name) from None


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def sign_in(request: Request, response: Response, token: str) -> None:
    """Keep `token` (checked already) in the browser, with a fresh CSRF token."""
    response.set_cookie(TOKEN_COOKIE, token, max_age=SIGN_IN_MAX_AGE_S, path=ROOT, httponly=True,
                        samesite="strict", secure=_secure(request))
    set_csrf(request, response, secrets.token_urlsafe(32))


def sign_out(request: Request, response: Response) -> None:
    for name in (TOKEN_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path=ROOT, httponly=True, samesite="strict", secure=_secure(request))


def csrf_of(request: Request) -> tuple[str, bool]:
    """The CSRF token of this browser, and whether it is new (then `set_csrf` must send it)."""
    token = request.cookies.get(CSRF_COOKIE)
    return (token, False) if token else (secrets.token_urlsafe(32), True)


def set_csrf(request: Request, response: Response, token: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, path=ROOT, httponly=True, samesite="strict", secure=_secure(request))


def _same_host(request: Request) -> bool:
    """Whether the Origin header (else the Referer) names the host this request was sent to."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc == request.headers.get("host")


async def check_post(request: Request) -> None:
    """Refuse (`CrossSiteRefused`) a state-changing request another site may have made, and
    (`TooLarge`) a body past the server's limit before any of it is read."""
    if not _same_host(request):
        raise CrossSiteRefused("The request did not come from a page of this console")
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > engine_of(request).settings.max_request_bytes:
        raise TooLarge("A form must say its length (Content-Length), within the server's limit")
    expected = request.cookies.get(CSRF_COOKIE)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()  # cached on the request: the route reads it again for free
        field = form.get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise CrossSiteRefused("The form has expired or was not sent by this console: reload the page")

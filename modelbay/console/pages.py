"""The console's pages and actions, under `/ui/`: sign-in, projects, deployments and versions,
requests and one request, with cancel and a playground.

Every page resolves its project through `session.project_of` (the signed-in caller's projects
only) and every object through that project, so another project's ids answer 404.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from modelbay.console import session
from modelbay.console.payload_views import download, shown
from modelbay.console.rendering import ConsoleRoute, render
from modelbay.console.session import caller_of, engine_of, project_of
from modelbay.core import browse
from modelbay.core.clock import as_utc
from modelbay.core.deployments import Deployments
from modelbay.core.errors import InvalidInput, NotFound, Unauthorized, Unavailable
from modelbay.core.requests import DIRECT_TIMEOUT_DEFAULT_S
from modelbay.store.tables import ProjectRow, RequestRow

router = APIRouter(prefix=session.ROOT, route_class=ConsoleRoute, include_in_schema=False)

#: What the console records as the origin of the requests its playground makes.
ORIGIN = {"created_by": "console"}

#: The statuses a list of requests may be narrowed to.
STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "cancelled_pending")

#: A request still in one of these may be cancelled.
CANCELLABLE = ("pending", "processing")


# --- signing in ----------------------------------------------------------------------------------


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    return render(request, "sign_in.html")


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("token") or "").strip()
    try:
        engine_of(request).projects.authenticate(token)
    except Unauthorized:
        return render(request, "sign_in.html", {"error": "That token is not valid: check it and try again."}, 401)
    response = RedirectResponse(f"{session.ROOT}/", status_code=303)
    session.sign_in(request, response, token)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    response = RedirectResponse(f"{session.ROOT}/sign-in", status_code=303)
    session.sign_out(request, response)
    return response


# --- projects, deployments, versions -------------------------------------------------------------


@router.get("/")
async def projects(request: Request) -> Response:
    caller = caller_of(request)
    rows = engine_of(request).projects.list(caller)
    return render(request, "projects.html", {"projects": rows, "is_admin": caller.is_admin})


@router.get("/projects/{project_name}")
async def project(request: Request, project_name: str) -> Response:
    project = project_of(request, project_name)
    deployments = engine_of(request).deployments
    listed = [(d, deployments.list_versions(project, d.name)) for d in deployments.list_deployments(project)]
    return render(request, "project.html", {"project": project, "deployments": listed})


@router.get("/projects/{project_name}/deployments/{deployment_name}/versions/{version_name}")
async def version(request: Request, project_name: str, deployment_name: str, version_name: str) -> Response:
    project = project_of(request, project_name)
    engine = engine_of(request)
    deployment = engine.deployments.get(project, deployment_name)
    row = engine.deployments.get_version(project, deployment_name, version_name)
    return render(request, "version.html", {
        "base": _version_path(project.name, deployment_name, version_name),
        "project": project,
        "deployment": deployment,
        "version": row,
        "revisions": engine.revisions.list(project, deployment_name, version_name),
        "instances": await browse.instances(engine.scheduler, row.id),
    })


@router.get("/projects/{project_name}/deployments/{deployment_name}/versions/{version_name}/instances")
async def version_instances(request: Request, project_name: str, deployment_name: str,
                            version_name: str) -> Response:
    """The live part of a version's page (polled by htmx)."""
    project = project_of(request, project_name)
    engine = engine_of(request)
    row = engine.deployments.get_version(project, deployment_name, version_name)
    return render(request, "_instances.html", {"instances": await browse.instances(engine.scheduler, row.id)})


@router.get("/projects/{project_name}/deployments/{deployment_name}/versions/{version_name}/activity")
async def version_activity(request: Request, project_name: str, deployment_name: str, version_name: str) -> Response:
    """The samples of a version's recent past on this server, as JSON columns (drawn by `charts.js`)."""
    project = project_of(request, project_name)
    engine = engine_of(request)
    row = engine.deployments.get_version(project, deployment_name, version_name)
    history = engine.activity_history
    body = {"period_s": history.period_s, "window_s": history.window_s, "series": history.series(row.id)}
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.post("/projects/{project_name}/deployments/{deployment_name}/versions/{version_name}/playground")
async def playground(request: Request, project_name: str, deployment_name: str, version_name: str) -> Response:
    """Make a direct request of the version from the playground's form; answer its outcome."""
    project = project_of(request, project_name)
    engine = engine_of(request)
    form = await request.form()
    text = str(form.get("data") or "")
    try:
        target = Deployments.serving_target_check(engine.deployments.target(project, deployment_name, version_name))
        data = text if target.input_type == "plain" else _json_input(text)
        record = await engine.requests.direct(target, data, timeout=DIRECT_TIMEOUT_DEFAULT_S, origin=ORIGIN)
    except (InvalidInput, Unavailable) as exc:  # shown in the form's place (htmx swaps no error answer)
        return render(request, "_playground_result.html", {"error": exc.message, "project": project})
    return render(request, "_playground_result.html", {"record": record, "project": project})


def _version_path(project_name: str, deployment_name: str, version_name: str) -> str:
    return f"{session.ROOT}/projects/{project_name}/deployments/{deployment_name}/versions/{version_name}"


def _json_input(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The input is not valid JSON: {exc}") from None


# --- requests --------------------------------------------------------------------------------------


def _names(request: Request, project: ProjectRow) -> dict[str, str]:
    """`deployment/version` of each version id of the project, for lists that span versions."""
    deployments = engine_of(request).deployments
    return {v.id: f"{d.name}/{v.name}" for d in deployments.list_deployments(project)
            for v in deployments.list_versions(project, d.name)}


def _when(value: str | None) -> datetime | None:
    """A time from a filter (an HTML datetime-local value, read as UTC)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"'{value}' is not a time (use YYYY-MM-DDTHH:MM)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _filters(request: Request, version_id: str | None) -> tuple[browse.RequestFilter, dict[str, str]]:
    """The list's filters from the query, and those as given (to keep them in the form and the links)."""
    query = request.query_params
    given = {k: query[k] for k in ("status", "origin", "from", "to") if query.get(k)}
    status, origin = given.get("status"), given.get("origin")
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
    if origin is not None and origin not in browse.ORIGINS:
        raise InvalidInput(f"origin must be one of {', '.join(browse.ORIGINS)}")
    return browse.RequestFilter(version_id, status, origin, _when(given.get("from")), _when(given.get("to"))), given


def _request_list(request: Request, project: ProjectRow, version_id: str | None, context: dict[str, Any]) -> Response:
    where, given = _filters(request, version_id)
    before = None
    if before_time := _when(request.query_params.get("before_time")):
        before = (before_time, request.query_params.get("before_id", ""))
    page = browse.request_page(engine_of(request).db, project.id, where, before=before)
    older = None
    if page.next is not None:
        created, request_id = page.next
        older = "?" + urlencode({**given, "before_time": as_utc(created).isoformat(), "before_id": request_id})
    return render(request, "requests.html", {
        **context, "project": project, "rows": page.rows, "names": _names(request, project), "given": given,
        "statuses": STATUSES, "origins": list(browse.ORIGINS), "older": older, "origin_of": browse.origin_of,
        "paged": before is not None, "scanned_only": page.scanned_only, "scan_limit": browse.SCAN_LIMIT,
    })


@router.get("/projects/{project_name}/requests")
async def project_requests(request: Request, project_name: str) -> Response:
    project = project_of(request, project_name)
    return _request_list(request, project, None, {"version": None})


@router.get("/projects/{project_name}/deployments/{deployment_name}/versions/{version_name}/requests")
async def version_requests(request: Request, project_name: str, deployment_name: str, version_name: str) -> Response:
    project = project_of(request, project_name)
    row = engine_of(request).deployments.get_version(project, deployment_name, version_name)
    return _request_list(request, project, row.id, {
        "version": row, "deployment_name": deployment_name,
        "version_path": _version_path(project.name, deployment_name, version_name)})


def _project_request(request: Request, project: ProjectRow, request_id: str) -> RequestRow:
    row = browse.project_request(engine_of(request).db, project.id, request_id)
    if row is None:
        raise NotFound("request", request_id)
    return row


@router.get("/projects/{project_name}/requests/{request_id}")
async def request_page(request: Request, project_name: str, request_id: str) -> Response:
    project = project_of(request, project_name)
    row = _project_request(request, project, request_id)
    names = _names(request, project)
    deployment, _, version_name = names.get(row.version_id, "/").partition("/")
    return render(request, "request.html", {
        "project": project, "row": row, "deployment_name": deployment, "version_name": version_name,
        "input": shown(row.data, row.data_key, row.input_size),
        "output": shown(row.result, row.result_key, row.output_size),
        "origin": browse.origin_of(row.origin, row.mode), "cancellable": row.status in CANCELLABLE,
    })


@router.get("/projects/{project_name}/requests/{request_id}/{which}")
async def request_payload(request: Request, project_name: str, request_id: str, which: str) -> Response:
    """A request's input or output as a file."""
    project = project_of(request, project_name)
    return download(engine_of(request).payloads, _project_request(request, project, request_id), which, "request")


@router.post("/projects/{project_name}/requests/{request_id}/cancel")
async def cancel(request: Request, project_name: str, request_id: str) -> Response:
    project = project_of(request, project_name)
    engine = engine_of(request)
    row = _project_request(request, project, request_id)
    with contextlib.suppress(NotFound):  # deleted meanwhile: the page says so
        await engine.requests.cancel(engine.deployments.target_of_version(row.version_id), row.id)
    return RedirectResponse(f"{session.ROOT}/projects/{project.name}/requests/{row.id}", status_code=303)

"""The console's pipeline pages: the pipelines of a project with each version's graph drawn, a
pipeline's requests, and one pipeline request with its steps.

As in `pages`, every object is found through a project of the signed-in caller.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelbay.console import session
from modelbay.console.payload_views import download, shown
from modelbay.console.pipeline_drawing import draw
from modelbay.console.rendering import ConsoleRoute, render
from modelbay.console.session import engine_of, project_of
from modelbay.core import browse
from modelbay.core.clock import as_utc
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.store.tables import PipelineRequestRow, ProjectRow

router = APIRouter(prefix=session.ROOT, route_class=ConsoleRoute, include_in_schema=False)

#: Steps a pipeline request's page lists (a fan-out may make thousands).
STEPS_SHOWN = 500


@router.get("/projects/{project_name}/pipelines")
async def pipelines(request: Request, project_name: str) -> Response:
    project = project_of(request, project_name)
    core = engine_of(request).pipelines
    listed = []
    for pipeline in core.list_pipelines(project):
        versions = core.list_versions(project, pipeline.name)[1]
        listed.append((pipeline, [(v, draw(v.objects, v.attachments)) for v in versions]))
    return render(request, "pipelines.html", {"project": project, "pipelines": listed})


def _before(request: Request) -> tuple[datetime, str] | None:
    """Where a page of a list starts, from its query: the created time and id of the last row of
    the previous page."""
    value = request.query_params.get("before_time")
    if not value:
        return None
    try:
        created = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"'{value}' is not a time") from None
    return (created if created.tzinfo else created.replace(tzinfo=UTC)), request.query_params.get("before_id", "")


@router.get("/projects/{project_name}/pipelines/{pipeline_name}/requests")
async def pipeline_requests(request: Request, project_name: str, pipeline_name: str) -> Response:
    project = project_of(request, project_name)
    pipeline, versions = engine_of(request).pipelines.list_versions(project, pipeline_name)
    before = _before(request)
    page = browse.pipeline_request_page(engine_of(request).db, [v.id for v in versions], before=before)
    older = None
    if page.next is not None:
        created, request_id = page.next
        older = "?" + urlencode({"before_time": as_utc(created).isoformat(), "before_id": request_id})
    return render(request, "pipeline_requests.html", {
        "project": project, "pipeline": pipeline, "versions": {v.id: v.name for v in versions},
        "rows": page.rows, "older": older, "paged": before is not None,
    })


def _pipeline_request(request: Request, project: ProjectRow, request_id: str) -> PipelineRequestRow:
    row = browse.project_pipeline_request(engine_of(request).db, project.id, request_id)
    if row is None:
        raise NotFound("pipeline request", request_id)
    return row


@router.get("/projects/{project_name}/pipeline-requests/{request_id}")
async def pipeline_request(request: Request, project_name: str, request_id: str) -> Response:
    project = project_of(request, project_name)
    engine = engine_of(request)
    row = _pipeline_request(request, project, request_id)
    pipeline = next((p for p in engine.pipelines.list_pipelines(project) if p.id == row.pipeline_id), None)
    version_name = None
    if pipeline is not None:
        version_name = next((v.name for v in engine.pipelines.list_versions(project, pipeline.name)[1]
                             if v.id == row.version_id), None)
    steps = engine.pipeline_requests.steps_of(row)
    listed = steps[:STEPS_SHOWN]
    return render(request, "pipeline_request.html", {
        "project": project, "row": row, "pipeline": pipeline, "version_name": version_name,
        "input": shown(row.data, row.data_key, row.input_size),
        "output": shown(row.result, row.result_key, row.output_size),
        "steps": listed, "more_steps": len(steps) - len(listed),
        "times": browse.step_times(engine.db, project.id, row.id, listed),
    })


@router.get("/projects/{project_name}/pipeline-requests/{request_id}/{which}")
async def pipeline_request_payload(request: Request, project_name: str, request_id: str, which: str) -> Response:
    """A pipeline request's input or output as a file."""
    project = project_of(request, project_name)
    row = _pipeline_request(request, project, request_id)
    return download(engine_of(request).payloads, row, which, "pipeline request")

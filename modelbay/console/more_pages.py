"""The console's pages beyond deployments and requests: a deployment's runs (with their attempts)
and services (start and stop), and batch jobs with their deliveries (cancel) and webhooks.
Pipelines have theirs in `pipeline_pages`.

As in `pages`, every object is found through a project of the signed-in caller.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from modelbay.console import session
from modelbay.console.rendering import ConsoleRoute, render
from modelbay.console.session import engine_of, project_of
from modelbay.core import browse
from modelbay.core.clock import utcnow
from modelbay.core.jobs import ACTIVE as ACTIVE_JOB
from modelbay.core.states import RUN, RunStatus, ServiceStatus
from modelbay.store.tables import DeploymentRow, ProjectRow

router = APIRouter(prefix=session.ROOT, route_class=ConsoleRoute, include_in_schema=False)

#: Runs a deployment's page lists (the newest).
RUNS_SHOWN = 50

#: Lines of a run's log and entries of a job's log a page shows.
LOG_LINES_SHOWN = 500
JOB_LOGS_SHOWN = 200

#: Jobs a project's page of jobs lists, and webhooks its page of webhooks lists.
JOBS_SHOWN = 200
WEBHOOKS_SHOWN = 200


def _deployment(request: Request, project_name: str, deployment_name: str) -> tuple[ProjectRow, DeploymentRow]:
    project = project_of(request, project_name)
    return project, engine_of(request).deployments.get(project, deployment_name)


@router.get("/projects/{project_name}/deployments/{deployment_name}")
async def deployment(request: Request, project_name: str, deployment_name: str) -> Response:
    project, row = _deployment(request, project_name, deployment_name)
    engine = engine_of(request)
    versions = engine.deployments.list_versions(project, deployment_name)
    services = [(s, await engine.services.instance_count(s.id), engine.services.start_error(s))
                for s in engine.services.list(row.id)]
    runs, more = engine.runs.page(row.id, after=None, oldest_first=False, limit=RUNS_SHOWN)
    return render(request, "deployment.html", {
        "project": project, "deployment": row, "versions": {v.id: v.name for v in versions},
        "version_rows": versions, "services": services, "runs": runs, "more_runs": more,
        "stopped": ServiceStatus.STOPPED.value,
    })


@router.get("/projects/{project_name}/deployments/{deployment_name}/runs/{run_id}")
async def run(request: Request, project_name: str, deployment_name: str, run_id: str) -> Response:
    project, row = _deployment(request, project_name, deployment_name)
    engine = engine_of(request)
    run_row = engine.runs.get(row.id, run_id)
    ended = RunStatus(run_row.status) in RUN.terminal
    return render(request, "run.html", {
        "project": project, "deployment": row, "run": run_row,
        "attempts": browse.run_attempts(engine.db, run_row, ended),
        "lines": engine.journal.page(run_row.id, limit=LOG_LINES_SHOWN),
    })


@router.post("/projects/{project_name}/deployments/{deployment_name}/services/{service_id}/{action}")
async def start_or_stop(request: Request, project_name: str, deployment_name: str, service_id: str,
                        action: str) -> Response:
    project, row = _deployment(request, project_name, deployment_name)
    if action not in ("start", "stop"):
        return render(request, "error.html", {"title": "Not found", "message": f"No action '{action}'"}, 404)
    await engine_of(request).services.set_running(row.id, service_id, action == "start")
    return RedirectResponse(f"{session.ROOT}/projects/{project.name}/deployments/{row.name}", status_code=303)


@router.get("/projects/{project_name}/jobs")
async def jobs(request: Request, project_name: str) -> Response:
    project = project_of(request, project_name)
    rows, more = engine_of(request).jobs.list(project.id, 0, JOBS_SHOWN)
    return render(request, "jobs.html", {"project": project, "jobs": rows, "more": more})


@router.get("/projects/{project_name}/jobs/{job_id}")
async def job(request: Request, project_name: str, job_id: str) -> Response:
    project = project_of(request, project_name)
    engine = engine_of(request)
    row = engine.jobs.get(project.id, job_id)
    webhooks, _ = engine.webhooks.list(project.id, 0, 1000)
    return render(request, "job.html", {
        "project": project, "job": row, "active": row.status in ACTIVE_JOB,
        "deliveries": browse.job_deliveries(engine.db, row.id), "webhooks": {w.id: w.name for w in webhooks},
        "logs": engine.jobs.logs(project.id, row.id, before_ms=None, after_ms=None, min_level=None,
                                 limit=JOB_LOGS_SHOWN),
    })


@router.post("/projects/{project_name}/jobs/{job_id}/cancel")
async def cancel_job(request: Request, project_name: str, job_id: str) -> Response:
    project = project_of(request, project_name)
    await engine_of(request).jobs.set_stop_time(project.id, job_id, utcnow())  # a stop time now cancels it
    return RedirectResponse(f"{session.ROOT}/projects/{project.name}/jobs/{job_id}", status_code=303)


@router.get("/projects/{project_name}/webhooks")
async def webhooks(request: Request, project_name: str) -> Response:
    project = project_of(request, project_name)
    engine = engine_of(request)
    rows, more = engine.webhooks.list(project.id, 0, WEBHOOKS_SHOWN)
    return render(request, "webhooks.html", {
        "project": project, "webhooks": rows, "more": more, "recent": browse.RECENT_DELIVERIES,
        "jobs_searched": browse.JOBS_SEARCHED,
        "outcomes": browse.webhook_outcomes(engine.db, project.id, [w.id for w in rows]),
    })

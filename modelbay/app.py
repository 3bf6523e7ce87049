"""The ASGI application: one port for every dialect, the engine opened and closed in the lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from modelbay.api_reference import install_api_reference
from modelbay.console import install_console
from modelbay.dialects.abeja import errors as abeja_errors
from modelbay.dialects.abeja.deployments import router as abeja_deployments_router
from modelbay.dialects.abeja.endpoints import router as abeja_endpoints_router
from modelbay.dialects.abeja import runs as abeja_runs
from modelbay.dialects.abeja.runs import router as abeja_runs_router
from modelbay.dialects.abeja import services as abeja_services
from modelbay.dialects.abeja.services import router as abeja_services_router
from modelbay.dialects.common.errors import unrouted_handler
from modelbay.dialects.common.front import Front
from modelbay.dialects.common.path_router import PathRouter
from modelbay.dialects.datature import errors as datature_errors
from modelbay.dialects.datature.jobs import item_result as datature_item_result
from modelbay.dialects.datature.routes import routers as datature_routers
from modelbay.dialects.ubiops import direct as ubiops_direct
from modelbay.dialects.ubiops import errors as ubiops_errors
from modelbay.dialects.ubiops.logs import router as ubiops_logs_router
from modelbay.dialects.ubiops.pipeline_requests import router as ubiops_pipeline_requests_router
from modelbay.dialects.ubiops.pipelines import router as ubiops_pipelines_router
from modelbay.dialects.ubiops.requests import router as ubiops_requests_router
from modelbay.dialects.ubiops.routes import PREFIXES as UBIOPS_PREFIXES
from modelbay.dialects.ubiops.routes import router as ubiops_router
from modelbay.dialects.ubiops.streaming import router as ubiops_streaming_router
from modelbay import metrics as engine_metrics
from modelbay.engine import Engine
from modelbay.node_calls import router as node_calls_router
from modelbay.settings import Settings

#: The dialect mounted at each path prefix: its shape answers the paths there that no route serves.
#: (Every route answers its own errors in its dialect's shape: see `dialects.common.errors`.)
MOUNTED_ERRORS = [
    (UBIOPS_PREFIXES, ubiops_errors.ERRORS),
    (abeja_errors.PREFIXES, abeja_errors.ERRORS),
    (datature_errors.PREFIXES, datature_errors.ERRORS),
]


def create_app(settings: Settings) -> ASGIApp:
    """Build the app; the engine (store, runtime, loops) lives exactly as long as its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(settings, job_item_body=datature_item_result)
        app.state.engine = engine
        await engine.start()
        # What start-up made lives as long as the server: keep it out of every full collection,
        # which otherwise pauses requests for 100-200 ms now and then (gen 2 walks the whole heap).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await engine.close()

    # FastAPI's own /docs and /redoc load their assets from a CDN: `install_api_reference` serves them.
    app = FastAPI(title="modelbay", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    # What reaches the app unanswered by a route: a path no route serves.
    app.add_exception_handler(HTTPException, unrouted_handler(MOUNTED_ERRORS, default=ubiops_errors.ERRORS))

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    # Each dialect's routes under its own path prefix, so a request tries only its dialect's routes.
    # The hot paths (UbiOps direct requests, ABEJA run creates and service calls) are answered by
    # `Front` before the app sees them.
    for prefix in UBIOPS_PREFIXES:  # request routes first: they are matched most often
        app.include_router(PathRouter(prefix, [
            ubiops_requests_router, ubiops_streaming_router, ubiops_router, ubiops_logs_router,
            ubiops_pipelines_router, ubiops_pipeline_requests_router]), prefix=prefix)
    app.include_router(node_calls_router)
    app.include_router(PathRouter("/organizations/", [
        abeja_runs_router, abeja_services_router, abeja_endpoints_router, abeja_deployments_router]))
    app.include_router(PathRouter("/projects/", datature_routers))

    install_console(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(await engine_metrics.render(app.state.engine), media_type=CONTENT_TYPE_LATEST)

    install_api_reference(app)  # /docs, /redoc and /openapi.json

    return Front(app, lambda: app.state.engine, [*ubiops_direct.ROUTES, *abeja_runs.FRONT_ROUTES, *abeja_services.FRONT_ROUTES])

"""The API reference: `/docs` (Swagger UI), `/redoc` and the OpenAPI document at `/openapi.json`.

The pages load their scripts and styles from this server (`/docs/assets/`, the files the
`fastapi-offline` package ships: Swagger UI and ReDoc), never from a CDN, so they work on a machine
without internet. ReDoc's script is served with the one address it loads by itself (Redocly's logo,
from their CDN) taken out: its sidebar then shows "API docs by Redocly" without the image. All three
stay public, like every FastAPI app's: they describe the API, no data.

The document FastAPI generates is finished once, on first use, and kept (`app.openapi_schema`):
- every operation carries the one tag of its router (`APIRouter(tags=…)` in each dialect); a router
  included in another carries its parent's tags before its own, and keeps only its own;
- every `{param}` of a path is declared: many routes read theirs through a dependency or
  `request.path_params`, which FastAPI does not list, and OpenAPI tools refuse such a document;
- each dialect's credential is a security scheme, required by its operations (the Authorize button);
- the routes answered in front of the framework (`common.front`: UbiOps direct requests, an ABEJA
  run's create, calls to ABEJA services) are listed.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from modelbay.core.requests import DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S
from modelbay.core.runs import RETRY_COUNT_MAX
from modelbay.dialects.abeja import runs as abeja_runs
from modelbay.dialects.abeja import services as abeja_services
from modelbay.dialects.ubiops import direct
from modelbay.dialects.ubiops.routes import PREFIXES as UBIOPS_PREFIXES

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
#: The package whose folder holds the pages' assets: swagger-ui-bundle.js, swagger-ui.css,
#: redoc.standalone.js and favicon.png.
ASSETS_PACKAGE = ("fastapi_offline", "static")
REDOC_JS = "redoc.standalone.js"
#: The image ReDoc's sidebar loads from the internet. With no address the image fails at once, without
#: a request (nor an error in the browser's console), and ReDoc leaves it out.
REDOC_LOGO_URL = '"https://cdn.redoc.ly/redoc/logo-mini.svg"'

#: The tags, in the order the pages show them, each with its description. The dialects' routers
#: name theirs; an operation of no dialect (the app's own `/health`) is the server's.
SERVER_TAG = "modelbay · server"
TAGS: dict[str, dict[str, str]] = {
    "UbiOps": {
        "UbiOps · projects and deployments": "The service status, the caller, projects, environments, "
        "deployments, their versions and the revisions (uploaded packages) of a version.",
        "UbiOps · requests": "Requests to a deployment: direct (answered when done), streaming "
        "(server-sent events) and batch (stored, collected later), and the stored ones read, "
        "cancelled or deleted.",
        "UbiOps · pipelines": "Pipelines and their versions: objects and the attachments between them.",
        "UbiOps · pipeline requests": "Requests to a pipeline, and the requests of each of its objects.",
        "UbiOps · environment variables": "Environment variables of a project, a deployment, a version "
        "or a pipeline object.",
        "UbiOps · logs": "What user code printed, and the builds' logs, filtered by request, version and time.",
    },
    "ABEJA": {
        "ABEJA · deployments": "Deployments and their code versions (archives uploaded and downloaded).",
        "ABEJA · services": "Services: a code version kept running behind an HTTP endpoint.",
        "ABEJA · endpoints": "Endpoints: the name (`default` or custom) a deployment's URL calls a service by.",
        "ABEJA · runs": "Runs: one call of a code version with a payload, kept with its logs.",
        "ABEJA · service calls": "Calls to a running service, at `http://<organization_id>.<ABEJA host>"
        "/deployments/<deployment_id>[/services/<service_id>]`: the organization is in the Host header.",
    },
    "Datature": {
        "Datature · deployments": "The deployments a batch job can run on.",
        "Datature · artifacts": "The instance types a job on instances of its own may ask for.",
        "Datature · datasets": "Batch datasets: the items a job runs through, uploaded as a file.",
        "Datature · jobs": "Batch jobs: a deployment run over a dataset, each result delivered to a webhook.",
        "Datature · webhooks": "Webhooks that receive a job's results, signed with their secret.",
    },
    "modelbay": {SERVER_TAG: "The server's own routes."},
}

#: Each dialect's credentials (any one of them will do), as OpenAPI security schemes.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "UbiOpsToken": {
        "type": "apiKey", "in": "header", "name": "Authorization",
        "description": "`Token <token>`: a project's token (it sees that project) or the admin token "
        "(it sees every project). `Bearer <token>` is accepted too.",
    },
    "AbejaBearer": {"type": "http", "scheme": "bearer", "description": "The organization's (project's) token."},
    "AbejaBasic": {
        "type": "http", "scheme": "basic",
        "description": "User name `user-<id>` (or `datasource-<id>`), password the organization's token.",
    },
    "DatatureSecretKey": {
        "type": "apiKey", "in": "header", "name": "Secret-Key", "description": "The project's token.",
    },
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "UbiOps": [{"UbiOpsToken": []}],
    "ABEJA": [{"AbejaBearer": []}, {"AbejaBasic": []}],
    "Datature": [{"DatatureSecretKey": []}],
}
#: Operations of a dialect that need no credential.
PUBLIC_PATHS = {f"{prefix}/status" for prefix in UBIOPS_PREFIXES}

#: Swagger UI: tags folded (the UbiOps API alone has a hundred operations), a filter box for them, and
#: no validator badge (an image from the internet).
SWAGGER_UI_PARAMETERS = {"docExpansion": "none", "filter": True, "validatorUrl": None}

_PATH_PARAM = re.compile(r"\{(\w+)\}")
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def install_api_reference(app: FastAPI) -> None:
    """Serve `/docs` and `/redoc` with local assets and the finished OpenAPI document.

    The app is made with `docs_url=None, redoc_url=None` (FastAPI's own pages load from a CDN) and
    `openapi_url=None` (FastAPI's own route makes the document on the event loop)."""
    app.openapi_tags = [
        {"name": tag, "description": description} for tags in TAGS.values() for tag, description in tags.items()
    ]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # Made on first use, when every route is in: the app's routes do not change after start-up.
        if app.openapi_schema is None:
            app.openapi_schema = finish(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to change the document

    async def openapi_document(request: Request) -> JSONResponse:
        # Made on a worker thread: generating it takes a third of a second of CPU, which would
        # hold every request the event loop serves meanwhile.
        return JSONResponse(await run_in_threadpool(app.openapi))

    app.add_route(OPENAPI_URL, openapi_document, include_in_schema=False)

    async def redoc_js(request: Request) -> Response:
        return Response(redoc_script(), media_type="text/javascript; charset=utf-8")

    # Before the assets' mount, which would answer it with the file as shipped.
    app.add_route(f"{ASSETS_URL}/{REDOC_JS}", redoc_js, include_in_schema=False)
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="api-reference-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=None,  # no OAuth2 flow among the schemes: no redirect page needed
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # the fonts would come from the internet
        )

    # Plain routes, as FastAPI adds its own pages: no operations of the API.
    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)


@cache
def redoc_script() -> bytes:
    """ReDoc's script as `fastapi-offline` ships it, without the address of Redocly's logo."""
    package, folder = ASSETS_PACKAGE
    return (files(package) / folder / REDOC_JS).read_bytes().replace(REDOC_LOGO_URL.encode(), b'""')


def finish(schema: dict[str, Any]) -> dict[str, Any]:
    """The generated document with the direct-request routes, one tag and every path parameter
    declared for each operation, and each dialect's security."""
    schema["info"]["description"] = (
        "One server, three APIs: UbiOps under `/v2.1` (and `/v2`), ABEJA under `/organizations` and "
        "`/deployments`, Datature under `/projects`. Each takes its own credential (Authorize)."
    )
    for path, operations in {**direct_request_paths(), **create_run_paths(), **service_call_paths()}.items():
        schema["paths"].setdefault(path, {}).update(operations)
    dialect_of = {tag: dialect for dialect, tags in TAGS.items() for tag in tags}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            # A router included in another carries its parent's tags before its own: keep its own.
            operation["tags"] = operation.get("tags", [SERVER_TAG])[-1:]
            if parameters := declared_path_parameters(path, operation.get("parameters", [])):
                operation["parameters"] = parameters
            dialect = dialect_of.get(operation["tags"][0])
            if dialect in SECURITY and path not in PUBLIC_PATHS:
                operation["security"] = SECURITY[dialect]
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    schema["x-tagGroups"] = [{"name": dialect, "tags": list(tags)} for dialect, tags in TAGS.items()]  # ReDoc
    return schema


def declared_path_parameters(path: str, parameters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`parameters` with each `{name}` of `path` declared (a string where the route declares none),
    path parameters first, in the path's order."""
    declared = {p["name"]: p for p in parameters if p.get("in") == "path"}
    in_path = [
        declared.get(name) or {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(path)
    ]
    return in_path + [p for p in parameters if p.get("in") != "path"]


_UBIOPS_ERROR = {
    "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"],
    }}},
}

_DIRECT_RESULT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "The request's id."},
        "deployment": {"type": "string"},
        "version": {"type": "string"},
        "status": {"type": "string", "enum": ["completed", "failed", "cancelled"]},
        "success": {"type": "boolean"},
        "result": {"description": "The deployment's output: a JSON object for a structured deployment, "
                                  "a string for a plain one; null when the request failed."},
        "error_message": {"type": ["string", "null"]},
        "timeout": {"type": "integer", "description": "Seconds the request was given."},
    },
    "required": ["id", "deployment", "version", "status", "success", "result", "error_message", "timeout"],
}


def direct_request_paths() -> dict[str, dict[str, Any]]:
    """The operations `ubiops.direct` answers in front of the framework (POST, under every UbiOps prefix)."""
    paths = {}
    for prefix in UBIOPS_PREFIXES:
        for path in direct.PATHS:
            full = prefix + path
            of_version = "{version}" in path
            paths[full] = {"post": {
                "tags": ["UbiOps · requests"],
                "summary": "Direct request to a version" if of_version else "Direct request",
                "description": (
                    "Sends the input to " + ("this version" if of_version else "the deployment's default version")
                    + " and answers when the request is done, with its result. The request is recorded "
                    "(input, output, logs) like every other."
                ),
                "operationId": "deployment_" + ("version_" if of_version else "") + "requests_create_"
                + prefix.strip("/").replace(".", "_"),
                "parameters": [
                    {"name": "timeout", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": DIRECT_TIMEOUT_MAX_S,
                                "default": DIRECT_TIMEOUT_DEFAULT_S},
                     "description": "Seconds the request may take."},
                    {"name": "priority", "in": "query", "required": False, "schema": {"type": "integer"},
                     "description": "Accepted as the UbiOps API does; a direct request goes ahead of batch "
                                    "requests anyway."},
                ],
                "requestBody": {
                    "required": True,
                    "description": "The input: a JSON object of the input fields for a structured deployment; "
                                   "a JSON string, or the text itself as `text/plain`, for a plain one.",
                    "content": {"application/json": {"schema": {}}, "text/plain": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": {"description": "The request is done: completed, failed or cancelled.",
                            "content": {"application/json": {"schema": _DIRECT_RESULT}}},
                    "400": {"description": "Invalid input or query, or the version is not available.",
                            **_UBIOPS_ERROR},
                    "401": {"description": "No valid token.", **_UBIOPS_ERROR},
                    "403": {"description": "The token may not use this project.", **_UBIOPS_ERROR},
                    "404": {"description": "No such project, deployment or version.", **_UBIOPS_ERROR},
                    "413": {"description": "The body is larger than the server takes.", **_UBIOPS_ERROR},
                },
            }}
    return paths


_ABEJA_ERROR = {
    "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
        "required": ["error", "error_description"],
    }}},
}


def create_run_paths() -> dict[str, dict[str, Any]]:
    """The ABEJA run create `abeja.runs` answers in front of the framework."""
    return {abeja_runs.R: {"post": {
        "tags": ["ABEJA · runs"],
        "summary": "Create Run",
        "description": "Queues a run of the version `version_id` names and answers once it is stored, with "
                       "its id and status; the run then starts as soon as an instance is free.",
        "operationId": "create_run",
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {
                    "version_id": {"type": "string"},
                    "input_data": {"description": "What the run's code receives."},
                    "output_template": {},
                    "retry_count": {"type": "integer", "minimum": 0, "maximum": RETRY_COUNT_MAX},
                    "distribution": {"type": "integer", "minimum": 0, "maximum": abeja_runs.MAX_DISTRIBUTION},
                    "environment": {"type": "object", "additionalProperties": {"type": "string"}},
                    "models": {"type": "object", "properties": {"alias": {"type": "string"}}},
                },
                "required": ["version_id"],
            }}},
        },
        "responses": {
            "200": {"description": "The run, queued.", "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": {"description": "Invalid body.", **_ABEJA_ERROR},
            "401": {"description": "No valid credential.", **_ABEJA_ERROR},
            "403": {"description": "The credential may not use this organization.", **_ABEJA_ERROR},
            "404": {"description": "No such deployment or version.", **_ABEJA_ERROR},
            "413": {"description": "The body is larger than the server takes.", **_ABEJA_ERROR},
        },
    }}}


def service_call_paths() -> dict[str, dict[str, Any]]:
    """The calls to ABEJA services `abeja.services` answers in front of the framework."""
    paths = {}
    for path in abeja_services.PROXY_PATHS:
        of_service = "{service_id}" in path
        paths[path] = {"post": {
            "tags": ["ABEJA · service calls"],
            "summary": "Call a service" if of_service else "Call the deployment's default endpoint",
            "description": (
                "Sent to `http://<organization_id>.<ABEJA host>" + path + "`: the Host header names the "
                "organization. The body goes to " + ("this service" if of_service else "the service the "
                "deployment's `default` endpoint points at") + ", and its code's answer comes back as it gave it."
            ),
            "operationId": "call_service" if of_service else "call_default_endpoint",
            "requestBody": {"required": False, "content": {"*/*": {"schema": {}}}},
            "responses": {
                "200": {"description": "The code's answer (a handler's status, type and body as it gave them)."},
                "400": {"description": "The service is stopped, or the body is not what its code takes.",
                        **_ABEJA_ERROR},
                "401": {"description": "No valid credential.", **_ABEJA_ERROR},
                "403": {"description": "The credential may not use this organization.", **_ABEJA_ERROR},
                "404": {"description": "No such organization in the Host header, deployment or service.",
                        **_ABEJA_ERROR},
                "413": {"description": "The body is larger than the server takes.", **_ABEJA_ERROR},
                "500": {"description": "The service's code failed.", **_ABEJA_ERROR},
            },
        }}
    return paths

"""UbiOps direct requests, the hot path, answered in front of the framework (`common.front`).

`POST …/deployments/{d}[/versions/{v}]/requests`, under `/v2.1` and `/v2`, with the same
credentials, checks, errors and answer as every UbiOps route.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope

from modelbay.core.deployments import Deployments
from modelbay.core.requests import DIRECT_TIMEOUT_DEFAULT_S, DIRECT_TIMEOUT_MAX_S
from modelbay.core.stored_requests import check_timeout
from modelbay.dialects.common.front import FrontRoute, header, path_pattern, read_body
from modelbay.dialects.common.query import int_param
from modelbay.dialects.ubiops import request_schemas
from modelbay.dialects.ubiops.deps import caller_from
from modelbay.dialects.ubiops.errors import ERRORS
from modelbay.dialects.ubiops.inputs import decode_input
from modelbay.engine import Engine

#: The routes answered here (POST), under `/v2.1` and `/v2`.
PATHS = (
    "/projects/{project_name}/deployments/{deployment_name}/requests",
    "/projects/{project_name}/deployments/{deployment_name}/versions/{version}/requests",
)


async def direct_request(
    scope: Scope, receive: Receive, engine: Engine, project_name: str, deployment_name: str, version: str | None = None
) -> bytes:
    project = engine.projects.get(caller_from(engine, header(scope, b"authorization")), project_name)
    target = engine.deployments.target(project, deployment_name, version)
    Deployments.serving_target_check(target)
    raw_query = scope["query_string"]
    # blank values kept, as the framework's routes keep them: `?timeout=` is no integer there either
    query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else {}
    timeout = check_timeout(int_param(query.get("timeout"), "timeout"), DIRECT_TIMEOUT_DEFAULT_S,
                            DIRECT_TIMEOUT_MAX_S)
    int_param(query.get("priority"), "priority")  # checked; a direct request goes ahead of batch work anyway
    data = decode_input(await read_body(scope, receive, engine.settings.max_request_bytes),
                        header(scope, b"content-type") or "", target.input_type)
    record = await engine.requests.direct(target, data, timeout=timeout, origin={"created_by": "ubiops"})
    return orjson.dumps(request_schemas.deployment_direct(record))


ROUTES = [FrontRoute(re.compile(r"/v2(?:\.1)?" + path_pattern(path)), direct_request, ERRORS) for path in PATHS]

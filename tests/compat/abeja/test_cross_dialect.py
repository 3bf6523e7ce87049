"""One deployment, two dialects: what UbiOps made runs through ABEJA, and the other way round."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.compat.abeja.conftest import ECHO
from tests.compat.abeja.test_runs import finished
from tests.fixtures.packages import NOOP, make_package_dir, make_zip
from tests.fixtures.server import Server, wait_until


def ubiops(server: Server, org: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/v2.1/projects/{org['name']}",
                        headers={"Authorization": f"Token {org['token']}"}, timeout=60)


def test_a_ubiops_deployment_is_listed_run_and_served_through_abeja(
    abeja_server: Server, org: dict[str, str], deployments: Any, runs: Any, services: Any, tmp_path: Path
) -> None:
    # Given a structured UbiOps deployment whose Deployment class echoes its input
    api = ubiops(abeja_server, org)
    fields = [{"name": "x", "data_type": "int"}]
    assert api.post("/deployments", json={"name": "echo", "input_type": "structured", "output_type": "structured",
                                          "input_fields": fields, "output_fields": fields}).status_code == 201
    assert api.post("/deployments/echo/versions", json={"version": "v1"}).status_code == 201
    archive = make_zip(make_package_dir(tmp_path, NOOP), tmp_path / "echo.zip")
    with open(archive, "rb") as f:
        assert api.post("/deployments/echo/versions/v1/revisions", files={"file": f}).status_code == 200
    wait_until(lambda: api.get("/deployments/echo/versions/v1").json()["status"] == "available", timeout=120)

    # Then ABEJA lists it with its version, and a run and a service call reach the same code
    o = org["organization_id"]
    [entry] = deployments.get_deployments(o)["entries"]
    d = entry["deployment_id"]
    assert entry["name"] == "echo"
    [version] = deployments.get_deployment_versions(o, d)["entries"]
    v = version["version_id"]
    run = runs.create_run(o, d, v, input_data={"x": 7})
    assert finished(runs, o, d, run["run_id"])["status"] == "SUCCEEDED"
    s = services.create_service(o, d, v)["service_id"]
    wait_until(lambda: services.get_service(o, d, s)["status"] == "READY", timeout=60)
    assert services.request_service(o, d, s, json={"x": 5}).json() == {"x": 5}

    # And each execution is a request of the version, named by where it came from
    listed = api.get("/deployments/echo/versions/v1/requests", params={"status": "completed"}).json()
    assert sorted(r["origin"]["created_by"] for r in listed) == ["run", "service"]


def test_an_abeja_deployment_serves_ubiops_direct_requests(
    abeja_server: Server, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    deploy(ECHO, name="abeja-made", user_parameters={"GREETING": "hello"})
    api = ubiops(abeja_server, org)
    assert api.get("/deployments/abeja-made").json()["input_type"] == "plain"
    answer = api.post("/deployments/abeja-made/versions/0.0.1/requests", content='"some text"',
                      headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] == "completed"
    content = json.loads(result["result"])  # the handler's content, as text for a plain deployment
    assert content["contents"] == "some text" and content["env"] == "hello"

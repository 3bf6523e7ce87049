from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from abeja.exceptions import BadRequest, Forbidden, NotFound, Unauthorized

from tests.fixtures.processes import processes_working_in
from tests.fixtures.server import Server, wait_until

SERVICE_FIELDS = {
    "service_id", "deployment_id", "models", "model_version", "model_version_id", "status", "instance_number",
    "min_instance_number", "max_instance_number", "enable_autoscale", "instance_type", "metrics_url",
    "user_env_vars", "created_at", "modified_at",
}

PROXY = '''
import os
import time
import uuid

INSTANCE = uuid.uuid4().hex  # tells instances apart (in its sandbox, each worker is the same pid)


def handler(request, context):
    print("serving %s" % request["content_type"])
    if request["content_type"] == "application/json":
        contents = request["contents"]
        time.sleep(float(contents.get("sleep", 0)))
        return {
            "status_code": 200,
            "content_type": "application/json",
            "content": {
                "got": contents,
                "instance": INSTANCE,
                "cwd": os.getcwd(),
                "env": [os.environ.get("GREETING"), os.environ.get("OTHER")],
                "service": request["headers"].get("x-abeja-service-id"),
            },
        }
    return {"status_code": 201, "content_type": "application/x-reversed", "content": request.read()[::-1]}
'''


@pytest.fixture
def service(services: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]) -> Callable[..., Any]:
    """Create a service of a fresh PROXY deployment; returns (deployment_id, service_id) once it is READY."""

    def _service(**options: Any) -> tuple[str, str]:
        d, v = deploy(PROXY, user_parameters={"GREETING": "version", "OTHER": "kept"})
        created = services.create_service(org["organization_id"], d, v, **options)
        wait_until(lambda: services.get_service(org["organization_id"], d, created["service_id"])["status"]
                   == "READY", timeout=120)
        return d, created["service_id"]

    return _service


def test_a_service_is_in_progress_until_its_instance_is_up_then_ready_and_listed(
    services: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, v = deploy(PROXY)
    created = services.create_service(o, d, v, environment={"GREETING": "service"}, model_id="2222222222222")
    assert SERVICE_FIELDS <= set(created)
    assert re.fullmatch(r"ser-[0-9a-f]{16}", created["service_id"])
    assert created["status"] == "IN_PROGRESS" and created["model_version_id"] == v
    assert created["instance_number"] == 1 and created["instance_type"] == "cpu-0.25"
    assert created["models"] == {"alias": "2222222222222"} and created["user_env_vars"] == {"GREETING": "service"}
    s = created["service_id"]
    ready = wait_until(lambda: (x := services.get_service(o, d, s))["status"] == "READY" and x, timeout=120)
    assert ready["running_instance_number"] == 1
    assert [e["service_id"] for e in services.get_services(o, d)["entries"]] == [s]


def test_the_proxy_passes_json_and_bytes_to_the_handler_and_its_answer_back(
    services: Any, org: dict[str, str], service: Callable[..., tuple[str, str]], abeja_server: Server
) -> None:
    o = org["organization_id"]
    d, s = service(environment={"GREETING": "service"})
    answer = services.request_service(o, d, s, json={"x": [1, 2]})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["got"] == {"x": [1, 2]} and body["service"] == s
    assert body["env"] == ["service", "kept"]  # the service's environment over the version's parameters

    raw = bytes(range(256)) * 3
    answer = services.request_service(o, d, s, data=raw, content_type="image/png")
    assert answer.status_code == 201
    assert answer.headers["content-type"] == "application/x-reversed" and answer.content == raw[::-1]
    answer = services.request_service(o, d, s, data=b"no type given")
    assert answer.status_code == 201 and answer.content == b"nevig epyt on"

    logs = services.get_service_recent_logs(o, d, s)
    messages = [e["message"] for e in logs["events"]]
    assert "serving image/png" in messages and "serving application/json" in messages
    assert "next_forward_token" in logs and "next_backward_token" in logs
    # The same lines oldest first, as `abeja model describe-service-logs` reads them (no SDK call for it)
    oldest_first = httpx.get(f"{abeja_server.url}/organizations/{o}/deployments/{d}/services/{s}/logs",
                             headers={"Authorization": f"Bearer {org['token']}"})
    assert oldest_first.status_code == 200, oldest_first.text
    assert [e["message"] for e in oldest_first.json()["events"]] == messages[::-1]
    assert "next_token" not in oldest_first.json()  # one page holds them all


def test_a_stopped_service_answers_4xx_at_once_and_starts_again(
    services: Any, org: dict[str, str], service: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, s = service()
    workdir = services.request_service(o, d, s, json={}).json()["cwd"]
    assert processes_working_in(workdir)
    assert services.stop_service(o, d, s) == {"message": f"{s} stopped"}
    assert services.get_service(o, d, s)["status"] == "STOPPED"
    started = time.monotonic()
    with pytest.raises(BadRequest) as refused:
        services.request_service(o, d, s, json={})
    assert time.monotonic() - started < 2 and "stopped" in refused.value.error_description
    wait_until(lambda: not processes_working_in(workdir))
    with pytest.raises(BadRequest):
        services.stop_service(o, d, s)

    assert services.start_service(o, d, s) == {"message": f"{s} started"}
    with pytest.raises(BadRequest):
        services.start_service(o, d, s)
    wait_until(lambda: services.get_service(o, d, s)["status"] == "READY", timeout=120)
    assert services.request_service(o, d, s, json={"again": 1}).json()["got"] == {"again": 1}


def test_a_deleted_service_stops_its_instances_and_answers_404(
    services: Any, org: dict[str, str], service: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, s = service()
    workdir = services.request_service(o, d, s, json={}).json()["cwd"]
    assert processes_working_in(workdir)
    assert services.delete_service(o, d, s) == {"message": f"{s} deleted"}
    wait_until(lambda: not processes_working_in(workdir))
    started = time.monotonic()
    with pytest.raises(NotFound):
        services.request_service(o, d, s, json={})
    assert time.monotonic() - started < 2
    with pytest.raises(NotFound):
        services.get_service(o, d, s)
    assert services.get_services(o, d) == {"entries": []}


def test_instance_number_scales_the_service_up_and_down_and_requests_spread_over_instances(
    services: Any, org: dict[str, str], service: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, s = service()
    updated = services.update_service(o, d, s, {"instance_number": 2})
    assert updated["instance_number"] == 2 and updated["status"] == "IN_PROGRESS"
    assert {"merged_env_vars", "record_channel_id", "service_process_type"} <= set(updated)
    wait_until(lambda: (x := services.get_service(o, d, s))["status"] == "READY"
               and x["running_instance_number"] == 2, timeout=120)

    def call(_: int) -> str:
        return str(services.request_service(o, d, s, json={"sleep": 0.2}).json()["instance"])

    with ThreadPoolExecutor(8) as pool:
        instances = set(pool.map(call, range(16)))
    assert len(instances) == 2

    services.update_service(o, d, s, {"instance_number": 1})
    wait_until(lambda: services.get_service(o, d, s)["running_instance_number"] == 1, timeout=30)
    with pytest.raises(BadRequest):
        services.update_service(o, d, s, {"instance_number": 0})
    with pytest.raises(BadRequest):
        services.update_service(o, d, s, {"min_instance_number": 3, "max_instance_number": 2})


def test_autoscale_adds_instances_under_load_and_gives_them_back_when_idle(
    services: Any, org: dict[str, str], service: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, s = service()
    updated = services.update_service(o, d, s, {"enable_autoscale": "true", "min_instance_number": 1,
                                                "max_instance_number": 2})
    assert updated["enable_autoscale"] is True
    # Load until a second instance serves (its start may take seconds: on Ray, an actor is placed first).
    instances: set[str] = set()
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(4) as pool:
        while len(instances) < 2 and time.monotonic() < deadline:
            instances |= set(pool.map(
                lambda _: services.request_service(o, d, s, json={"sleep": 0.5}).json()["instance"], range(8)))
    assert len(instances) == 2  # the load started a second instance, and no more
    # Idle, the extra instance is given back (the test server's scale-down idle time is 1 s).
    wait_until(lambda: services.get_service(o, d, s)["running_instance_number"] == 1, timeout=30)
    assert services.update_service(o, d, s, {"enable_autoscale": False})["enable_autoscale"] is False
    with pytest.raises(BadRequest):
        services.update_service(o, d, s, {"enable_autoscale": "maybe"})


BROKEN_IN_SERVICE = '''
import os

if os.environ.get("BROKEN"):
    raise RuntimeError("broken on purpose")


def handler(request, context):
    return {"status_code": 200, "content_type": "text/plain", "content": "fine"}
'''


def test_a_service_whose_code_cannot_start_stays_in_progress_saying_why(
    services: Any, org: dict[str, str], deploy: Callable[..., tuple[str, str]]
) -> None:
    o = org["organization_id"]
    d, v = deploy(BROKEN_IN_SERVICE)
    s = services.create_service(o, d, v, environment={"BROKEN": "1"})["service_id"]
    failing = wait_until(lambda: (x := services.get_service(o, d, s))["error"] and x, timeout=120)
    assert "broken on purpose" in failing["error"] and failing["status"] == "IN_PROGRESS"
    assert failing["running_instance_number"] == 0
    healthy = services.create_service(o, d, v)["service_id"]  # the same code without the variable is fine
    wait_until(lambda: services.get_service(o, d, healthy)["status"] == "READY", timeout=120)
    assert services.request_service(o, d, healthy, json={}).text == "fine"


def test_the_proxy_needs_the_organizations_credential_and_its_host(
    sdk: Any, services: Any, org: dict[str, str], service: Callable[..., tuple[str, str]], abeja_server: Server
) -> None:
    o = org["organization_id"]
    d, s = service()
    anonymous = sdk["services"].APIClient(credential={})
    with pytest.raises(Unauthorized):
        anonymous.request_service(o, d, s, json={})
    other = abeja_server.create_project("proxy-other-" + o)
    stranger = sdk["services"].APIClient(credential={"auth_token": other["token"]})
    with pytest.raises(Forbidden):
        stranger.request_service(o, d, s, json={})
    url = f"{abeja_server.url}/deployments/{d}/services/{s}"
    no_org = httpx.post(url, json={}, headers={"Authorization": f"Bearer {org['token']}"})  # Host: 127.0.0.1:P
    assert no_org.status_code == 403 and no_org.json()["error"] == "forbidden"
    plain_host = httpx.post(url, json={}, headers={"Authorization": f"Bearer {org['token']}", "Host": "localhost"})
    assert plain_host.status_code == 404 and plain_host.json()["error"] == "not_found"
    right_host = httpx.post(url, json={"y": 1}, headers={"Authorization": f"Bearer {org['token']}",
                                                         "Host": f"{o}.api.example.com"})
    assert right_host.status_code == 200 and right_host.json()["got"] == {"y": 1}

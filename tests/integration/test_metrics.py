"""`/metrics` carries modelbay's own series: requests, latency, instances, builds, commits; labels
name projects, deployments and versions, never a request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.server import Server, wait_until
from tests.integration.conftest import create_deployment, create_version, deploy, package_zip, ubiops, upload, \
    wait_built

#: Answers its input, or fails when it is negative.
PICKY = '''
class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        if int(data) < 0:
            raise ValueError("negative input")
        return data
'''


def scrape(server: Server) -> dict[str, Any]:
    """Metric families by name, as Prometheus parses the page."""
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def samples(families: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> list[Any]:
    """The samples of family `name` (named `sample`, by default the family's) whose labels include `labels`."""
    return [s for s in families[name].samples if s.name == (sample or name)
            and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    return sum(s.value for s in samples(families, name, sample, **labels))


def test_the_metrics_count_requests_builds_and_instances_by_version(own_server: Callable[..., Server]) -> None:
    server = own_server()
    project = server.create_project("metered")
    mine = {"project": "metered", "deployment": "picky", "version": "v1"}
    with ubiops(server, project["token"]) as client:
        deploy(client, "metered", "picky", PICKY)
        create_deployment(client, "metered", "broken")
        create_version(client, "metered", "broken")
        upload(client, "metered", "broken", "v1", package_zip("this is not python"))
        assert wait_built(client, "metered", "broken") == "failed"
        ids = []
        for data in ("1", "2", "-1"):
            response = client.post("/projects/metered/deployments/picky/requests", json=data)
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        batch = client.post("/projects/metered/deployments/picky/requests/batch", json=["3", "4"])
        assert batch.status_code == 201, batch.text
        ids += [item["id"] for item in batch.json()]

    def batch_counted() -> dict[str, Any] | None:
        families = scrape(server)
        return families if value(families, "modelbay_requests", "modelbay_requests_total", origin="batch") == 2 else None

    families = wait_until(batch_counted, timeout=60, interval=0.2)

    requests = "modelbay_requests_total"
    assert value(families, "modelbay_requests", requests, **mine, origin="direct", status="completed") == 2
    assert value(families, "modelbay_requests", requests, **mine, origin="direct", status="failed") == 1
    assert value(families, "modelbay_requests", requests, **mine, origin="batch", status="completed") == 2
    [count] = samples(families, "modelbay_request_duration_seconds", "modelbay_request_duration_seconds_count",
                      **mine)
    assert count.value == 5
    [inf] = samples(families, "modelbay_request_duration_seconds", "modelbay_request_duration_seconds_bucket",
                    **mine, le="+Inf")
    assert inf.value == 5
    assert value(families, "modelbay_request_duration_seconds", "modelbay_request_duration_seconds_sum", **mine) > 0

    instances = {s.labels["state"]: s.value for s in samples(families, "modelbay_instances", **mine)}
    assert set(instances) == {"starting", "idle", "busy"}
    assert instances["idle"] + instances["busy"] >= 1
    assert value(families, "modelbay_requests_running", **mine) == instances["busy"]
    assert value(families, "modelbay_queue_depth", **mine) == 0

    builds = "modelbay_builds_total"
    assert value(families, "modelbay_builds", builds, **mine, result="succeeded") == 1
    assert value(families, "modelbay_builds", builds, project="metered", deployment="broken", result="failed") == 1
    assert value(families, "modelbay_store_commit_seconds", "modelbay_store_commit_seconds_count") > 0

    # Labels are bounded: names and outcomes, never a request's id.
    for family in families.values():
        for sample in family.samples:
            for label_value in sample.labels.values():
                assert label_value not in ids, (sample.name, sample.labels)
            if sample.name.startswith("modelbay_") and "version" in sample.labels:
                assert sample.labels["project"] == "metered"


def test_a_deleted_version_leaves_the_metrics(own_server: Callable[..., Server]) -> None:
    server = own_server()
    project = server.create_project("fleeting")
    with ubiops(server, project["token"]) as client:
        deploy(client, "fleeting", "gone", PICKY)
        assert client.post("/projects/fleeting/deployments/gone/requests", json="1").status_code == 200
        assert value(scrape(server), "modelbay_requests", "modelbay_requests_total", deployment="gone") == 1
        assert client.delete("/projects/fleeting/deployments/gone").status_code == 204

    def gone() -> bool:
        families = scrape(server)
        return not any(s.labels.get("deployment") == "gone" for f in families.values() for s in f.samples)

    wait_until(gone, timeout=30, interval=0.2)

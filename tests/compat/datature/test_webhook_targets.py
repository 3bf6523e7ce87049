"""Webhook targets against a real server: loopback and private endpoints are refused unless the
operator allows them, a malformed one is a 400, and `:test` never shows what the target answered.

Only loopback receivers are ever contacted.
"""

from __future__ import annotations

import base64
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from modelbay.core.clock import utcnow
from modelbay.engine import open_database
from modelbay.settings import Settings
from modelbay.store.tables import ProjectRow, WebhookRow

from tests.compat.datature.conftest import nexus_project, webhook_spec
from tests.compat.datature.receiver import running_receiver
from tests.fixtures.cluster import serving
from tests.fixtures.databases import database_url_for
from tests.fixtures.server import Server

SETTING = "MODELBAY_WEBHOOK_ALLOW_PRIVATE_TARGETS"
SECRET = base64.b64encode(b"s" * 32).decode()
_names = itertools.count()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default rule: private targets refused."""
    srv = serving(tmp_path_factory.mktemp("strict"), {SETTING: "false"})
    yield srv
    srv.stop()


def base_url(server: Server, project: dict[str, str]) -> str:
    return f"{server.url}/projects/{project['datature_project_id']}/batch/webhooks"


def create(server: Server, project: dict[str, str], endpoint: str) -> httpx.Response:
    return httpx.post(base_url(server, project), headers={"Secret-Key": project["token"]},
                      json={"name": "w", "spec": {"endpoint": endpoint, "secret": {"contents": SECRET}}})


def listed(server: Server, project: dict[str, str]) -> list[dict[str, Any]]:
    answer = httpx.get(base_url(server, project), headers={"Secret-Key": project["token"]})
    assert answer.status_code == 200
    return list(answer.json()["data"])


@pytest.mark.parametrize(("endpoint", "why"), [
    ("http://127.0.0.1:{port}/metrics", "host 127.0.0.1 is a loopback address"),
    ("http://localhost:{port}/hook", "host localhost resolves to a loopback address"),
    ("http://[::1]:{port}/hook", "host ::1 is a loopback address"),
    ("http://2130706433:{port}/hook", "host 2130706433 resolves to a loopback address 127.0.0.1"),
    ("http://0.0.0.0:{port}/hook", "host 0.0.0.0 is an unspecified address"),
    ("http://169.254.169.254/latest/meta-data/", "host 169.254.169.254 is a link-local address"),
    ("http://10.0.0.1/hook", "host 10.0.0.1 is a private address"),
])
def test_a_private_target_is_a_400_naming_why_and_the_setting(strict_server: Server, endpoint: str,
                                                              why: str) -> None:
    project = strict_server.create_project(f"refused-{next(_names)}")
    with running_receiver() as receiver:
        answer = create(strict_server, project, endpoint.format(port=receiver.port))
        assert receiver.received == []
    assert answer.status_code == 400
    assert why in answer.json()["message"] and f"set {SETTING}=true" in answer.json()["message"]
    assert listed(strict_server, project) == []


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://[::1]:99999/", "http://:80/", "gopher://10.0.0.1/"])
def test_a_malformed_endpoint_is_a_400_with_either_setting(strict_server: Server, server: Server,
                                                           endpoint: str) -> None:
    for srv in (strict_server, server):
        project = srv.create_project(f"malformed-{next(_names)}")
        answer = create(srv, project, endpoint)
        assert answer.status_code == 400 and "endpoint" in answer.json()["message"]
        assert listed(srv, project) == []


def test_an_update_to_a_private_target_is_a_400_and_changes_nothing(strict_server: Server) -> None:
    project = strict_server.create_project("update-refused")
    public = "https://93.184.216.34/hook"  # checked (a literal: nothing is resolved), never contacted
    created = create(strict_server, project, public)
    assert created.status_code == 200
    url = f"{base_url(strict_server, project)}/{created.json()['id']}"
    for endpoint in ("http://localhost:9/hook", "http://[::1"):
        answer = httpx.patch(url, headers={"Secret-Key": project["token"]}, json={"spec": {"endpoint": endpoint}})
        assert answer.status_code == 400 and "message" in answer.json()
    assert [w["endpoint"] for w in listed(strict_server, project)] == [public]


def test_test_reports_status_and_latency_but_not_the_body(server: Server, project: dict[str, str]) -> None:
    with running_receiver(answer=b"process_cpu_seconds_total 12.5") as receiver:
        nexus = nexus_project(server, project["token"], project["datature_project_id"])
        webhook_id = nexus.batch.webhooks.create("metrics", webhook_spec(receiver)).id
        answer = httpx.post(f"{base_url(server, project)}/{webhook_id}:test", headers={"Secret-Key": project["token"]})
        assert len(receiver.received) == 1
    assert answer.status_code == 200
    report = answer.json()
    assert (report["status"], report["responseCode"]) == ("Ok", 200) and isinstance(report["latencyMs"], int)
    assert "process_cpu_seconds_total" not in answer.text and "body" not in report


def test_a_stored_loopback_webhook_is_refused_when_sent(strict_server: Server) -> None:
    """The check holds where the POST is made, not only where the endpoint is set: a loopback webhook
    already in the store (made while the setting was on, or before this rule) is refused, and not
    contacted, by `:test` and by job deliveries alike (the same client)."""
    project = strict_server.create_project("stored-loopback")
    with running_receiver() as receiver:
        webhook_id = store_webhook(strict_server, project, receiver.url, receiver.secret)
        nexus = nexus_project(strict_server, project["token"], project["datature_project_id"])
        report = nexus.batch.webhooks.test(f"webhook_{webhook_id}")
        assert receiver.received == []
    assert (report.status, report.response_code) == ("Failed", 0)
    assert "host 127.0.0.1 is a loopback address" in report.reason and SETTING in report.reason


def store_webhook(server: Server, project: dict[str, str], endpoint: str, secret: str) -> str:
    """Write a webhook straight into the server's store, past the check at create; its core id."""
    db = open_database(Settings(data_dir=server.data_dir, database_url=database_url_for(server.data_dir)))
    try:
        with db.write() as session:
            project_id = session.scalars(select(ProjectRow.id).where(ProjectRow.name == project["name"])).one()
            now = utcnow()
            row = WebhookRow(id=str(uuid.uuid4()), project_id=project_id, name="stored", endpoint=endpoint,
                             secret=secret, max_retries=0, max_backoff_ms=0, created_at=now, updated_at=now)
            session.add(row)
            return row.id
    finally:
        db.close()

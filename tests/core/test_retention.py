from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from modelbay.core import stored_requests
from modelbay.core.bus import Bus
from modelbay.core.clock import utcnow
from modelbay.core.nodes import Nodes
from modelbay.core.payloads import Payloads
from modelbay.core.deployments import Deployments
from modelbay.core.pipeline_requests import OPERATOR_REQUESTS, PIPELINE_REQUESTS, PipelineRequests
from modelbay.core.pipelines import Pipelines
from modelbay.core.projects import Projects
from modelbay.core.requests import Requests
from modelbay.core.states import REQUESTS
from modelbay.store.blobs import LocalBlobStore
from modelbay.store.db import Database


def test_finished_requests_past_the_retention_time_are_swept_and_others_kept(db: Database, tmp_path: Path) -> None:
    projects = Projects(db, "admin", Bus())
    token = projects.create("retention").token
    project = projects.get(projects.authenticate(token), "retention")
    deployments = Deployments(db, Bus())
    deployments.create(project, {"name": "d", "input_type": "plain", "output_type": "plain"})
    version = deployments.create_version(project, "d", {"name": "v1", "request_retention_time": 3600})
    now = utcnow()

    def row(request_id: str, status: str, finished_ago_s: float | None) -> dict[str, object]:
        finished = None if finished_ago_s is None else now - timedelta(seconds=finished_ago_s)
        return {"id": request_id, "project_id": project.id, "deployment_id": version.deployment_id,
                "version_id": version.id, "mode": "batch", "status": status, "priority": 1, "timeout": 10,
                "input_size": 0, "origin": {}, "created_at": now - timedelta(days=2), "finished_at": finished}

    with db.write() as session:
        session.execute(insert(REQUESTS), [
            row("old-done", "completed", 7200), row("old-failed", "failed", 3601),
            row("fresh", "completed", 10), row("waiting", "pending", None),
        ])
    payloads = Payloads(db, LocalBlobStore(tmp_path / "blobs"))
    requests = Requests(db, None, deployments, payloads, Nodes(db, tmp_path, lease_s=30))  # type: ignore[arg-type]
    assert requests.sweep_expired() == 2
    with db.read() as session:
        assert sorted(session.scalars(select(REQUESTS.c.id))) == ["fresh", "waiting"]


@pytest.mark.parametrize("ids_per_statement", [500, 1])
def test_finished_pipeline_requests_past_retention_are_swept_with_their_sub_requests(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ids_per_statement: int) -> None:
    # with one id per statement, every `IN (…)` of the sweep is split: what it removes must not change
    monkeypatch.setattr(stored_requests, "IDS_PER_STATEMENT", ids_per_statement)
    projects = Projects(db, "admin", Bus())
    token = projects.create("retention").token
    project = projects.get(projects.authenticate(token), "retention")
    pipelines = Pipelines(db, Bus())
    pipelines.create(project, {"name": "p", "input_type": "plain", "output_type": "plain"})
    version = pipelines.create_version(project, "p", {
        "version": "v1", "request_retention_time": 3600,
        "attachments": [{"destination_name": "pipeline_end", "sources": [{"source_name": "pipeline_start"}]}]})
    now = utcnow()

    def row(request_id: str, status: str, finished_ago_s: float | None, parent: str | None = None) -> dict[str, object]:
        finished = None if finished_ago_s is None else now - timedelta(seconds=finished_ago_s)
        return {"id": request_id, "project_id": project.id, "pipeline_id": version.pipeline_id,
                "version_id": version.id, "parent_id": parent, "mode": "direct", "status": status, "timeout": 10,
                "input_size": 0, "output_size": 0, "steps": [], "origin": {}, "created_at": now - timedelta(days=2),
                "finished_at": finished}

    with db.write() as session:
        session.execute(insert(PIPELINE_REQUESTS), [
            row("old", "completed", 7200), row("old-child", "completed", 7200, parent="old"),
            row("old-2", "cancelled", 7200), row("old-grandchild", "completed", 7200, parent="old-child"),
            row("fresh", "failed", 10), row("running", "processing", None),
        ])
        session.execute(insert(OPERATOR_REQUESTS), [{
            "id": "op", "pipeline_request_id": "old-child", "pipeline_object": "f", "operator": "function",
            "sequence_id": "1", "status": "completed", "input_size": 0, "output_size": 0, "created_at": now}])
    payloads = Payloads(db, LocalBlobStore(tmp_path / "blobs"))
    sweeper = PipelineRequests(db, Nodes(db, tmp_path, lease_s=30.0), pipelines, None, None, payloads)  # type: ignore[arg-type]
    assert sweeper.sweep_expired() == 2
    with db.read() as session:
        assert sorted(session.scalars(select(PIPELINE_REQUESTS.c.id))) == ["fresh", "running"]
        assert list(session.scalars(select(OPERATOR_REQUESTS.c.id))) == []

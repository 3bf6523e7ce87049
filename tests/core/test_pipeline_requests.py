"""Pipeline requests walked by the core, on a store without a server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from modelbay.core import operators
from modelbay.core.bus import Bus
from modelbay.core.nodes import Nodes
from modelbay.core.payloads import Payloads
from modelbay.core.pipeline_requests import PIPELINE_REQUESTS, PipelineRequests
from modelbay.core.pipeline_walk import Run
from modelbay.core.pipelines import Pipelines, Plan
from modelbay.core.projects import Projects
from modelbay.core.states import RequestStatus as Status
from modelbay.store.blobs import LocalBlobStore
from modelbay.store.db import Database, Insert
from modelbay.store.tables import ProjectRow

X = [{"name": "x", "data_type": "int"}]
TO_X = [{"source_field_name": "x", "destination_field_name": "x"}]


def _plus_one(db: Database, blobs: Path) -> tuple[ProjectRow, Plan, PipelineRequests]:
    """A project with pipeline `p`: one function operator adding 1 to `x`."""
    projects = Projects(db, "admin", Bus())
    project = projects.get(projects.authenticate(projects.create("sub").token), "sub")
    pipelines = Pipelines(db, Bus())
    pipelines.create(project, {"name": "p", "input_fields": X, "output_fields": X})
    pipelines.create_version(project, "p", {"version": "v1", "objects": [
        {"name": "plus", "reference_type": "operator", "reference_name": "function",
         "configuration": {"expression": "x + 1", "input_fields": X, "output_fields": X}}], "attachments": [
        {"destination_name": "plus", "sources": [{"source_name": "pipeline_start", "mapping": TO_X}]},
        {"destination_name": "pipeline_end", "sources": [{"source_name": "plus", "mapping": TO_X}]}]})
    payloads = Payloads(db, LocalBlobStore(blobs))
    requests = PipelineRequests(db, Nodes(db, blobs.parent, lease_s=30.0), pipelines, None, None,
                                payloads)  # type: ignore[arg-type]
    return project, pipelines.plan(project, "p", None), requests


def _status(db: Database, request_id: str) -> str | None:
    with db.read() as session:
        return session.scalar(select(PIPELINE_REQUESTS.c.status).where(PIPELINE_REQUESTS.c.id == request_id))


def test_a_sub_pipeline_that_starts_after_its_parent_was_stopped_runs_no_step(db: Database, tmp_path: Path) -> None:
    # Given a one-operator pipeline, and a parent run that was stopped while its sub-pipeline row was written
    project, plan, requests = _plus_one(db, tmp_path / "blobs")

    async def run_child() -> str:
        parent = Run("parent", project, plan, 60, asyncio.get_running_loop().time() + 60, stopping=True)
        row = await requests._new_row(plan, "direct", 60, {"x": 1}, {}, Status.PROCESSING, "node",
                                      parent_id="parent")
        await db.committer.submit_async(Insert(PIPELINE_REQUESTS, [row]))
        # When the sub-pipeline request runs
        record = await requests._run(project, plan, row["id"], "node", {"x": 1}, 60, Status.PROCESSING,
                                     row["created_at"], parent=parent)
        # Then it is cancelled with its parent and its operator never ran
        assert record.status == "cancelled" and record.steps == []
        assert parent.children == {}
        return str(row["id"])

    assert _status(db, asyncio.run(run_child())) == "cancelled"


def test_an_internal_error_in_a_step_fails_the_request_instead_of_leaving_it_processing(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, plan, requests = _plus_one(db, tmp_path / "blobs")

    def broken(*_: object) -> list[object]:
        raise RuntimeError("a bug in an operator")
    monkeypatch.setattr(operators, "run_item", broken)

    record = asyncio.run(requests.direct(project, plan, {"x": 1}, timeout=60, origin={}))

    assert (record.status, record.error_message) == ("failed", "The pipeline request failed on an internal error")
    assert _status(db, record.id) == "failed"

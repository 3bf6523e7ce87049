"""Request payloads: inline when small, blobs when large, read back and removed with their rows."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import insert, select

from modelbay.core.bus import Bus
from modelbay.core.clock import utcnow
from modelbay.core.errors import NotFound
from modelbay.core.nodes import Nodes
from modelbay.core.payloads import INLINE_MAX_BYTES, ORPHAN_GRACE_S, Payloads
from modelbay.core.pipeline_requests import OPERATOR_REQUESTS, PIPELINE_REQUESTS, PipelineRequests
from modelbay.core.pipelines import Pipelines
from modelbay.core.projects import Projects
from modelbay.core.states import REQUESTS
from modelbay.store.blobs import LocalBlobStore
from modelbay.store.db import Database
from modelbay.store.tables import RequestRow

TEXT = [{"name": "text", "data_type": "string"}]


@pytest.fixture
def payloads(db: Database, tmp_path: Path) -> Payloads:
    return Payloads(db, LocalBlobStore(tmp_path / "blobs"))


def files(tmp_path: Path) -> list[str]:
    """Every payload file, as its path under the blob store."""
    root = tmp_path / "blobs" / "payloads"
    return sorted(str(p.relative_to(tmp_path / "blobs")) for p in root.rglob("*") if p.is_file())


def test_a_payload_up_to_the_threshold_stays_in_its_row(payloads: Payloads, tmp_path: Path) -> None:
    encoded = b"x" * INLINE_MAX_BYTES
    assert asyncio.run(payloads.values("r1", "data", encoded)) == {"data": encoded}
    assert asyncio.run(payloads.values("r1", "result", None)) == {"result": None}
    assert files(tmp_path) == []


def test_a_payload_over_the_threshold_is_a_blob_named_by_a_server_chosen_key(
        payloads: Payloads, tmp_path: Path) -> None:
    encoded = orjson.dumps("y" * INLINE_MAX_BYTES)  # the quotes take it over
    values = asyncio.run(payloads.values("r1", "result", encoded))
    assert values == {"result": None, "result_key": "payloads/r1/result"}
    assert (tmp_path / "blobs" / "payloads" / "r1" / "result").read_bytes() == encoded
    assert payloads.value(None, "payloads/r1/result") == "y" * INLINE_MAX_BYTES
    assert payloads.value(b'{"a": 1}', None) == {"a": 1}
    assert payloads.value(None, None) is None


def test_a_row_read_back_holds_its_payloads_whether_inline_or_blobs(payloads: Payloads) -> None:
    big = b"z" * (INLINE_MAX_BYTES + 1)
    stored = {**asyncio.run(payloads.values("r1", "data", big)), **asyncio.run(payloads.values("r1", "result", b"1"))}
    row = RequestRow(id="r1", **stored)
    assert (row.data, row.data_key, row.result) == (None, "payloads/r1/data", b"1")

    assert payloads.fill(row) is row
    assert (row.data, row.result) == (big, b"1")


def test_a_row_whose_blob_went_with_a_delete_meanwhile_is_not_found(payloads: Payloads) -> None:
    asyncio.run(payloads.values("r1", "data", b"z" * (INLINE_MAX_BYTES + 1)))
    payloads.discard(["payloads/r1/data"])
    with pytest.raises(NotFound, match="Request 'r1' was not found"):
        payloads.fill(RequestRow(id="r1", data_key="payloads/r1/data"))


def test_discard_removes_the_blobs(payloads: Payloads, tmp_path: Path) -> None:
    big = b"z" * (INLINE_MAX_BYTES + 1)
    asyncio.run(payloads.values("r1", "data", big))
    asyncio.run(payloads.values("r1", "result", big))
    payloads.discard(["payloads/r1/data"])
    assert files(tmp_path) == ["payloads/r1/result"]
    payloads.discard(["payloads/r1/result", "payloads/r1/result"])  # twice: already gone is fine
    assert files(tmp_path) == []


def test_the_orphan_sweep_removes_old_files_no_row_names_and_keeps_the_rest(
        db: Database, payloads: Payloads, tmp_path: Path) -> None:
    big = b"z" * (INLINE_MAX_BYTES + 1)
    for request_id in ("named", "deleted", "fresh"):
        asyncio.run(payloads.values(request_id, "data", big))
        asyncio.run(payloads.values(request_id, "result", big))
    now = utcnow()
    with db.write() as session:  # `named` keeps its input blob; its result was dropped (a lost race)
        session.execute(insert(REQUESTS), [{
            "id": "named", "project_id": "p", "deployment_id": "d", "version_id": "v", "mode": "batch",
            "status": "completed", "priority": 1, "timeout": 10, "data_key": "payloads/named/data", "input_size": 0,
            "origin": {}, "created_at": now}])
    old = time.time() - ORPHAN_GRACE_S - 1
    for request_id in ("named", "deleted"):
        for column in ("data", "result"):
            os.utime(tmp_path / "blobs" / "payloads" / request_id / column, (old, old))

    assert payloads.sweep_orphans() == 3
    assert files(tmp_path) == ["payloads/fresh/data", "payloads/fresh/result", "payloads/named/data"]

    # and a folder left empty goes once it has been so for as long
    emptied = tmp_path / "blobs" / "payloads" / "deleted"
    assert emptied.is_dir()
    os.utime(emptied, (old, old))
    assert payloads.sweep_orphans() == 0
    assert not emptied.exists()
    assert files(tmp_path) == ["payloads/fresh/data", "payloads/fresh/result", "payloads/named/data"]


def test_a_pipeline_request_and_its_operator_request_keep_large_payloads_as_blobs_until_deleted(
        db: Database, payloads: Payloads, tmp_path: Path) -> None:
    # Given a pipeline whose one object, an if-condition, passes a string through
    projects = Projects(db, "admin", Bus())
    project = projects.get(projects.authenticate(projects.create("big").token), "big")
    pipelines = Pipelines(db, Bus())
    pipelines.create(project, {"name": "p", "input_fields": TEXT, "output_fields": TEXT})
    to_text = [{"source_field_name": "text", "destination_field_name": "text"}]
    pipelines.create_version(project, "p", {"version": "v1", "objects": [
        {"name": "pass", "reference_type": "operator", "reference_name": "if-condition",
         "configuration": {"expression": "True", "input_fields": TEXT, "output_fields": TEXT}}], "attachments": [
        {"destination_name": "pass", "sources": [{"source_name": "pipeline_start", "mapping": to_text}]},
        {"destination_name": "pipeline_end", "sources": [{"source_name": "pass", "mapping": to_text}]}]})
    plan = pipelines.plan(project, "p", None)
    requests = PipelineRequests(db, Nodes(db, tmp_path, lease_s=30.0), pipelines, None, None, payloads)  # type: ignore[arg-type]
    item = {"text": "é" * INLINE_MAX_BYTES}

    async def run() -> str:
        record = await requests.direct(project, plan, item, timeout=60, origin={})
        await db.committer.submit_async(lambda conn: None)  # the operator row is written without a wait
        return record.id

    # When a large item runs through it
    request_id = asyncio.run(run())

    # Then neither row holds the bytes, and both read back whole
    with db.read() as session:
        stored = session.execute(select(PIPELINE_REQUESTS.c.data, PIPELINE_REQUESTS.c.result)).one()
        [operator_id] = session.scalars(select(OPERATOR_REQUESTS.c.id))
        operator_stored = session.execute(select(OPERATOR_REQUESTS.c.data, OPERATOR_REQUESTS.c.result)).one()
    assert tuple(stored) == tuple(operator_stored) == (None, None)
    row = requests.get(plan, request_id)
    assert orjson.loads(row.data) == orjson.loads(row.result) == item
    operator_row, _ = requests.operator_request(plan, operator_id)
    assert orjson.loads(operator_row.data) == item and orjson.loads(operator_row.result) == [item]
    assert len(files(tmp_path)) == 4

    # And deleting the request removes every blob
    asyncio.run(requests.delete_by_id([request_id]))
    assert files(tmp_path) == []

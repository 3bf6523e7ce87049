"""Datasets through the official `datature` SDK: signed uploads, checks of the file, the calls around it."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import crc32c
import httpx
import pytest
from datature.nexus import error
from sqlalchemy import select

from modelbay.core.errors import Forbidden
from modelbay.core.signed_urls import UrlSigner
from modelbay.store.blobs import BLOBS, DatabaseBlobStore
from modelbay.store.db import Database
from tests.fixtures.databases import database_url_for
from tests.fixtures.server import Server


def stored_datasets(server: Server, dataset_id: str) -> list[bytes]:
    """The blobs of a dataset: files in the data dir on SQLite, in the database's blob tables
    (every node reaches them) otherwise."""
    if (url := database_url_for(server.data_dir)) is None:
        return [p.read_bytes() for p in (server.data_dir / "blobs" / "datasets").glob(f"{dataset_id}*")]
    db = Database(url)
    try:
        with db.read() as session:
            keys = list(session.scalars(select(BLOBS.c.key).where(BLOBS.c.key.startswith(f"datasets/{dataset_id}"))))
        return [DatabaseBlobStore(db, server.data_dir / "test-reads").read_bytes(key) for key in keys]
    finally:
        db.close()


def ndjson(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_create_uploads_the_file_and_counts_its_items(nexus: Any, server: Server, tmp_path: Path) -> None:
    path = ndjson(tmp_path / "items.ndjson", [f'{{"kind": "Image", "url": "https://x/{i}.jpg"}}' for i in range(7)])
    created = nexus.batch.datasets.create("photos", path)
    assert created.id.startswith("dataset_") and created.object == "dataset"
    upload = created.status.source.upload_url
    assert upload.method == "PUT" and upload.expires_at_time > time.time() * 1000
    assert "Secret-Key" not in upload.headers

    done = nexus.batch.datasets.wait_until_done(created.id, interval=1)
    assert done.status.overview == "Uploaded" and done.status.item_count == 7
    assert done.expiry_time > time.time() * 1000 + 86_400_000  # days ahead: `list` keeps it
    assert [d.id for d in nexus.batch.datasets.list().data] == [created.id]
    # The file is a blob, byte for byte, not a row's value.
    assert stored_datasets(server, created.id.removeprefix("dataset_")) == [Path(path).read_bytes()]

    assert nexus.batch.datasets.delete(created.id).deleted is True
    with pytest.raises(error.NotFoundError):
        nexus.batch.datasets.get(created.id)


def gcs_crc32c(body: bytes) -> str:
    return base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()


def create_declaring(server: Server, project: dict[str, str], body: bytes) -> dict[str, Any]:
    """Create a dataset as the SDK does, declaring the size and CRC32C of `body`; the raw answer."""
    answer = httpx.post(
        f"{server.url}/projects/{project['datature_project_id']}/batch/datasets",
        json={"name": "declared", "spec": {"source": {"kind": "UploadedNewlineDelimitedJsonFile",
                                                      "sizeBytes": len(body), "crc32c": gcs_crc32c(body)}}},
        headers={"Secret-Key": project["token"]},
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_file_that_differs_from_its_checksum_fails_the_upload(
    nexus: Any, server: Server, project: dict[str, str]
) -> None:
    created = create_declaring(server, project, b'{"x": 1}\n')
    url = created["status"]["source"]["uploadUrl"]["url"]
    answer = httpx.put(url, content=b'{"x": 2}\n')  # same size, other bytes
    assert answer.status_code == 400 and "CRC32C" in answer.json()["message"]
    got = nexus.batch.datasets.get(created["id"])
    assert got.status.overview == "FailedUpload" and "CRC32C" in got.status.message
    with pytest.raises(error.BadRequestError):
        nexus.batch.datasets.wait_until_done(created["id"], interval=1)


def test_a_file_of_another_size_fails_the_upload(nexus: Any, server: Server, project: dict[str, str]) -> None:
    created = create_declaring(server, project, b'{"x": 1}\n')
    answer = httpx.put(created["status"]["source"]["uploadUrl"]["url"], content=b'{"x": 10}\n')
    assert answer.status_code == 400
    assert nexus.batch.datasets.get(created["id"]).status.overview == "FailedUpload"


def test_a_line_that_is_not_json_fails_processing_with_a_clear_message(nexus: Any, tmp_path: Path) -> None:
    path = ndjson(tmp_path / "bad.ndjson", ['{"x": 1}', "not json", '{"x": 3}'])
    created = nexus.batch.datasets.create("bad", path)
    got = nexus.batch.datasets.get(created.id)
    assert got.status.overview == "FailedProcessing" and "Item 2" in got.status.message
    assert got.status.item_count == 0


def test_the_upload_url_authenticates_itself(nexus: Any, server: Server, project: dict[str, str]) -> None:
    body = b'{"x": 1}\n'
    created = create_declaring(server, project, body)
    url = created["status"]["source"]["uploadUrl"]["url"]
    tampered = url.replace("expires=", "expires=9")
    assert httpx.put(tampered, content=body).status_code == 403
    assert httpx.put(url.split("?")[0], content=body).status_code == 403
    other = url.replace(created["id"].removeprefix("dataset_")[:8], "00000000")
    assert httpx.put(other, content=body).status_code == 403  # a signature is good for its own path only
    assert nexus.batch.datasets.get(created["id"]).status.overview == "Waiting"  # nothing changed
    assert httpx.put(url, content=body).status_code == 200
    assert nexus.batch.datasets.get(created["id"]).status.overview == "Uploaded"
    assert httpx.put(url, content=body).status_code == 409  # once only


def test_an_expired_signature_is_refused() -> None:
    signer = UrlSigner(b"k" * 32)
    query = dict(part.split("=") for part in signer.query("PUT", "/p", 1_000).split("&"))
    signer.check("PUT", "/p", query["expires"], query["signature"], now_ms=999)
    with pytest.raises(Forbidden, match="expired"):
        signer.check("PUT", "/p", query["expires"], query["signature"], now_ms=1_000)


def test_a_bad_create_is_a_400(server: Server, project: dict[str, str], nexus: Any) -> None:
    base = f"{server.url}/projects/{project['datature_project_id']}/batch/datasets"
    headers = {"Secret-Key": project["token"]}
    for body in (
        {"name": "x", "spec": {"source": {"kind": "Other", "sizeBytes": 1, "crc32c": "VYiezg=="}}},
        {"name": "x", "spec": {"source": {"kind": "UploadedNewlineDelimitedJsonFile", "sizeBytes": 0,
                                          "crc32c": "VYiezg=="}}},
        {"name": "x", "spec": {"source": {"kind": "UploadedNewlineDelimitedJsonFile", "sizeBytes": 5,
                                          "crc32c": "nope"}}},
        {"name": "x"},
    ):
        answer = httpx.post(base, json=body, headers=headers)
        assert answer.status_code == 400 and answer.json()["message"], body
    assert nexus.batch.datasets.list().data == []


def test_unknown_datasets_are_404(nexus: Any) -> None:
    for dataset_id in ("dataset_nope", "dataset_00000000-0000-0000-0000-000000000000"):
        with pytest.raises(error.NotFoundError):
            nexus.batch.datasets.get(dataset_id)

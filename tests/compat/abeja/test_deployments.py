from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests
from abeja.exceptions import BadRequest, Conflict, NotFound

from tests.compat.abeja.conftest import ECHO, upload
from tests.fixtures.server import wait_until


def test_a_deployment_is_created_read_listed_patched_and_deleted(deployments: Any, org: dict[str, str]) -> None:
    o = org["organization_id"]
    created = deployments.create_deployment(o, "detector", description="finds things")
    d = created["deployment_id"]
    assert re.fullmatch(r"[1-9][0-9]{12}", d)
    assert created["name"] == "detector" and created["description"] == "finds things"
    assert created["created_at"].endswith("Z")
    assert deployments.get_deployment(o, d)["deployment_id"] == d
    assert [e["deployment_id"] for e in deployments.get_deployments(o)["entries"]] == [d]
    assert deployments.patch_deployment(o, d, name="finder")["name"] == "finder"
    assert deployments.get_deployment(o, d)["name"] == "finder"
    assert deployments.delete_deployment(o, d)["message"].startswith(d)
    with pytest.raises(NotFound):
        deployments.get_deployment(o, d)
    assert deployments.get_deployments(o) == {"entries": []}


def test_a_duplicate_or_invalid_deployment_name_is_refused(deployments: Any, org: dict[str, str]) -> None:
    o = org["organization_id"]
    deployments.create_deployment(o, "twice")
    with pytest.raises(Conflict):
        deployments.create_deployment(o, "twice")
    with pytest.raises(BadRequest) as bad:
        deployments.create_deployment(o, "Not A Valid Name!")
    assert "name" in bad.value.error_description


def test_a_code_version_takes_its_archive_by_signed_put_and_builds(
    deployments: Any, org: dict[str, str], tmp_path: Path
) -> None:
    o = org["organization_id"]
    d = deployments.create_deployment(o, "app")["deployment_id"]
    created = deployments.create_deployment_version(o, d, "0.0.1", "main:handler", "abeja-inc/all-cpu:19.10",
                                                    {"GREETING": "hi"})
    v = created["version_id"]
    assert re.fullmatch(r"ver-[0-9a-f]{16}", v)
    assert created["handler"] == "main:handler" and created["user_parameters"] == {"GREETING": "hi"}
    assert created["image"] == "abeja-inc/all-cpu:19.10" and created["status"] == "UPLOAD_WAITING"
    assert "signature=" in created["upload_url"] and "expires=" in created["upload_url"]

    response = upload(created, ECHO, tmp_path)  # no auth header: the URL is the credential
    assert response.status_code == 200, response.text
    version = wait_until(lambda: (v2 := deployments.get_deployment_version(o, d, v))["status"] == "READY" and v2)
    assert version["version"] == "0.0.1"
    assert [e["version_id"] for e in deployments.get_deployment_versions(o, d)["entries"]] == [v]

    download = deployments.download_deployment_version(o, d, v)["download_uri"]
    archive = requests.get(download, timeout=30)
    assert archive.status_code == 200 and archive.content[:2] == b"\x1f\x8b"  # the gzip we uploaded

    assert deployments.delete_deployment_version(o, d, v)["message"] == f"{v} deleted"
    with pytest.raises(NotFound):
        deployments.get_deployment_version(o, d, v)


def _with_query(url: str, **changes: Any) -> str:
    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update({k: str(v) for k, v in changes.items()})
    return parts._replace(query=urlencode(query)).geturl()


def test_a_tampered_or_expired_upload_url_is_refused_and_changes_nothing(
    deployments: Any, org: dict[str, str], tmp_path: Path
) -> None:
    o = org["organization_id"]
    d = deployments.create_deployment(o, "app")["deployment_id"]
    created = deployments.create_deployment_version(o, d, "0.0.1", "main:handler", "img")
    signature = parse_qs(urlparse(created["upload_url"]).query)["signature"][0]
    tampered = _with_query(created["upload_url"], signature=("0" if signature[0] != "0" else "1") + signature[1:])
    expired = _with_query(created["upload_url"], expires=int(time.time()) - 10)
    unsigned = created["upload_url"].split("?")[0]
    for url in (tampered, expired, unsigned):
        answer = upload({**created, "upload_url": url}, ECHO, tmp_path)
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"] == "forbidden"
    assert deployments.get_deployment_version(o, d, created["version_id"])["status"] == "UPLOAD_WAITING"


def test_a_corrupt_archive_fails_its_build_saying_why(deployments: Any, org: dict[str, str]) -> None:
    o = org["organization_id"]
    d = deployments.create_deployment(o, "app")["deployment_id"]
    created = deployments.create_deployment_version(o, d, "0.0.1", "main:handler", "img")
    assert requests.put(created["upload_url"], data=b"this is not a tar.gz", timeout=30).status_code == 200
    version = wait_until(lambda: (v := deployments.get_deployment_version(o, d, created["version_id"]))
                         ["status"] == "FAILED" and v, timeout=60)
    assert version["build_error"] and "archive" in version["build_error"].lower()


def test_a_bad_handler_or_version_is_a_400(deployments: Any, org: dict[str, str]) -> None:
    o = org["organization_id"]
    d = deployments.create_deployment(o, "app")["deployment_id"]
    with pytest.raises(BadRequest):
        deployments.create_deployment_version(o, d, "0.0.1", "no-colon", "img")
    with pytest.raises(BadRequest):
        deployments.create_deployment_version(o, d, "bad version!", "main:handler", "img")
    with pytest.raises(BadRequest):
        deployments.create_deployment_version(o, d, "0.0.1", "main:handler", "img", {"A": {"nested": 1}})
    assert deployments.get_deployment_versions(o, d) == {"entries": []}

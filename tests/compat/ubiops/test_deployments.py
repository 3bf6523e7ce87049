"""The official `ubiops` SDK, unchanged, against a real modelbay server: setup calls."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ubiops

from tests.compat.ubiops.conftest import sdk_client
from tests.fixtures.packages import IMPORT_ERROR, NOOP, make_package_dir
from tests.fixtures.server import Server


def test_service_status_answers(api: ubiops.CoreApi) -> None:
    assert api.service_status().status == "ok"


def test_a_project_token_sees_only_its_own_project(api: ubiops.CoreApi, project: dict[str, str], server: Server) -> None:
    assert [p.name for p in api.projects_list()] == [project["name"]]
    assert api.projects_get(project["name"]).organization_name
    other = server.create_project(f"{project['name']}-other")
    with pytest.raises(ubiops.ApiException) as denied:
        api.projects_get(other["name"])
    assert denied.value.status == 403


def test_an_unknown_token_is_refused_with_401(server: Server) -> None:
    with sdk_client(server, "not-a-token") as client, pytest.raises(ubiops.ApiException) as denied:
        ubiops.CoreApi(client).projects_list()
    assert denied.value.status == 401
    assert "Invalid token" in denied.value.body


def test_the_admin_token_creates_projects(server: Server, project: dict[str, str]) -> None:
    with sdk_client(server, server.admin_token) as client:
        api = ubiops.CoreApi(client)
        name = f"{project['name']}-made-by-admin"
        created = api.projects_create(ubiops.ProjectCreate(name=name, organization_name="modelbay"))
        assert created.name == name
        assert name in [p.name for p in api.projects_list()]


def test_user_get_names_the_tokens_project_or_the_admin(api: ubiops.CoreApi, project: dict[str, str],
                                                       server: Server) -> None:
    # `ubiops signin` and `ubiops status` show this user's email
    user = api.user_get()
    assert (user.email, user.name, user.authentication) == (f"{project['name']}@modelbay.local", project["name"],
                                                           "token")
    with sdk_client(server, server.admin_token) as admin_client:
        assert ubiops.CoreApi(admin_client).user_get().email == "admin@modelbay.local"


def test_a_project_token_may_not_create_projects(api: ubiops.CoreApi) -> None:
    with pytest.raises(ubiops.ApiException) as denied:
        api.projects_create(ubiops.ProjectCreate(name="sneaky", organization_name="modelbay"))
    assert denied.value.status == 403


def test_deployments_are_created_listed_updated_and_deleted(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    p = project["name"]
    fields = [{"name": "image", "data_type": "array_double"}, {"name": "k", "data_type": "int"}]
    created = api.deployments_create(
        p, ubiops.DeploymentCreate(name="clf", input_type="structured", output_type="plain", input_fields=fields,
                                   description="a classifier", labels={"team": "a"})
    )
    assert (created.name, created.project, created.input_type, created.output_type) == ("clf", p, "structured", "plain")
    assert [(f.name, f.data_type) for f in created.input_fields] == [("image", "array_double"), ("k", "int")]
    api.deployments_create(p, ubiops.DeploymentCreate(name="echo", input_type="plain", output_type="plain"))
    assert sorted(d.name for d in api.deployments_list(p)) == ["clf", "echo"]
    updated = api.deployments_update(p, "clf", ubiops.DeploymentUpdate(description="changed"))
    assert updated.description == "changed"
    assert api.deployments_get(p, "clf").default_version is None
    api.deployments_delete(p, "clf")
    with pytest.raises(ubiops.ApiException) as gone:
        api.deployments_get(p, "clf")
    assert gone.value.status == 404


def test_a_duplicate_deployment_name_is_a_conflict(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    body = ubiops.DeploymentCreate(name="twice", input_type="plain", output_type="plain")
    api.deployments_create(project["name"], body)
    with pytest.raises(ubiops.ApiException) as clash:
        api.deployments_create(project["name"], body)
    assert clash.value.status == 409


def test_a_field_of_an_unknown_data_type_is_a_400(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    with pytest.raises(ubiops.ApiException) as bad:
        api.deployments_create(
            project["name"],
            ubiops.DeploymentCreate(name="bad", input_type="structured", output_type="structured",
                                    input_fields=[{"name": "a", "data_type": "float"}], output_fields=[]),
        )
    assert bad.value.status == 400 and "float" in bad.value.body


def test_versions_get_server_defaults_and_the_first_becomes_the_default(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="dep", input_type="plain", output_type="plain"))
    v1 = api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v1"))
    assert v1.environment_name == "python3-11"
    assert (v1.minimum_instances, v1.maximum_instances, v1.maximum_idle_time) == (0, 5, 300)
    assert v1.request_retention_mode == "full" and v1.status == "unavailable"
    api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v2", maximum_instances=2))
    assert api.deployments_get(p, "dep").default_version == "v1"
    assert [v.version for v in api.deployment_versions_list(p, "dep")] == ["v1", "v2"]
    updated = api.deployment_versions_update(p, "dep", "v2", ubiops.DeploymentVersionUpdate(maximum_idle_time=10))
    assert updated.maximum_idle_time == 10 and updated.maximum_instances == 2
    api.deployments_update(p, "dep", ubiops.DeploymentUpdate(default_version="v2"))
    assert api.deployment_versions_get(p, "dep", "v2").default is True
    api.deployment_versions_delete(p, "dep", "v1")
    with pytest.raises(ubiops.ApiException) as gone:
        api.deployment_versions_get(p, "dep", "v1")
    assert gone.value.status == 404


def test_a_version_setting_out_of_range_is_a_400(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="dep", input_type="plain", output_type="plain"))
    with pytest.raises(ubiops.ApiException) as bad:
        api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v1", minimum_instances=3, maximum_instances=1))
    assert bad.value.status == 400 and "minimum_instances" in bad.value.body
    with pytest.raises(ubiops.ApiException) as bad_env:
        api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v1", environment="cobol-85"))
    assert bad_env.value.status == 400 and "cobol-85" in bad_env.value.body
    assert api.deployment_versions_list(p, "dep") == []


def test_environments_and_their_tags_are_listed(api: ubiops.CoreApi, project: dict[str, str]) -> None:
    env = api.environments_get(project["name"], "python3-11")
    assert env.system is True
    tags = api.environment_tags_list(project["name"], "python3-11")
    assert tags and tags[0].environment == "python3-11"


def test_an_uploaded_package_builds_and_the_sdk_wait_returns_at_its_first_poll(
    api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path
) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="dep", input_type="plain", output_type="plain"))
    api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v1"))
    archive = ubiops.utils.zip_dir(str(make_package_dir(tmp_path, NOOP)), str(tmp_path / "pkg.zip"))
    started = time.monotonic()
    upload = api.revisions_file_upload(p, "dep", "v1", file=archive)
    assert upload.success and upload.revision
    ubiops.utils.wait_for_deployment_version(client, p, "dep", "v1", quiet=True, timeout=60)
    # The SDK sleeps 4 s between polls: a wait shorter than that returned at its first poll.
    assert time.monotonic() - started < 4
    version = api.deployment_versions_get(p, "dep", "v1")
    assert (version.status, version.active_revision, version.latest_revision) == ("available", upload.revision, upload.revision)
    revision = api.revisions_get(p, "dep", revision_id=upload.revision, version="v1")
    assert revision.status == "success"
    assert [r.id for r in api.revisions_list(p, "dep", "v1")] == [upload.revision]


def test_a_revisions_archive_downloads_as_uploaded(
    api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path
) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="dep", input_type="plain", output_type="plain"))
    api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v1"))
    archive = ubiops.utils.zip_dir(str(make_package_dir(tmp_path, NOOP)), str(tmp_path / "pkg.zip"))
    revision = api.revisions_file_upload(p, "dep", "v1", file=archive).revision

    # preloaded, the SDK saves the file under the name the answer gives, in its temp folder
    client.configuration.temp_folder_path = str(tmp_path)
    downloaded = api.revisions_file_download(p, "dep", revision, "v1", _preload_content=True,
                                             _progress_bar=False)

    assert Path(downloaded).name == f"dep-v1-{revision}.zip"
    assert Path(downloaded).read_bytes() == Path(archive).read_bytes()
    with pytest.raises(ubiops.ApiException) as missing:
        api.revisions_file_download(p, "dep", "00000000-0000-0000-0000-000000000000", "v1", _progress_bar=False)
    assert missing.value.status == 404


def test_a_package_that_fails_to_import_fails_its_revision_with_the_reason(
    api: ubiops.CoreApi, client: ubiops.ApiClient, project: dict[str, str], tmp_path: Path
) -> None:
    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="dep", input_type="plain", output_type="plain"))
    api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v1"))
    archive = ubiops.utils.zip_dir(str(make_package_dir(tmp_path, IMPORT_ERROR)), str(tmp_path / "pkg.zip"))
    upload = api.revisions_file_upload(p, "dep", "v1", file=archive)
    with pytest.raises(ubiops.utils.exceptions.StatusError, match="failed"):
        ubiops.utils.wait_for_deployment_version(client, p, "dep", "v1", quiet=True, timeout=60)
    revision = api.revisions_get(p, "dep", revision_id=upload.revision, version="v1")
    assert revision.status == "failed" and "Build failed" in revision.error_message
    assert api.deployment_versions_get(p, "dep", "v1").status == "failed"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a zip", "not a valid zip"),
        ("zip-slip", "../"),
        ("no-deployment", "deployment.py"),
    ],
)
def test_a_bad_archive_gives_a_failed_revision_never_a_500(
    api: ubiops.CoreApi, project: dict[str, str], tmp_path: Path, content: object, reason: str
) -> None:
    import zipfile

    p = project["name"]
    api.deployments_create(p, ubiops.DeploymentCreate(name="dep", input_type="plain", output_type="plain"))
    api.deployment_versions_create(p, "dep", ubiops.DeploymentVersionCreate(version="v1"))
    archive = tmp_path / "pkg.zip"
    if isinstance(content, bytes):
        archive.write_bytes(content)
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("../evil.py" if content == "zip-slip" else "other.py", "x = 1\n")
    upload = api.revisions_file_upload(p, "dep", "v1", file=str(archive))
    revision = api.revisions_get(p, "dep", revision_id=upload.revision, version="v1")
    assert revision.status == "failed"
    assert reason in revision.error_message
    assert not (tmp_path.parent / "evil.py").exists()

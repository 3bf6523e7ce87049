"""The `modelbay` command as an operator runs it: a real subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.server import Server, modelbay
from tests.integration.conftest import query, unique

CREDENTIAL_KEYS = {"name", "token", "organization_id", "datature_project_id"}


def console_script() -> str:
    """The installed `modelbay` console script (what `pip install` puts on the PATH)."""
    script = Path(sys.executable).parent / "modelbay"
    assert script.exists(), f"the console script {script} is not installed"
    return str(script)


def one_line(text: str) -> str:
    """CLI messages may be wrapped to the terminal width: compare them with whitespace collapsed."""
    return " ".join(text.split())


def projects_named(data_dir: Path, name: str) -> list[dict[str, str]]:
    # the stored public ids, as the ABEJA and Datature dialects show them
    rows = query(data_dir, "SELECT name, token_hash, CAST(number AS TEXT) AS organization_id, "
                           "'proj_' || handle AS datature_project_id FROM projects WHERE name = ?", name)
    return [dict(row) for row in rows]


def test_project_create_json_prints_exactly_one_object_with_working_credentials(server: Server) -> None:
    name = unique("cli")
    result = modelbay("project", "create", name, "--data-dir", str(server.data_dir), "--json")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    credentials = json.loads(lines[0])
    assert isinstance(credentials, dict)
    assert set(credentials) == CREDENTIAL_KEYS
    assert credentials["name"] == name
    assert re.fullmatch(r"[0-9]{13}", credentials["organization_id"]), credentials
    assert credentials["datature_project_id"].startswith("proj_")
    assert len(credentials["datature_project_id"]) > len("proj_")
    assert isinstance(credentials["token"], str) and len(credentials["token"]) >= 20
    assert [row["organization_id"] for row in projects_named(server.data_dir, name)] == [credentials["organization_id"]]
    # The token works at once on the server running on that data dir.
    response = httpx.get(
        f"{server.url}/v2.1/projects/{name}", headers={"Authorization": f"Token {credentials['token']}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == name


def test_creating_a_project_twice_fails_clearly_and_changes_nothing(server: Server) -> None:
    name = unique("twice")
    first = server.create_project(name)
    before = projects_named(server.data_dir, name)

    second = modelbay("project", "create", name, "--data-dir", str(server.data_dir), "--json")

    assert second.returncode != 0
    assert second.stdout.strip() == ""
    message = one_line(second.stderr)
    assert name in message and "already exists" in message, second.stderr
    assert "Traceback" not in second.stderr
    assert projects_named(server.data_dir, name) == before
    assert len(before) == 1
    response = httpx.get(f"{server.url}/v2.1/projects/{name}", headers={"Authorization": f"Token {first['token']}"})
    assert response.status_code == 200, response.text


def test_an_invalid_project_name_is_refused_with_a_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = modelbay("project", "create", "Bad Name!", "--data-dir", str(data_dir), "--json", "--init")

    assert result.returncode != 0
    assert result.stdout.strip() == ""
    assert "Traceback" not in result.stderr
    assert "name" in one_line(result.stderr).lower(), result.stderr
    assert query(data_dir, "SELECT count(*) FROM projects")[0][0] == 0


@pytest.mark.sqlite_only("the store is a file in the data dir only on SQLite")
def test_project_create_refuses_a_data_dir_without_a_database_unless_told_to_init(tmp_path: Path) -> None:
    data_dir = tmp_path / "mistyped"

    refused = modelbay("project", "create", "first", "--data-dir", str(data_dir), "--json")

    assert refused.returncode != 0
    assert refused.stdout.strip() == ""
    assert "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert str(data_dir.resolve()) in lines[0] and "--init" in lines[0], lines
    assert not data_dir.exists()  # no database, no admin token, not even the directory

    created = modelbay("project", "create", "first", "--data-dir", str(data_dir), "--json", "--init")

    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == "first"
    # Once the database exists, later projects need no --init.
    again = modelbay("project", "create", "second", "--data-dir", str(data_dir), "--json")
    assert again.returncode == 0, again.stderr
    assert [row["name"] for row in query(data_dir, "SELECT name FROM projects ORDER BY name")] == ["first", "second"]


def test_modelbay_help_lists_its_commands() -> None:
    result = subprocess.run([console_script(), "--help"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    assert "project" in result.stdout


def test_modelbay_serve_help_lists_its_options() -> None:
    result = subprocess.run([console_script(), "serve", "--help"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--data-dir"):
        assert option in result.stdout, result.stdout


def test_the_data_dir_comes_from_modelbay_data_dir_when_no_flag_is_given(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    cwd = tmp_path / "cwd"  # where ./.modelbay would land if the variable were ignored
    cwd.mkdir()
    env = {**os.environ, "MODELBAY_DATA_DIR": str(data_dir)}

    result = subprocess.run(
        [console_script(), "project", "create", "envproject", "--json", "--init"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "envproject"
    assert [row["name"] for row in projects_named(data_dir, "envproject")] == ["envproject"]
    assert not (cwd / ".modelbay").exists()


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = subprocess.run([console_script(), "--version"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"modelbay {version('modelbay')}\n"


def test_project_list_shows_every_project_with_its_ids_and_no_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    created = [
        json.loads(modelbay("project", "create", name, "--data-dir", str(data_dir), "--json", *init).stdout)
        for name, init in (("first", ("--init",)), ("second", ()))
    ]

    listed = modelbay("project", "list", "--data-dir", str(data_dir), "--json")
    as_text = modelbay("project", "list", "--data-dir", str(data_dir))

    assert listed.returncode == 0 and as_text.returncode == 0, listed.stderr + as_text.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["organization_id"], r["datature_project_id"]) for r in rows] == [
        (c["name"], c["organization_id"], c["datature_project_id"]) for c in created
    ]
    assert all(c["token"] not in listed.stdout + as_text.stdout for c in created)
    assert [line.split("\t")[0] for line in as_text.stdout.splitlines()] == ["first", "second"]


@pytest.mark.sqlite_only("the store is a file in the data dir only on SQLite")
def test_project_list_on_a_data_dir_without_a_database_is_one_clear_line(tmp_path: Path) -> None:
    # A data dir holding no database is one clear line, and nothing is created
    missing = modelbay("project", "list", "--data-dir", str(tmp_path / "typo"))
    assert missing.returncode == 1 and "no modelbay database in" in one_line(missing.stderr)
    assert not (tmp_path / "typo").exists()


def test_a_bad_setting_is_one_line_naming_it_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "MODELBAY_PORT": "eighty", "MODELBAY_DATA_DIR": str(tmp_path / "data")}

    result = modelbay("serve", env=env)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert one_line(result.stderr).startswith("error: bad setting: MODELBAY_PORT:"), result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_help_shows_the_defaults() -> None:
    result = modelbay("serve", "--help", env={**os.environ, "COLUMNS": "200"})  # no wrapping inside the box

    assert result.returncode == 0, result.stderr
    text = one_line(result.stdout)
    assert "(default: MODELBAY_PORT or 8000)" in text and "(default: MODELBAY_HOST or 127.0.0.1)" in text


@pytest.mark.postgresql_only("--database-url with a plain postgresql:// URL, as an operator gives it")
def test_project_commands_take_a_plain_postgresql_url(tmp_path: Path) -> None:
    url = os.environ["MODELBAY_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    common = ("--data-dir", str(tmp_path / "data"), "--database-url", url)  # the option wins over the variable

    refused = modelbay("project", "list", *common)
    created = modelbay("project", "create", "plain", *common, "--json", "--init")
    listed = modelbay("project", "list", *common, "--json")

    assert refused.returncode == 1 and "no modelbay database in postgresql://" in one_line(refused.stderr)
    assert created.returncode == 0, created.stderr
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["plain"]

"""`modelbay project delete` and `modelbay project token` as an operator runs them, next to a
running server: a real subprocess, its output and exit code, and what the server then accepts."""

from __future__ import annotations

import httpx

from tests.fixtures.server import Server, modelbay, wait_until
from tests.integration.conftest import create_deployment, query, ubiops, unique


def answers(server: Server, project: str, token: str) -> int:
    """The status the server answers `token` with when it reads `project`."""
    return httpx.get(f"{server.url}/v2.1/projects/{project}", headers={"Authorization": f"Token {token}"}).status_code


def test_project_token_prints_a_new_token_and_the_old_one_stops_working(server: Server) -> None:
    project = server.create_project(unique("rotate"))
    name, old = project["name"], project["token"]
    assert answers(server, name, old) == 200

    result = modelbay("project", "token", name, "--data-dir", str(server.data_dir))

    assert result.returncode == 0, result.stderr
    new = result.stdout.strip()
    assert result.stdout == new + "\n" and len(new) >= 20 and new != old
    assert answers(server, name, new) == 200
    wait_until(lambda: answers(server, name, old) == 401, timeout=10)  # the server drops what it cached


def test_project_delete_with_yes_deletes_the_project_and_everything_in_it(server: Server) -> None:
    project = server.create_project(unique("gone"))
    name, token = project["name"], project["token"]
    with ubiops(server, token) as client:
        create_deployment(client, name, "model")
    (project_id,) = query(server.data_dir, "SELECT id FROM projects WHERE name = ?", name)[0]

    result = modelbay("project", "delete", name, "--yes", "--data-dir", str(server.data_dir))

    assert result.returncode == 0, result.stderr
    assert name in result.stderr and "deleted" in result.stderr
    listed = modelbay("project", "list", "--data-dir", str(server.data_dir))
    assert name not in [line.split("\t")[0] for line in listed.stdout.splitlines()]
    assert query(server.data_dir, "SELECT count(*) FROM deployments WHERE project_id = ?", project_id)[0][0] == 0
    wait_until(lambda: answers(server, name, token) == 401, timeout=10)
    # The name is free again.
    again = modelbay("project", "create", name, "--data-dir", str(server.data_dir), "--json")
    assert again.returncode == 0, again.stderr


def test_project_delete_asks_first_and_deletes_nothing_unless_told_yes(server: Server) -> None:
    project = server.create_project(unique("kept"))
    name = project["name"]

    declined = modelbay("project", "delete", name, "--data-dir", str(server.data_dir), input="n\n")
    unanswered = modelbay("project", "delete", name, "--data-dir", str(server.data_dir))  # stdin closed

    for result in (declined, unanswered):
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "nothing deleted" in result.stderr and "--yes" in result.stderr, result.stderr
    assert "Delete project" in declined.stdout  # the question was asked
    assert answers(server, name, project["token"]) == 200

    confirmed = modelbay("project", "delete", name, "--data-dir", str(server.data_dir), input="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert query(server.data_dir, "SELECT count(*) FROM projects WHERE name = ?", name)[0][0] == 0


def test_an_unknown_project_is_one_clear_line(server: Server) -> None:
    for options in (("delete", "--yes"), ("token",)):
        result = modelbay("project", options[0], "no-such-project", *options[1:], "--data-dir", str(server.data_dir))
        assert result.returncode == 1 and result.stdout == ""
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == ["error: Project 'no-such-project' was not found"], result.stderr

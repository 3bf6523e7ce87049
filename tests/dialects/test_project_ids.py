"""Each dialect derives its project id from the project's public number or handle, and back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelbay.core.bus import Bus
from modelbay.core.errors import Forbidden, NotFound
from modelbay.core.projects import Caller, Projects
from modelbay.dialects.abeja import ids as abeja_ids
from modelbay.dialects.datature import ids as datature_ids
from modelbay.store.db import Database

ADMIN = Caller(project_id=None)


@pytest.fixture
def projects(tmp_path: Path) -> Iterator[Projects]:
    db = Database(f"sqlite:///{tmp_path / 'test.db'}")
    db.migrate()
    yield Projects(db, "admin", Bus())
    db.close()


def test_the_ids_are_derived_from_the_public_number_and_handle() -> None:
    assert abeja_ids.organization_id(4821093746512) == "4821093746512"
    assert datature_ids.project_id("0123456789abcdef0123456789abcdef") == "proj_0123456789abcdef0123456789abcdef"


def test_a_new_project_has_the_ids_its_clients_expect(projects: Projects) -> None:
    credentials = projects.create("shown")
    assert abeja_ids.ORGANIZATION_ID.fullmatch(abeja_ids.organization_id(credentials.number))
    assert len(credentials.handle) == 32 and int(credentials.handle, 16) >= 0  # hex, no prefix


def test_each_dialect_finds_the_project_by_its_own_id(projects: Projects) -> None:
    credentials = projects.create("found")
    caller = projects.authenticate(credentials.token)
    organization_id = abeja_ids.organization_id(credentials.number)
    datature_id = datature_ids.project_id(credentials.handle)

    assert abeja_ids.find_organization(projects, caller, organization_id).name == "found"
    assert datature_ids.find_project(projects, caller, datature_id).name == "found"
    assert datature_ids.find_project(projects, ADMIN, datature_id).name == "found"


@pytest.mark.parametrize("bad", ["0000000000001", "12345", "abc", ""])
def test_an_unknown_organization_is_forbidden_to_a_project_and_not_found_by_the_admin(
    projects: Projects, bad: str
) -> None:
    caller = projects.authenticate(projects.create("mine").token)
    with pytest.raises(Forbidden, match=f"organization '{bad}'"):
        abeja_ids.find_organization(projects, caller, bad)
    with pytest.raises(NotFound, match=f"Organization '{bad}' was not found"):
        abeja_ids.find_organization(projects, ADMIN, bad)


def test_another_projects_id_is_forbidden(projects: Projects) -> None:
    mine = projects.authenticate(projects.create("mine").token)
    theirs = projects.create("theirs")
    handle_without_prefix = theirs.handle  # Datature's id is only ever the prefixed one

    with pytest.raises(Forbidden):
        abeja_ids.find_organization(projects, mine, abeja_ids.organization_id(theirs.number))
    with pytest.raises(Forbidden):
        datature_ids.find_project(projects, mine, datature_ids.project_id(theirs.handle))
    with pytest.raises(NotFound, match="Project"):
        datature_ids.find_project(projects, ADMIN, handle_without_prefix)

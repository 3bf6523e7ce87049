"""Datature's project ids over core ids, derived in both directions, so the core keeps no vendor ids:
a project's `proj_…` id is its public handle behind Datature's prefix."""

from __future__ import annotations

from modelbay.core.projects import Caller, Projects
from modelbay.store.tables import ProjectRow

PROJECT_PREFIX = "proj_"


def project_id(project_handle: str) -> str:
    return PROJECT_PREFIX + project_handle


def find_project(projects: Projects, caller: Caller, value: str) -> ProjectRow:
    """The project whose `proj_…` id is `value`; `Forbidden` for one the caller may not use
    (`NotFound` for the admin)."""
    handle = value.removeprefix(PROJECT_PREFIX) if value.startswith(PROJECT_PREFIX) else None
    return projects.by_handle(caller, handle, kind="project", name=value)

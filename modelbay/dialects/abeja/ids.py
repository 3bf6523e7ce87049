"""ABEJA ids over core ids, derived in both directions, so the core keeps no vendor ids.

An organization is a project: its 13-digit id is the project's public number. A deployment's
13-digit id is derived from its core id (a UUID); a version's `ver-` id is the first 16 hex digits
of its UUID. Runs, services and endpoints have 16-hex core ids that get a prefix.
Looking a derived id up means scanning a deployment's few siblings, never a table of aliases.
"""

from __future__ import annotations

import re

from modelbay.core.errors import NotFound
from modelbay.core.projects import Caller, Projects
from modelbay.store.tables import ProjectRow

DEPLOYMENT_ID = ORGANIZATION_ID = re.compile(r"[1-9][0-9]{12}")
HEX16 = re.compile(r"[0-9a-f]{16}")  # fullmatch: `$` would let a trailing newline through


def organization_id(project_number: int) -> str:
    return str(project_number)


def find_organization(projects: Projects, caller: Caller, value: str) -> ProjectRow:
    """The project whose organization id is `value`; `Forbidden` for one the caller may not use
    (`NotFound` for the admin)."""
    number = int(value) if ORGANIZATION_ID.fullmatch(value) else None
    return projects.by_number(caller, number, kind="organization", name=value)


def deployment_id(core_id: str) -> str:
    """13 digits, never starting with 0, stable for the life of the deployment."""
    return str(int(core_id.replace("-", ""), 16) % (9 * 10**12) + 10**12)


def version_id(core_id: str) -> str:
    return "ver-" + core_id.replace("-", "")[:16]


def run_id(core_id: str) -> str:
    return "run-" + core_id


def service_id(core_id: str) -> str:
    return "ser-" + core_id


def endpoint_id(core_id: str) -> str:
    return "pnt-" + core_id


def core_run_id(value: str) -> str:
    """The core id of `run-…`; raises `NotFound` for anything else."""
    return _unprefixed(value, "run-", "run")


def core_service_id(value: str) -> str:
    return _unprefixed(value, "ser-", "service")


def _unprefixed(value: str, prefix: str, kind: str) -> str:
    core = value[len(prefix):] if value.startswith(prefix) else ""
    if not HEX16.fullmatch(core):
        raise NotFound(kind, value)
    return core

"""ABEJA ids over core ids, derived in both directions, so the core keeps no vendor ids.

An organization is a project: its 13-digit id is the project's public number. A deployment's
13-digit id is derived from its core id (a UUID); a version's `ver-` id is the first 16 hex digits
of its UUID. Runs, services and endpoints have 16-hex core ids that get a prefix.
Nothing stores the derived ids: a version is found by how its UUID begins, a deployment by a scan
of its project's deployments once per process (`deps.core_deployment_id`).
"""

from __future__ import annotations

import re

from modelbay.core.errors import NotFound
from modelbay.core.projects import Caller, Projects
from modelbay.store.tables import ProjectRow

DEPLOYMENT_ID = ORGANIZATION_ID = re.compile(r"[1-9][0-9]{12}")
HEX16 = re.compile(r"[0-9a-f]{16}")  # fullmatch: `$` would let a trailing newline through
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VERSION_ID = re.compile(r"ver-([0-9a-f]{16})")
#: A core text's mention of a revision: ABEJA has no revisions, so its users never see their ids.
REVISION_MENTION = re.compile(r" \(revision [0-9a-f-]{36}\)")


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


def version_core_prefix(value: str) -> str | None:
    """How the UUID of the version whose `ver-` id is `value` begins (its first three groups and
    their dash); None when `value` is no such id."""
    match = VERSION_ID.fullmatch(value)
    if match is None:
        return None
    digits = match.group(1)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:]}-"


def run_id(core_id: str) -> str:
    return "run-" + core_id


def service_id(core_id: str) -> str:
    return "ser-" + core_id


def endpoint_id(core_id: str) -> str:
    return "pnt-" + core_id


def public_id(kind: str, core_id: str) -> str | None:
    """The ABEJA id of a core id of `kind` (as a `NotFound` names it); None when `core_id` is not
    one (e.g. the caller's own value, which the caller knows)."""
    if kind in ("run", "service", "endpoint") and HEX16.fullmatch(core_id):
        return {"run": run_id, "service": service_id, "endpoint": endpoint_id}[kind](core_id)
    if kind in ("deployment", "version") and UUID.fullmatch(core_id):
        return deployment_id(core_id) if kind == "deployment" else version_id(core_id)
    return None


def public_text(text: str) -> str:
    """A core text (an error, a build's failure) without the core ids ABEJA users never see."""
    return REVISION_MENTION.sub("", text)


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

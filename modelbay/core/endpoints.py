"""Endpoints: a deployment's stable names for its services.

An endpoint is an alias, unique in its deployment, that points at one of the deployment's
services; pointing it at another service moves the traffic without changing the URL callers use.
The store deletes an endpoint with its service or its deployment, so none points nowhere.
"""

from __future__ import annotations

import builtins
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelbay.core.clock import utcnow
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.store.db import Database
from modelbay.store.tables import EndpointRow, ServiceRow

#: The alias a deployment's own URL is served by.
DEFAULT_ALIAS = "default"

ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _check_service(session: Session, deployment_id: str, service_id: object) -> str:
    """`service_id` if it names a service of the deployment; raises `InvalidInput` (it is input,
    not the path: a service of another deployment is a bad request, not a missing endpoint)."""
    if not isinstance(service_id, str) or not service_id:
        raise InvalidInput("$service_id is required", field="service_id")
    row = session.get(ServiceRow, service_id)
    if row is None or row.deployment_id != deployment_id:
        raise InvalidInput("$service_id must name a service of this deployment", field="service_id")
    return service_id


class Endpoints:
    """Create, list, repoint and delete endpoints; find the service an alias serves."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, deployment_id: str, service_id: object, alias: object = DEFAULT_ALIAS) -> EndpointRow:
        """Raises `InvalidInput` for a bad alias, one the deployment already has, or a service
        that is not the deployment's."""
        if not isinstance(alias, str) or not ALIAS.fullmatch(alias):
            raise InvalidInput("$alias must be 1 to 64 letters, digits, '-' or '_'", field="alias")
        now = utcnow()
        with self._db.write() as session:
            checked = _check_service(session, deployment_id, service_id)
            if self._find(session, deployment_id, alias) is not None:
                raise InvalidInput(f"This deployment already has an endpoint named '{alias}'", field="alias")
            row = EndpointRow(id=secrets.token_hex(8), deployment_id=deployment_id, service_id=checked,
                              alias=alias, created_at=now, modified_at=now)
            session.add(row)
        return row

    def list(self, deployment_id: str) -> builtins.list[EndpointRow]:
        with self._db.read() as session:
            return list(session.scalars(select(EndpointRow).where(EndpointRow.deployment_id == deployment_id)
                                        .order_by(EndpointRow.created_at, EndpointRow.id)))

    def update(self, deployment_id: str, endpoint_id: str, service_id: object) -> EndpointRow:
        """Point the endpoint at another service of the deployment."""
        with self._db.write() as session:
            row = self._own(session, deployment_id, endpoint_id)
            row.service_id = _check_service(session, deployment_id, service_id)
            row.modified_at = utcnow()
        return row

    def delete(self, deployment_id: str, endpoint_id: str) -> None:
        with self._db.write() as session:
            session.delete(self._own(session, deployment_id, endpoint_id))

    def service_of(self, deployment_id: str, alias: str = DEFAULT_ALIAS) -> str:
        """The id of the service the alias points at; raises `NotFound` without such an endpoint."""
        with self._db.read() as session:
            row = self._find(session, deployment_id, alias)
        if row is None:
            raise NotFound("endpoint", alias)
        return row.service_id

    @staticmethod
    def _own(session: Session, deployment_id: str, endpoint_id: str) -> EndpointRow:
        row = session.get(EndpointRow, endpoint_id)
        if row is None or row.deployment_id != deployment_id:
            raise NotFound("endpoint", endpoint_id)
        return row

    @staticmethod
    def _find(session: Session, deployment_id: str, alias: str) -> EndpointRow | None:
        return session.scalars(select(EndpointRow).where(EndpointRow.deployment_id == deployment_id,
                                                         EndpointRow.alias == alias)).first()

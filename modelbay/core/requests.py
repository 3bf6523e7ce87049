"""Requests: one execution of a version's code, recorded in the store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select

from modelbay.core.clock import utcnow
from modelbay.core.deployments import Target
from modelbay.core.errors import InvalidInput, StatusChanged
from modelbay.core.fields import check_data
from modelbay.core.scheduler import PRIORITY_DIRECT, Scheduler
from modelbay.core.transitions import REQUESTS, Status, transition
from modelbay.runtime.base import Call, CallTimedOut, InstanceLost, InstanceStartFailed
from modelbay.store.db import Database, Insert
from modelbay.store.tables import RequestRow

DIRECT_TIMEOUT_DEFAULT_S = 300
DIRECT_TIMEOUT_MAX_S = 3600

#: A direct request still running after this long is recorded as `processing` before it ends.
RECORD_PROCESSING_AFTER_S = 0.05

#: Most log text kept with one request; the worker already caps what it collects.
MAX_STORED_LOG_CHARS = 1 << 20


@dataclass(frozen=True)
class RequestRecord:
    """A request as the dialects see it."""

    id: str
    deployment_name: str
    version_name: str
    mode: str
    status: str
    timeout: int
    result: Any
    error_message: str | None
    created_at: datetime


def check_timeout(timeout: Any, default: int, maximum: int) -> int:
    """The timeout a caller asked for, defaulted and bounded; raises `InvalidInput` when out of range."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= maximum:
        raise InvalidInput(f"timeout must be an integer from 1 to {maximum} seconds")
    return timeout


class Requests:
    """Runs direct requests and records them through the group committer."""

    def __init__(self, db: Database, scheduler: Scheduler) -> None:
        self._db = db
        self._scheduler = scheduler

    async def direct(
        self,
        target: Target,
        data: Any,
        *,
        timeout: int,
        origin: dict[str, str],
        on_update: Callable[[str], None] | None = None,
    ) -> RequestRecord:
        """Run `data` on `target` now and return the finished request.

        Raises `InvalidInput` (nothing recorded) when `data` does not match the input definition.
        """
        as_list = isinstance(data, list) and target.input_type == "structured"
        for item in data if as_list else [data]:
            check_data(target.input_type, target.input_fields, item)
        request_id = str(uuid.uuid4())
        encoded = orjson.dumps(data)
        created_at = utcnow()
        keep_data = target.retention_mode == "full"
        started = {
            "id": request_id,
            "project_id": target.project_id,
            "deployment_id": target.deployment_id,
            "version_id": target.version_id,
            "mode": "direct",
            "status": Status.PROCESSING.value,
            "priority": PRIORITY_DIRECT,
            "timeout": timeout,
            "data": encoded if keep_data else None,
            "input_size": len(encoded),
            "origin": origin,
            "created_at": created_at,
            "started_at": created_at,
        }
        committer = self._db.committer
        recorded = False

        def record_processing() -> None:
            nonlocal recorded
            recorded = True
            committer.submit(Insert(REQUESTS, started))

        # Most direct requests finish within milliseconds: they are written once, finished.
        # One still running after a moment is recorded as processing, so it can be seen.
        timer = asyncio.get_running_loop().call_later(RECORD_PROCESSING_AFTER_S, record_processing)
        call = Call(
            request_id=request_id,
            data=data,
            context={"id": request_id, "request_mode": "direct", "batch_list": as_list},
        )
        try:
            status, result, error, logs = await self._execute(target, call, timeout, on_update)
        finally:
            timer.cancel()
        encoded_result = orjson.dumps(result) if status is Status.COMPLETED else b""
        finished = {
            "result": encoded_result if keep_data and status is Status.COMPLETED else None,
            "error_message": error,
            "logs": logs[-MAX_STORED_LOG_CHARS:] if logs else None,
            "output_size": len(encoded_result),
            "finished_at": utcnow(),
        }
        if recorded:
            await committer.submit_async(
                lambda conn: transition(conn, request_id, Status.PROCESSING, status, **finished)
            )
        else:
            await committer.submit_async(Insert(REQUESTS, {**started, **finished, "status": status.value}))
        return RequestRecord(
            id=request_id,
            deployment_name=target.deployment_name,
            version_name=target.version_name,
            mode="direct",
            status=status.value,
            timeout=timeout,
            result=result,
            error_message=error,
            created_at=created_at,
        )

    async def _execute(
        self, target: Target, call: Call, timeout: int, on_update: Callable[[str], None] | None
    ) -> tuple[Status, Any, str | None, str]:
        """Run a call and turn every way it can end into (status, result, error, logs)."""
        try:
            outcome = await self._scheduler.run(target, call, timeout, PRIORITY_DIRECT, on_update)
        except CallTimedOut as exc:
            return Status.FAILED, None, f"Request timed out after {timeout} seconds", exc.logs
        except InstanceLost as exc:
            return Status.FAILED, None, exc.message, exc.logs
        except InstanceStartFailed as exc:
            return Status.FAILED, None, f"The deployment could not start: {exc.message}", exc.logs
        if not outcome.ok:
            return Status.FAILED, None, outcome.error or "The request failed", outcome.logs
        try:
            for item in outcome.result if call.context.get("batch_list") else [outcome.result]:
                check_data(target.output_type, target.output_fields, item, "output")
        except InvalidInput as exc:
            return Status.FAILED, None, f"The deployment returned invalid output: {exc.message}", outcome.logs
        return Status.COMPLETED, outcome.result, None, outcome.logs

    def recover(self) -> int:
        """Settle requests a previous server left running: their instances are gone. Returns how many."""
        with self._db.write() as session:
            stuck = list(
                session.scalars(
                    select(RequestRow.id).where(
                        RequestRow.status.in_([Status.PROCESSING.value, Status.CANCELLED_PENDING.value])
                    )
                )
            )
            for request_id in stuck:
                row = session.get(RequestRow, request_id)
                assert row is not None
                old = Status(row.status)
                new = Status.CANCELLED if old is Status.CANCELLED_PENDING else Status.FAILED
                try:
                    transition(
                        session,
                        request_id,
                        old,
                        new,
                        error_message=None
                        if new is Status.CANCELLED
                        else "The server stopped while this request was running",
                        finished_at=utcnow(),
                    )
                except StatusChanged:
                    pass
        return len(stuck)

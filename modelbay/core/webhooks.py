"""Webhooks: endpoints that receive signed POSTs, with a retry policy and a signing secret.

A delivery's body is signed so a receiver can check where it came from and reject replays:
the header `X-Modelbay-Signature: t=<epoch ms>,v1=<hex>` carries HMAC-SHA256 over
`<t>.<raw body>`, keyed with the base64-decoded secret of the webhook.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from modelbay.core.clock import utcnow
from modelbay.core.errors import InvalidInput, NotFound
from modelbay.core.webhook_client import ConnectError, PostError, WebhookClient
from modelbay.core.webhook_targets import RefusedTarget, check_endpoint
from modelbay.store.db import Database
from modelbay.store.tables import DeliveryRow, WebhookRow

SIGNATURE_HEADER = "X-Modelbay-Signature"

#: Defaults of a webhook's retry policy (the SDK sends these too).
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_BACKOFF_MS = 15_000
MAX_RETRIES_LIMIT = 20
MAX_BACKOFF_LIMIT_MS = 3_600_000

#: The delay before the first retry; each further retry doubles it, up to the webhook's cap.
RETRY_BASE_DELAY_MS = 500

#: How long one POST to a receiver may take, in seconds.
DELIVERY_TIMEOUT_S = 10.0

#: How old a signature a receiver should still accept, in milliseconds (a suggestion for receivers).
SIGNATURE_TOLERANCE_MS = 5 * 60 * 1000


def decode_secret(contents: Any) -> bytes:
    """The key bytes of a base64 secret; raises `InvalidInput` for anything else."""
    if not isinstance(contents, str) or not contents:
        raise InvalidInput("The webhook secret must be a non-empty base64 string")
    try:
        key = base64.b64decode(contents, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("The webhook secret must be base64") from exc
    if len(key) < 16:
        raise InvalidInput("The webhook secret must decode to at least 16 bytes")
    return key


def sign(key: bytes, body: bytes, timestamp_ms: int) -> str:
    """The signature header value for `body` sent at `timestamp_ms`."""
    digest = hmac.new(key, str(timestamp_ms).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_ms},v1={digest}"


def verify(key: bytes, body: bytes, header: str, *, now_ms: int | None = None,
           tolerance_ms: int = SIGNATURE_TOLERANCE_MS) -> bool:
    """Whether `header` signs `body` with `key` and is no older than `tolerance_ms`: a receiver's check."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or not given:
        return False
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now_ms - int(stamp)) > tolerance_ms:
        return False
    expected = sign(key, body, int(stamp)).partition(",v1=")[2]
    return hmac.compare_digest(expected, given)


def backoff_ms(attempts: int, max_backoff_ms: int) -> int:
    """The delay before the next try after `attempts` failed ones: exponential, capped."""
    return min(max_backoff_ms, RETRY_BASE_DELAY_MS * 2 ** min(attempts - 1, 30))


def check_retries(max_retries: Any, max_backoff_ms: Any) -> tuple[int, int]:
    for name, value, limit in (("max_retries", max_retries, MAX_RETRIES_LIMIT),
                               ("max_backoff_ms", max_backoff_ms, MAX_BACKOFF_LIMIT_MS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise InvalidInput(f"${name} must be an integer from 0 to {limit}", field=name)
    return max_retries, max_backoff_ms


@dataclass(frozen=True)
class Attempt:
    """How one POST to a receiver went."""

    ok: bool
    status_code: int
    latency_ms: int
    error: str | None
    #: The target was refused (see `webhook_targets`): trying again will not help.
    refused: bool = False


def connection_failure(exc: BaseException) -> str:
    """What went wrong with a POST, in the words users know: `ConnectError: Connection refused` (the
    operating system's word for a receiver that cannot be reached), `Timeout: …`, or the error's kind."""
    if isinstance(exc, ConnectError):
        error = exc.os_error  # a name that does not resolve has a negative errno (getaddrinfo's own)
        return f"ConnectError: {os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror}"
    if isinstance(exc, TimeoutError):
        return f"Timeout: no answer within {DELIVERY_TIMEOUT_S:g} s"
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


async def post_signed(client: WebhookClient, endpoint: str, secret: str, body: bytes,
                      headers: dict[str, str] | None = None) -> Attempt:
    """POST `body` once, signed with `secret`; never raises for what the receiver does. The answer's
    status counts, its body is never kept (what a target answers is not shown to the project)."""
    timestamp = int(time.time() * 1000)
    sent = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(decode_secret(secret), body, timestamp),
            **(headers or {})}
    started = time.monotonic()
    try:
        status = await client.post(endpoint, body, sent, DELIVERY_TIMEOUT_S)
    except RefusedTarget as exc:
        return Attempt(False, 0, int((time.monotonic() - started) * 1000), exc.message, refused=True)
    except InvalidInput as exc:  # stored before endpoints were parsed as the client does
        return Attempt(False, 0, 0, exc.message, refused=True)
    except (PostError, TimeoutError) as exc:
        return Attempt(False, 0, int((time.monotonic() - started) * 1000), connection_failure(exc))
    latency = int((time.monotonic() - started) * 1000)
    ok = 200 <= status < 300
    return Attempt(ok, status, latency, None if ok else f"The endpoint answered {status}")


class Webhooks:
    """CRUD of webhooks, and the one-off test POST. `create` and `update` resolve the endpoint's host
    to check it (see `webhook_targets`), so they block: the routes run them in a thread."""

    def __init__(self, db: Database, client: WebhookClient, *, allow_private_targets: bool = False) -> None:
        self._db = db
        self._client = client
        self._allow_private_targets = allow_private_targets

    def _checked_endpoint(self, endpoint: Any) -> str:
        """`endpoint` if webhooks may POST to it; raises `InvalidInput` naming why not."""
        return check_endpoint(endpoint, allow_private=self._allow_private_targets)

    def create(self, project_id: str, name: Any, endpoint: Any, secret: Any, max_retries: Any,
               max_backoff_ms: Any) -> WebhookRow:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidInput("The webhook name must be 1-200 characters")
        decode_secret(secret)
        retries, backoff = check_retries(max_retries, max_backoff_ms)
        checked = self._checked_endpoint(endpoint)
        now = utcnow()
        row = WebhookRow(id=str(uuid.uuid4()), project_id=project_id, name=name, endpoint=checked,
                         secret=secret, max_retries=retries, max_backoff_ms=backoff, created_at=now, updated_at=now)
        with self._db.write() as session:
            session.add(row)
        return row

    def get(self, project_id: str, webhook_id: str) -> WebhookRow:
        """Raises `NotFound` unless the webhook exists in the project."""
        with self._db.read() as session:
            row = session.get(WebhookRow, webhook_id)
        if row is None or row.project_id != project_id:
            raise NotFound("webhook", webhook_id)
        return row

    def list(self, project_id: str, offset: int, limit: int) -> tuple[list[WebhookRow], bool]:
        """A page of the project's webhooks, oldest first, and whether more follow."""
        with self._db.read() as session:
            rows = list(session.scalars(
                select(WebhookRow).where(WebhookRow.project_id == project_id)
                .order_by(WebhookRow.created_at, WebhookRow.id).offset(offset).limit(limit + 1)
            ))
        return rows[:limit], len(rows) > limit

    def update(self, project_id: str, webhook_id: str, *, endpoint: Any = None, max_retries: Any = None,
               max_backoff_ms: Any = None, secret: Any = None) -> WebhookRow:
        """Change what is given (None: unchanged); raises `InvalidInput` before changing anything."""
        values: dict[str, Any] = {}
        if endpoint is not None:
            values["endpoint"] = self._checked_endpoint(endpoint)
        if max_retries is not None or max_backoff_ms is not None:
            current = self.get(project_id, webhook_id)
            values["max_retries"], values["max_backoff_ms"] = check_retries(
                current.max_retries if max_retries is None else max_retries,
                current.max_backoff_ms if max_backoff_ms is None else max_backoff_ms,
            )
        if secret is not None:
            decode_secret(secret)
            values["secret"] = secret
        with self._db.write() as session:
            row = session.get(WebhookRow, webhook_id)
            if row is None or row.project_id != project_id:
                raise NotFound("webhook", webhook_id)
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
        return row

    def delete(self, project_id: str, webhook_id: str) -> None:
        """Delete a webhook; what was still to be delivered to it is given up (counted as failed)."""
        self.get(project_id, webhook_id)
        with self._db.write() as session:
            # Due now: the delivery worker finds no webhook and settles them as failed.
            session.execute(update(DeliveryRow).where(DeliveryRow.webhook_id == webhook_id,
                                                      DeliveryRow.status == "pending")
                            .values(next_attempt_at=utcnow()))
            session.execute(WebhookRow.__table__.delete().where(WebhookRow.id == webhook_id))

    async def test(self, project_id: str, webhook_id: str, body: bytes) -> Attempt:
        """POST a sample body to the webhook once, signed, and report how it went."""
        row = self.get(project_id, webhook_id)
        return await post_signed(self._client, row.endpoint, row.secret, body)

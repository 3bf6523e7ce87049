"""Stored rows in the shapes Datature answers with: camelCase keys, epoch-ms integers, prefixed ids.

The SDK decodes every answer with msgspec, strictly (SDK-CONTRACTS 3.2): required keys present,
integers never floats, no null where a value is required.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import orjson
from fastapi.responses import Response

from modelbay.core.clock import as_utc
from modelbay.core.decimals import is_decimal
from modelbay.core.errors import InvalidInput, NotFound

#: The default and largest page of a list.
PAGE_DEFAULT = 100
PAGE_MAX = 1000


def respond(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def ms(value: datetime | None) -> int | None:
    return None if value is None else int(as_utc(value).timestamp() * 1000)


# --- ids: a prefix over the core's uuid --------------------------------------------------------

def external(prefix: str, core_id: str) -> str:
    return f"{prefix}_{core_id}"


def internal(prefix: str, kind: str, given: str) -> str:
    """The core id inside `<prefix>_<uuid>`; any other shape is simply not found."""
    head, _, core_id = given.partition("_")
    if head != prefix or len(core_id) != 36:
        raise NotFound(kind, given)
    return core_id


# --- pagination ----------------------------------------------------------------------------

def page_token(offset: int) -> str:
    """URL-safe (the SDK sends it unencoded): base64url without padding."""
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def page_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("page is not a page token this server gave out") from exc
    if not text.startswith("o") or not is_decimal(text[1:]):
        raise InvalidInput("page is not a page token this server gave out")
    return int(text[1:])


def page_limit(limit: str | None) -> int:
    if limit is None or limit == "":
        return PAGE_DEFAULT
    if not is_decimal(limit) or not 1 <= int(limit) <= PAGE_MAX:
        raise InvalidInput(f"limit must be an integer from 1 to {PAGE_MAX}")
    return int(limit)


def paginated(data: list[Any], offset: int, limit: int, more: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data}
    if more:
        body["nextPage"] = page_token(offset + limit)
    if offset > 0:
        body["prevPage"] = page_token(max(0, offset - limit))
    return body


def deleted(given_id: str) -> dict[str, Any]:
    return {"deleted": True, "id": given_id}


# --- body helpers --------------------------------------------------------------------------

def obj(value: Any, where: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    return value


def optional_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where} must be a non-negative integer (epoch milliseconds)")
    return value

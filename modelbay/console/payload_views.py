"""How the console shows what a stored request (a deployment's or a pipeline's) took and gave:
inline as pretty JSON when small, else as a file to download."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from modelbay.core.errors import NotFound
from modelbay.core.payloads import INLINE_MAX_BYTES, Payloads


def shown(payload: bytes | None, key: str | None, size: int) -> str | None:
    """A payload as a page shows it: pretty JSON (a string as itself), or None when it is kept as a
    file (a download) or not at all."""
    if key is not None or size > INLINE_MAX_BYTES or payload is None:
        return None
    value = orjson.loads(payload)
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def download(payloads: Payloads, row: Any, which: str, noun: str) -> Response:
    """The input or output (`which`) of a stored request `row` as a file; raises `NotFound` when it
    is not kept. `noun` names the request in the error."""
    if which not in ("input", "output"):
        raise NotFound("page", which)
    inline, key = (row.data, row.data_key) if which == "input" else (row.result, row.result_key)
    try:
        content = payloads.load(inline, key)
    except FileNotFoundError:
        content = None  # deleted meanwhile
    if content is None:
        raise NotFound(f"{which} of {noun}", row.id)
    headers = {"Content-Disposition": f'attachment; filename="{row.id}-{which}.json"'}
    return Response(content, media_type="application/json", headers=headers)

"""Errors as the ABEJA Platform answers them: `{"error": "<code>", "error_description": "<text>"}`.

The SDK maps 400/401/403/404/405/409/500 to its exceptions and re-sends on 5xx, so nothing
here answers 5xx except a real server fault.
"""

from __future__ import annotations

from typing import Any

from modelbay.core.errors import ModelbayError, NotFound
from modelbay.dialects.abeja import ids
from modelbay.dialects.common.errors import DialectRoute, ErrorShape

#: Where the dialect lives: its paths that no route serves are answered in its shape.
PREFIXES = ("/organizations/", "/deployments/")

CODE_OF = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    500: "internal_server_error",
}


class AbejaErrors(ErrorShape):
    field_names = {"alias": "custom_alias"}

    def body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": CODE_OF.get(status, "error"), "error_description": message}

    def message(self, exc: ModelbayError) -> str:
        """The core's text with the ids ABEJA users know (`ser-…`, 13-digit deployment ids)."""
        if isinstance(exc, NotFound) and (public := ids.public_id(exc.kind, exc.name)) is not None:
            return f"{exc.kind.capitalize()} '{public}' was not found"
        return ids.public_text(super().message(exc))


ERRORS = AbejaErrors()


class AbejaRoute(DialectRoute):
    errors = ERRORS

"""Errors as UbiOps answers them: a status code and `{"error": "<text>"}`."""

from __future__ import annotations

from typing import Any

from modelbay.dialects.common.errors import DialectRoute, ErrorShape


class UbiopsErrors(ErrorShape):
    def body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}


ERRORS = UbiopsErrors()


class UbiopsRoute(DialectRoute):
    errors = ERRORS

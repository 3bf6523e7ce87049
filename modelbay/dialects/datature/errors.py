"""Errors as Datature answers them: a status code and `{"message": "<text>"}`.

The SDK shows 401 as `BadRequestError`, 403 as `ForbiddenError` and 404 as `NotFoundError`
(SDK-CONTRACTS 3.2); it retries 5xx, POST included, so nothing here answers 5xx on purpose.
"""

from __future__ import annotations

from typing import Any

from modelbay.core.errors import ModelbayError, NotFound
from modelbay.dialects.common.errors import DialectRoute, ErrorShape

#: Where the dialect lives (SDK-CONTRACTS 3.1: the SDK drops any path prefix). Its paths that no
#: route serves are answered in its shape; UbiOps' projects live under `/v2.1/projects` and `/v2/projects`.
PREFIXES = ("/projects",)

#: The id prefix of each kind the core names in a `NotFound`, so the message shows the caller's id.
ID_PREFIXES = {"webhook": "webhook", "dataset": "dataset", "job": "batchjob", "deployment": "deploy"}


class DatatureErrors(ErrorShape):
    #: The core's inputs as the API's bodies and queries name them (SDK-CONTRACTS 3.3-3.6).
    field_names = {
        "max_retries": "maxRetries",
        "max_backoff_ms": "maxBackoffMs",
        "size_bytes": "sizeBytes",
        "start_at": "startAtTime",
        "stop_at": "stopAtTime",
        "min_level": "minLevel",
        "limit": "maxEntries",
    }

    def body(self, status: int, message: str) -> dict[str, Any]:
        return {"message": message}

    def message(self, exc: ModelbayError) -> str:
        if isinstance(exc, NotFound) and exc.kind in ID_PREFIXES and len(exc.name) == 36 and "_" not in exc.name:
            return f"{exc.kind.capitalize()} '{ID_PREFIXES[exc.kind]}_{exc.name}' was not found"
        return super().message(exc)


ERRORS = DatatureErrors()


class DatatureRoute(DialectRoute):
    errors = ERRORS

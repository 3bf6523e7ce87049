"""Log pages of runs and services, as the SDK pages them.

`logs`: ascending, `next_token` left out once nothing follows (clients loop on its presence).
`recentlogs`: descending from the newest; both tokens always present; the end is an empty page.
"""

from __future__ import annotations

from typing import Any

from modelbay.dialects.abeja import schemas

#: Lines one page holds.
PAGE_LINES = 100


def log_page(engine: Any, owner_id: str, next_token: str | None, start_time: str | None,
             end_time: str | None) -> dict[str, Any]:
    after = schemas.line_token(next_token, "next_token")
    start, end = schemas.query_time(start_time, "start_time"), schemas.query_time(end_time, "end_time")
    lines = engine.journal.page(owner_id, after=after, start=start, end=end, limit=PAGE_LINES + 1)
    answer: dict[str, Any] = {"events": schemas.events(lines[:PAGE_LINES])}
    if len(lines) > PAGE_LINES:
        answer["next_token"] = str(lines[PAGE_LINES - 1].id)
    return answer


def recent_log_page(engine: Any, owner_id: str, forward: str | None, backward: str | None,
                    start_time: str | None, end_time: str | None) -> dict[str, Any]:
    start, end = schemas.query_time(start_time, "start_time"), schemas.query_time(end_time, "end_time")
    after = schemas.line_token(forward, "next_forward_token")
    before = schemas.line_token(backward, "next_backward_token")
    if after is not None:  # newer lines than the page that gave this token
        lines = engine.journal.page(owner_id, after=after, start=start, end=end, newest_first=True, limit=PAGE_LINES)
    else:
        lines = engine.journal.page(owner_id, before=before, start=start, end=end, newest_first=True,
                                    limit=PAGE_LINES)
    if lines:
        newest, oldest = lines[0].id, lines[-1].id
        forward_token, backward_token = str(newest), str(oldest)
    else:  # the end: the same tokens again, so a client may poll for what comes later
        forward_token = forward or str(max((before or 1) - 1, 0))  # never "-1": no token this server takes
        backward_token = backward or str(after + 1 if after is not None else 0)
    return {"events": schemas.events(lines), "next_forward_token": forward_token,
            "next_backward_token": backward_token}

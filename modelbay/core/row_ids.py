"""Ids of the rows written at a high rate (requests, deliveries)."""

from __future__ import annotations

import uuid_utils


def time_ordered_id() -> str:
    """A UUID of version 7: its leading bits are the time, so rows inserted one after another sit side
    by side in their primary key's index. With random ids each insert changes a page of its own there,
    which each checkpoint writes to the database file again (direct requests on SQLite: the
    checkpoint's sync took 10 ms a second with random ids, 3.4 ms with these; bench/README.md)."""
    return str(uuid_utils.uuid7())

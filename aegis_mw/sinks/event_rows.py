"""The app's events as table rows, the same in SQLite and PostgreSQL.

Tags and the payload are stored as JSON text: one column each, read back as
they were given (:func:`aegis_mw.core.events.build_event` made them plain
JSON), and filtered by the database's own JSON functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..core.record import EventRecord

EVENT_COLUMNS = (
    "event_id", "timestamp", "type", "source", "level", "message", "tags", "payload",
    "trace_id",
)  # fmt: skip
_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event_row(event: EventRecord) -> tuple[Any, ...]:
    """The row that stores ``event``."""
    payload = None if event.payload is None else _DUMP(event.payload)
    return (*event[:6], _DUMP(list(event.tags)), payload, event.trace_id)


def event_rows(events: Sequence[EventRecord]) -> list[tuple[Any, ...]]:
    return [event_row(event) for event in events]


def event_from_row(row: Sequence[Any]) -> EventRecord:
    """The event a stored row holds."""
    tags, payload = row[6], row[7]
    return EventRecord(
        row[0], float(row[1]), row[2], row[3], row[4], row[5],
        tuple(json.loads(tags)), None if payload is None else json.loads(payload), row[8],
    )  # fmt: skip

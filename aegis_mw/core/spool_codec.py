"""A batch as bytes for the spool, and back: the same records, ids and rollups.

JSON, not pickle or marshal: the spool is a file on disk, and reading it
must never run or build anything but plain values, whatever it holds. A
payload is a header (the batch's ids, counts and field names), then the
records and the rollup cells in chunks of :data:`CHUNK`, each part JSON
text compressed on its own and framed by its length (4 bytes, big-endian).
One part is one ``json.dumps`` or ``json.loads`` call and one small zlib
call (about half a millisecond), so a slice check (see :mod:`.gil_slices`)
comes between two of them and a batch of thousands of records, or a delta
of thousands of cells, never holds the GIL for long.

Floats go through ``repr`` and come back equal; text keeps lone surrogates
(``ensure_ascii`` escapes them). Each payload names its record fields, so a
spool written by an earlier version whose records had other fields is read
by name (a field it lacks reads as None).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from .custom_metrics import MetricSnapshot
from .record import Batch, EventRecord, RequestRecord, WebSocketSession
from .rollup import RollupDelta

FORMAT = 1
#: Records, or rollup cells, per part.
CHUNK = 128
_DUMP = json.JSONEncoder(separators=(",", ":")).encode


class SpoolCorrupt(ValueError):
    """A spooled payload that cannot be read back as a batch."""


def oldest(batch: Batch, default: float) -> float:
    """The start of the batch's earliest record, ``default`` when it has none."""
    starts = [record.timestamp for record in batch.requests]
    starts += [session.timestamp for session in batch.sessions]
    # Not the events': their time is the caller's to give (a back-dated one
    # would make the spool look hours behind).
    return min(starts, default=default)


def encode(batch: Batch, check: Callable[[], None] = lambda: None) -> bytes:
    """The batch as bytes; ``check`` is called between parts."""
    rollups = batch.rollups
    header = {
        "format": FORMAT,
        "batch_id": batch.batch_id,
        "request_fields": RequestRecord._fields,
        "session_fields": WebSocketSession._fields,
        "requests": len(batch.requests),
        "sessions": len(batch.sessions),
        # Only when there are events, in parts of their own after the
        # sessions' (CHUNK a part, pausing between them as the records do).
        # No released version knew a spool without them.
        **(
            {"event_fields": EventRecord._fields, "events": len(batch.events)}
            if batch.events
            else {}
        ),
        "rollups": None
        if rollups is None
        else {
            "delta_id": rollups.delta_id,
            "requests": rollups.requests,
            "cells": len(rollups.cells),
            # The app's own metrics' cells, in parts after the request
            # cells'; only when there are some.
            **(
                {"custom": len(rollups.custom), "metrics": _metrics(rollups)}
                if rollups.custom
                else {}
            ),
        },
    }
    parts = [_part(header)]
    check()
    for records in (batch.requests, batch.sessions, batch.events):
        for start in range(0, len(records), CHUNK):
            parts.append(_part(records[start : start + CHUNK]))
            check()
    cells = [] if rollups is None else list(rollups.cells.items())
    for start in range(0, len(cells), CHUNK):
        parts.append(_part([_cell(key, cell) for key, cell in cells[start : start + CHUNK]]))
        check()
    custom = [] if rollups is None else list(rollups.custom.items())
    for start in range(0, len(custom), CHUNK):
        parts.append(_part([[*key, *cell] for key, cell in custom[start : start + CHUNK]]))
        check()
    return b"".join(parts)


def _metrics(delta: RollupDelta) -> list[list[Any]]:
    return [
        [m.name, m.kind, m.help, list(m.labels), list(m.bounds), m.mode]
        for m in delta.metrics.values()
    ]


def _cell(key: tuple[Any, ...], cell: list[Any]) -> list[Any]:
    """A rollup cell as one flat row: its key, its sums, its histogram's pairs."""
    return [*key, *cell[:-1], sorted(cell[-1].items())]


def _part(value: Any) -> bytes:
    packed = zlib.compress(_DUMP(value).encode("ascii"), 1)
    return len(packed).to_bytes(4, "big") + packed


def _parts(payload: bytes) -> Iterator[bytes]:
    """The framed parts' JSON text, one at a time."""
    view, where = memoryview(payload), 0
    while where < len(view):
        size = int.from_bytes(view[where : where + 4], "big")
        part = view[where + 4 : where + 4 + size]
        if size == 0 or len(part) != size:
            raise SpoolCorrupt("a part cut short")
        yield zlib.decompress(part)
        where += 4 + size


def decode(payload: bytes, check: Callable[[], None] = lambda: None) -> Batch:
    """The batch ``payload`` holds; :class:`SpoolCorrupt` if it holds none."""
    try:
        parts = _parts(payload)
        header = json.loads(next(parts, b"null"))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SpoolCorrupt("not a spooled batch of this format")
        counts = (int(header["requests"]), int(header["sessions"]))
        requests = _records(parts, counts[0], header["request_fields"], RequestRecord, check)
        sessions = _records(parts, counts[1], header["session_fields"], WebSocketSession, check)
        events = [
            _event(row)
            for row in _records(
                parts, int(header.get("events", 0)), header.get("event_fields", []), EventRecord,
                check,
            )
        ]  # fmt: skip
        rollups = None if header["rollups"] is None else _delta(header["rollups"], parts, check)
        if next(parts, None) is not None:
            raise SpoolCorrupt("more parts than its header counts")
        return Batch(
            requests, sessions, rollups=rollups, batch_id=str(header["batch_id"]), events=events
        )
    except SpoolCorrupt:
        raise
    except (zlib.error, ValueError, TypeError, KeyError, IndexError) as exc:
        raise SpoolCorrupt(f"{type(exc).__name__}: {exc}") from None


def _rows(parts: Iterator[bytes], missing: str) -> list[Any]:
    """The next part: a non-empty list of rows."""
    text = next(parts, None)
    if text is None:
        raise SpoolCorrupt(missing)
    rows = json.loads(text)
    if not isinstance(rows, list) or not rows:
        raise SpoolCorrupt("a part that is not a list of rows")
    return rows


def _records(
    parts: Iterator[bytes], count: int, fields: list[str], kind: Any, check: Callable[[], None]
) -> list[Any]:
    if fields == list(kind._fields):
        pick = None
    else:  # written by a version whose records had other fields: by name
        where = {name: index for index, name in enumerate(fields)}
        pick = [where.get(name) for name in kind._fields]
    records: list[Any] = []
    make = kind._make
    while len(records) < count:
        for row in _rows(parts, "fewer records than its header counts"):
            if not isinstance(row, list) or len(row) != len(fields):
                raise SpoolCorrupt("a record of another length than its fields")
            if pick is not None:
                row = [None if index is None else row[index] for index in pick]
            records.append(make(row))
        check()
    if len(records) != count:
        raise SpoolCorrupt("another number of records than its header counts")
    return records


def _event(record: EventRecord) -> EventRecord:
    """An event as JSON gave it back: its tags a tuple again, its payload checked."""
    tags: Any = record.tags
    payload: Any = record.payload
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise SpoolCorrupt("an event whose tags are not a list of text")
    if payload is not None and not isinstance(payload, dict):
        raise SpoolCorrupt("an event whose payload is not an object")
    return record._replace(tags=tuple(tags))


def _delta(data: dict[str, Any], parts: Iterator[bytes], check: Callable[[], None]) -> RollupDelta:
    delta = RollupDelta()
    delta.delta_id = str(data["delta_id"])
    delta.requests = int(data["requests"])
    count = int(data["cells"])
    while len(delta.cells) < count:
        for row in _rows(parts, "fewer rollup cells than its header counts"):
            if not isinstance(row, list) or len(row) != 13:
                raise SpoolCorrupt("a rollup cell of another shape")
            bucket, route, method, klass = row[:4]
            delta.cells[(int(bucket), str(route), str(method), int(klass))] = [
                *row[4:12],
                {int(index): int(number) for index, number in row[12]},
            ]
        check()
    if len(delta.cells) != count:
        raise SpoolCorrupt("another number of rollup cells than its header counts")
    _custom(delta, data, parts, check)
    return delta


def _custom(
    delta: RollupDelta, data: dict[str, Any], parts: Iterator[bytes], check: Callable[[], None]
) -> None:
    count = int(data.get("custom", 0))
    for name, kind, help_text, labels, bounds, mode in data.get("metrics", []) if count else []:
        delta.metrics[str(name)] = MetricSnapshot(
            str(name), str(kind), str(help_text), tuple(map(str, labels)),
            tuple(map(float, bounds)), str(mode), {}, 0,
        )  # fmt: skip
    while len(delta.custom) < count:
        for row in _rows(parts, "fewer custom metric cells than its header counts"):
            if not isinstance(row, list) or len(row) != 9:
                raise SpoolCorrupt("a custom metric cell of another shape")
            bucket, metric, labels, total, number, low, high, counts, span = row
            if counts is not None and not isinstance(counts, list):
                raise SpoolCorrupt("a custom metric cell whose counts are not a list")
            if span is not None and (
                not isinstance(span, list)
                or len(span) != 2
                or not all(type(bucket) is int for bucket in span)
            ):
                raise SpoolCorrupt("a custom metric cell whose span is not two buckets")
            delta.custom[(int(bucket), str(metric), str(labels))] = [
                float(total), int(number), None if low is None else float(low),
                None if high is None else float(high),
                None if counts is None else [int(c) for c in counts],
                None if span is None else [int(span[0]), int(span[1])],
            ]  # fmt: skip
        check()
    if len(delta.custom) != count:
        raise SpoolCorrupt("another number of custom metric cells than its header counts")

"""The app's own events: what they may hold, how they are queued and read.

An event is built and checked once, where it enters (``Aegis.event`` or
``POST {api_path}/events``): a bad field is an :class:`EventError` naming it,
so nothing a store would refuse ever reaches the pipeline. Checked events
wait in a bounded queue of their own (:class:`EventQueue`, counted exactly
when full) until the flusher hands them to each sink that stores events,
beside the request records: the same backlog bound, retries, spool and
refusal handling. Each is stored once per ``event_id``, so an event sent
again (a client's retry) is not stored twice.

Reading merges two sources: the stored events, and the request log's errors
(status 500 or more) as events of source ``app`` (:func:`request_event`),
built at read time so that a timeline needs no second copy of them.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from .history import NO_TRACE_ID, TRACE_ID_DIGITS, RequestQuery
from .record import EventRecord, RequestRecord
from .text_rules import text_problem

logger = logging.getLogger("aegis_mw.events")

TYPES = ("log", "metric", "trace", "alert")
LEVELS = ("debug", "info", "warning", "error", "critical")
#: The source of the request log's errors, and of events that name none.
APP_SOURCE = "app"
#: Tags of the request log's errors read as events.
REQUEST_TAGS = ("request",)
#: Prefix of the ids of the request log's errors read as events.
REQUEST_PREFIX = "request:"

MAX_ID = 128
MAX_SOURCE = 128
MAX_MESSAGE = 8192
MAX_TAGS = 32
MAX_TAG = 128
#: Bytes of a payload once encoded as JSON (UTF-8).
MAX_PAYLOAD = 16 * 1024
#: Levels of objects and lists a payload may nest: every reader (the JSON
#: encoder of an answer, the decoder of a stored row, the spool) then takes
#: it at whatever depth of the stack it reads.
MAX_DEPTH = 32
#: Bytes the queue may hold (messages, payloads and tags, encoded): events
#: are up to ~30 KB each, so the count bound alone could hold gigabytes.
MAX_QUEUED_BYTES = 16 * 1024 * 1024
#: Times an event may carry: those the API can write back (see endpoints.api).
EARLIEST = 0.0
LATEST = 253_370_764_800.0  # 9999-01-01T00:00:00Z

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]*")
_DUMP = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class EventError(ValueError):
    """An event field that cannot be taken; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _text(field: str, value: Any, limit: int, *, lines: bool = False, empty: bool = False) -> str:
    problem = text_problem(value, limit, lines=lines, empty=empty)
    if problem is not None:
        raise EventError(field, problem)
    text: str = value
    return text


def _choice(field: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise EventError(field, f"must be one of {', '.join(choices)}")
    return value


def _timestamp(value: Any, now: Callable[[], float]) -> float:
    if value is None:
        return now()
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        try:
            value = moment.timestamp()
        except (OverflowError, OSError, ValueError):
            raise EventError("timestamp", "is out of range") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError("timestamp", "must be seconds since the epoch or a datetime")
    try:
        seconds = float(value)
    except OverflowError:
        raise EventError("timestamp", "is out of range") from None
    if not math.isfinite(seconds) or not EARLIEST <= seconds < LATEST:
        raise EventError("timestamp", "must be a finite time between 1970 and 9999")
    return seconds


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise EventError("tags", "must be a list of text")
    tags = tuple(value)
    if len(tags) > MAX_TAGS:
        raise EventError("tags", f"may hold at most {MAX_TAGS} tags")
    for index, tag in enumerate(tags):
        _text(f"tags[{index}]", tag, MAX_TAG)
        if "," in tag:  # the API's filter lists tags with commas
            raise EventError(f"tags[{index}]", "may not hold a comma")
        if tag != tag.strip():  # the API's filter strips them
            raise EventError(f"tags[{index}]", "may not begin or end with a space")
    # Each tag once, in the order given: a filter asks whether one is there.
    return tuple(dict.fromkeys(tags))


def _too_deep(value: Any) -> bool:
    """Whether objects and lists nest past MAX_DEPTH (checked without recursion)."""
    if not any(isinstance(child, (Mapping, list, tuple)) for child in value.values()):
        return False  # the usual payload: one level of plain values
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _payload(value: Any) -> tuple[dict[str, Any] | None, int]:
    """The payload as every store gives it back, and its size encoded."""
    if value is None:
        return None, 0
    if not isinstance(value, Mapping):
        raise EventError("payload", "must be a JSON object (a mapping)")
    try:
        if _too_deep(value):
            raise EventError(
                "payload", f"may nest objects and lists {MAX_DEPTH} levels deep at most"
            )
    except RecursionError:  # a mapping whose values() recurse, say
        raise EventError("payload", "must be JSON-encodable (it recurses)") from None
    try:
        # Stored as this text: JSON escapes every control character (a NUL
        # too), so any store keeps it.
        text = _DUMP(dict(value))
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise EventError("payload", "must be valid Unicode (no lone surrogates)") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise EventError("payload", f"must be JSON-encodable ({exc})") from None
    if size > MAX_PAYLOAD:
        raise EventError("payload", f"may be at most {MAX_PAYLOAD} bytes once encoded as JSON")
    # What every store gives back: the JSON, decoded (tuples become lists, and so on).
    decoded: dict[str, Any] = json.loads(text)
    return decoded, size


def size_of(event: EventRecord, payload_size: int | None = None) -> int:
    """About the bytes ``event`` holds: its texts (its payload's encoded size
    when known, else encoded again)."""
    if payload_size is None:
        payload_size = 0 if event.payload is None else len(_DUMP(event.payload))
    return len(event.message) + payload_size + sum(map(len, event.tags)) + 200


def new_event_id() -> str:
    """A random id: 24 hex digits."""
    return os.urandom(12).hex()


class _IdMaker:
    """Ids of 24 hex digits: 16 random ones drawn once per process, then a
    count, as request ids are made (a fifth of the cost of drawing each)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count(1)
        # next() of a count is atomic under the GIL, not without one.
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            number = next(self._count)
        return f"{self._prefix}{number:08x}"


def build_sized_event(
    message: Any,
    *,
    type: Any = "log",
    source: Any = APP_SOURCE,
    level: Any = "info",
    tags: Any = None,
    payload: Any = None,
    timestamp: Any = None,
    event_id: Any = None,
    trace_id: Any = None,
    now: Callable[[], float],
    make_id: Callable[[], str] = new_event_id,
) -> tuple[EventRecord, int]:
    """A checked event, and about the bytes it holds (see :func:`size_of`);
    :class:`EventError` naming the first bad field. ``make_id`` gives the id
    of an event sent without one."""
    if event_id is None:
        event_id = make_id()
    else:
        _text("id", event_id, MAX_ID)
        if not _ID.fullmatch(event_id):
            raise EventError(
                "id", "must start with a letter or digit and hold only letters, digits and ._:@/-"
            )
        if event_id.startswith(REQUEST_PREFIX):
            raise EventError("id", f"may not start with {REQUEST_PREFIX!r} (the request log's)")
    if trace_id is not None:
        if not isinstance(trace_id, str) or not TRACE_ID_DIGITS.fullmatch(trace_id):
            raise EventError("trace_id", "must be 32 lowercase hex digits")
        if trace_id == NO_TRACE_ID:
            raise EventError("trace_id", "may not be all zeros (an invalid trace id)")
    # Checked in this order: the first bad field is the one named.
    seconds = _timestamp(timestamp, now)
    kind = _choice("type", type, TYPES)
    source = _text("source", source, MAX_SOURCE)
    level = _choice("level", level, LEVELS)
    message = _text("message", message, MAX_MESSAGE, lines=True, empty=True)
    checked_tags = _tags(tags)
    payload_value, payload_size = _payload(payload)
    record = EventRecord(
        event_id, seconds, kind, source, level, message, checked_tags, payload_value, trace_id
    )
    return record, size_of(record, payload_size)


def build_event(message: Any, **fields: Any) -> EventRecord:
    """A checked event (the fields of :func:`build_sized_event`)."""
    return build_sized_event(message, **fields)[0]


class EventQueue:
    """Events waiting for the flusher: bounded, counted exactly when full.

    Producers are any threads (request handlers, jobs, the API); a lock makes
    the bound and the count exact, and costs nothing next to the checks."""

    def __init__(
        self,
        max_events: int,
        *,
        wake_at: int | None = None,
        wake: Callable[[], None] = lambda: None,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        #: Wake the flusher once this many wait (as the inbox does): a burst
        #: must not be refused while the flusher sleeps out its interval.
        self.wake_at = max_events if wake_at is None else wake_at
        self._wake = wake
        self._queue: deque[EventRecord] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.closed = False
        #: Events refused: the queue full, offered after shutdown began, or
        #: offered while no sink stores events.
        self.dropped = {"event_buffer_full": 0, "event_shutdown": 0, "no_event_sink": 0}
        #: Events taken in since the process started.
        self.accepted = 0
        self._ids = _IdMaker()

    def offer(self, event: EventRecord, size: int | None = None) -> bool:
        """Queue ``event`` (of ``size``, see :func:`size_of`); False (and
        counted) when it cannot be."""
        if size is None:
            size = size_of(event)
        with self._lock:
            if self.closed:
                self.dropped["event_shutdown"] += 1
                return False
            queued = len(self._queue)
            if queued >= self.max_events or self._bytes + size > self.max_bytes:
                self.dropped["event_buffer_full"] += 1
                return False
            self._queue.append(event)
            self._bytes += size
            self.accepted += 1
        if queued + 1 >= self.wake_at:
            self._wake()
        return True

    def refuse_unstored(self) -> None:
        """Count an event refused because no sink stores events (logged once)."""
        with self._lock:
            self.dropped["no_event_sink"] += 1
            first = self.dropped["no_event_sink"] == 1
        if first:
            logger.warning(
                "aegis_mw: an event was recorded but no sink stores events (memory, sqlite, "
                "postgresql and jsonl do); events are counted as dropped (no_event_sink)"
            )

    def take(self) -> list[EventRecord]:
        """Everything queued, removed."""
        with self._lock:
            if not self._queue:
                return []
            taken = list(self._queue)
            self._queue.clear()
            self._bytes = 0
            return taken

    def __len__(self) -> int:
        return len(self._queue)

    def new_id(self) -> str:
        """An id for an event sent without one: unique across processes."""
        return self._ids.next()

    def reset_after_fork(self) -> None:
        """A forked child: the parent still owns and writes what was queued."""
        self._lock = threading.Lock()
        self._queue.clear()
        self._bytes = 0
        self.dropped = dict.fromkeys(self.dropped, 0)
        self.accepted = 0
        self._ids = _IdMaker()  # not the parent's: its ids would be made twice


@dataclass(frozen=True)
class EventQuery:
    """Filters for reading events; ``None`` (or empty) means any. Newest first.

    ``types`` and ``levels`` take any of theirs; ``tags`` each must be there;
    ``since``/``until`` are seconds since the epoch, ``until`` exclusive.
    """

    types: tuple[str, ...] = ()
    source: str | None = None
    levels: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    trace_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0


def matches(event: EventRecord, query: EventQuery) -> bool:
    """Whether ``event`` passes ``query``'s filters (not its page)."""
    return (
        (not query.types or event.type in query.types)
        and (query.source is None or event.source == query.source)
        and (not query.levels or event.level in query.levels)
        and all(tag in event.tags for tag in query.tags)
        and (query.trace_id is None or event.trace_id == query.trace_id)
        and (query.since is None or event.timestamp >= query.since)
        and (query.until is None or event.timestamp < query.until)
    )


def newest_first(event: EventRecord) -> tuple[float, str]:
    """The order events are read in, reversed: by time, then by id."""
    return (event.timestamp, event.event_id)


def request_event(record: RequestRecord) -> EventRecord:
    """A request of the log that failed (status 500 or more), read as an event."""
    message = record.error or f"{record.method} {record.route} answered {record.status}"
    return EventRecord(
        event_id=f"{REQUEST_PREFIX}{record.request_id}",
        timestamp=record.timestamp,
        type="log",
        source=APP_SOURCE,
        level="error",
        message=message,
        tags=REQUEST_TAGS,
        payload={
            "request_id": record.request_id,
            "method": record.method,
            "route": record.route,
            "path": record.path,
            "status": record.status,
            "duration_ms": record.duration_ms,
        },
        trace_id=record.trace_id,  # the request's trace: the same id space as events'
    )


def request_query(query: EventQuery) -> RequestQuery | None:
    """The request-log query whose errors pass ``query``'s filters, with
    enough rows for its page; None when no request error can pass."""
    if (
        (query.types and "log" not in query.types)
        or (query.source is not None and query.source != APP_SOURCE)
        or (query.levels and "error" not in query.levels)
        or any(tag not in REQUEST_TAGS for tag in query.tags)
    ):
        return None
    return RequestQuery(
        status_from=500,
        since=query.since,
        until=query.until,
        limit=query.offset + query.limit,
        trace_id=query.trace_id,
    )


def read_merged(
    query: EventQuery,
    read_events: Callable[[EventQuery], list[EventRecord]],
    read_requests: Callable[[RequestQuery], list[RequestRecord]] | None,
) -> list[EventRecord]:
    """One page of stored events and the request log's errors, newest first.

    Each source gives its first ``offset + limit`` in the same order, so the
    page of the merged order is among them."""
    both = replace(query, limit=query.offset + query.limit, offset=0)
    stored = read_events(both)
    wanted = request_query(query) if read_requests is not None else None
    errors = [] if wanted is None or read_requests is None else read_requests(wanted)
    failed = [request_event(record) for record in errors]
    merged = heapq.merge(stored, failed, key=newest_first, reverse=True)
    page = list(merged)
    return page[query.offset : query.offset + query.limit]

"""The public record schema shared by sinks, the JSON API and the dashboard.

Records are ``NamedTuple`` subclasses on purpose: a tuple is what SQLite's and
psycopg's ``executemany`` take as a parameter row, so a sink can hand a batch to
its driver without building anything per record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .rollup import RollupDelta

#: Route value for requests the framework's router did not match.
UNMATCHED_ROUTE = "<unmatched>"
#: Route value once ``max_routes`` distinct templates have been seen.
OVERFLOW_ROUTE = "<overflow>"
#: Method value for anything outside the standard HTTP methods.
OTHER_METHOD = "_OTHER"
#: Status recorded when the client went away before the response completed.
CLIENT_CLOSED_STATUS = 499


def isoformat(timestamp: float) -> str:
    """Format seconds since the epoch as ISO 8601 UTC with millisecond precision."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestRecord(NamedTuple):
    """One HTTP request, as stored by every sink.

    ``timestamp`` is seconds since the epoch (UTC) when the request started;
    ``path`` is the path as the server decoded it, without the query string;
    ``duration_ms`` runs to the last body byte, ``ttfb_ms`` to the response
    start (``None`` when no response started). ``error`` is empty unless the
    app raised. ``trace_id`` (32 lowercase hex digits) and ``span_id`` (16)
    name the request's span when a trace was active (OpenTelemetry's current
    span, else a valid incoming W3C ``traceparent``: then the caller's span);
    ``None`` otherwise.
    """

    request_id: str
    timestamp: float
    method: str
    route: str
    path: str
    status: int
    duration_ms: float
    ttfb_ms: float | None
    request_bytes: int
    response_bytes: int
    client_ip: str | None
    error: str
    trace_id: str | None = None
    span_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the timestamp in ISO 8601."""
        data = self._asdict()
        data["timestamp"] = isoformat(self.timestamp)
        return data


class WebSocketSession(NamedTuple):
    """One WebSocket connection, from handshake to close.

    ``close_code`` is the code of whichever side closed first: the client's
    (1005 when it gave none) or the app's (1000 when it gave none); 1008 when
    the app refused the handshake with an HTTP response, 1011 when the app
    raised, 1006 when the connection broke; ``None`` when the app returned
    without either side closing. ``accepted`` is false for a refused handshake.
    ``trace_id`` and ``span_id``: as a :class:`RequestRecord`'s, for the
    handshake.
    """

    session_id: str
    timestamp: float
    route: str
    path: str
    duration_ms: float
    messages_in: int
    messages_out: int
    close_code: int | None
    accepted: bool
    client_ip: str | None
    error: str
    trace_id: str | None = None
    span_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the timestamp in ISO 8601."""
        data = self._asdict()
        data["timestamp"] = isoformat(self.timestamp)
        return data


class EventRecord(NamedTuple):
    """One event of the app's own: a log line, a deploy, a job's outcome.

    ``type`` is one of ``log``, ``metric``, ``trace`` and ``alert``; ``level``
    one of ``debug``, ``info``, ``warning``, ``error`` and ``critical``;
    ``tags`` short texts (``"region:eu"``), ``payload`` a JSON object or
    ``None``; ``trace_id`` 32 lowercase hex digits or ``None``. Built and
    checked by :func:`aegis_mw.core.events.build_event`.
    """

    event_id: str
    timestamp: float
    type: str
    source: str
    level: str
    message: str
    tags: tuple[str, ...]
    payload: dict[str, Any] | None
    trace_id: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the timestamp in ISO 8601 (the id as ``id``)."""
        data = {"id": self.event_id, **self._asdict()}
        del data["event_id"]
        data["timestamp"] = isoformat(self.timestamp)
        data["tags"] = list(self.tags)
        return data


Stored = RequestRecord | WebSocketSession | EventRecord


@dataclass(frozen=True)
class Batch:
    """What a sink's ``write`` receives: the requests and sessions of one flush.

    A batch may be delivered again after a failure or a timeout whose write in
    fact completed, so sinks store it idempotently: by ``request_id`` and
    ``session_id`` (the JSONL and memory sinks), or, since a batch delivered
    again is the same batch (the same records under the same ``batch_id``,
    never reused for other records), by storing each ``batch_id`` once, in
    the transaction that stores its records (the SQLite and PostgreSQL
    sinks); there an empty ``batch_id`` (a batch built by hand) is stored as
    it is. ``rollups`` is given only to sinks that keep history
    (those with ``read_rollups``); they apply each ``delta_id`` once.
    ``events`` (the app's own, :meth:`aegis_mw.Aegis.event`) only to sinks
    that set ``stores_events = True``; they store each ``event_id`` once.
    """

    requests: list[RequestRecord] = field(default_factory=list)
    sessions: list[WebSocketSession] = field(default_factory=list)
    rollups: RollupDelta | None = None
    batch_id: str = ""
    events: list[EventRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests) + len(self.sessions) + len(self.events)

    def records(self) -> list[Stored]:
        """Every record of the batch: requests, then sessions, then events."""
        return [*self.requests, *self.sessions, *self.events]

    @classmethod
    def of(cls, records: list[Stored], batch_id: str = "") -> Batch:
        """A batch of ``records`` (no rollups), each in its list by its type."""
        requests = [record for record in records if type(record) is RequestRecord]
        sessions = [record for record in records if type(record) is WebSocketSession]
        events = [record for record in records if type(record) is EventRecord]
        return cls(requests, sessions, batch_id=batch_id, events=events)

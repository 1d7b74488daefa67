"""``{api_path}/events``: the app's events, read (GET) and sent (POST).

``GET`` filters by ``type``, ``level`` and ``tags`` (each a comma-separated
list: any of the types and levels, every one of the tags), ``source``,
``trace_id`` and the time range (``since``, ``until``), newest first, paged
by ``limit`` and ``offset``. The request log's errors are among them, as
events of source ``app`` (see :mod:`aegis_mw.core.events`).

``POST`` takes one event (a JSON object) or up to :data:`MAX_EVENTS` (an
array of them), checked whole before any is queued: a bad one is a 400
naming it (``[2].level``). They are stored by the flusher, so the answer is
202 with their ids; the same id sent again is stored once. Each POST that
queued events is audited (who, when, from where, which ids: see
:mod:`aegis_mw.core.audit_log`). While the store cannot take the entry (down,
or locked past its timeout; its breaker open), the entry goes to the
``aegis_mw.audit`` logger as a warning instead and the events are queued as
ever: they wait for the store in the pipeline (and its spool), and the post
is never refused for its audit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.events import (
    LEVELS,
    MAX_TAG,
    TYPES,
    EventError,
    EventQuery,
    build_event,
    new_event_id,
)
from ..core.labels import describe_error
from ..core.record import EventRecord
from ..history.breaker import StoreUnavailable
from ..history.ranges import QueryError, parse_time
from .response import Response

if TYPE_CHECKING:
    from ..aegis import Aegis

#: Where posts are audited when no store keeps an audit (a JSONL sink alone).
audit_logger = logging.getLogger("aegis_mw.audit")

#: The query parameters of ``GET {api_path}/events``.
EVENT_PARAMETERS = (
    "type", "level", "source", "tags", "trace_id", "since", "until", "limit", "offset",
)  # fmt: skip
#: The most events one POST may carry.
MAX_EVENTS = 100
#: Pages reach this far back: each read merges two sources' first rows.
MAX_EVENT_OFFSET = 10_000
_FIELDS = ("type", "source", "message", "level", "tags", "payload", "timestamp", "id", "trace_id")


def comma_choices(
    params: Mapping[str, str],
    name: str,
    allowed: tuple[str, ...],
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[str, ...]:
    """The values a comma-separated parameter lists (each once, in order; an
    alias stands for its values); QueryError for one not ``allowed``."""
    text = params.get(name)
    if text is None:
        return ()
    aliases = aliases or {}
    chosen: list[str] = []
    for part in text.split(","):
        value = part.strip()
        if value not in allowed and value not in aliases:
            listed = ", ".join((*allowed, *aliases))
            raise QueryError(name, f"{name} must be a comma-separated list of {listed}")
        chosen.extend(aliases.get(value, (value,)))
    return tuple(dict.fromkeys(chosen))


def event_query(
    params: Mapping[str, str],
    integer: Callable[[Mapping[str, str], str, int, int, int], int],
    time: Callable[[Mapping[str, str], str], float | None],
) -> EventQuery:
    """An EventQuery from text parameters (checked as text by the caller)."""
    tags: tuple[str, ...] = ()
    if "tags" in params:
        tags = tuple(dict.fromkeys(part.strip() for part in params["tags"].split(",")))
        if any(not tag or len(tag) > MAX_TAG for tag in tags):
            raise QueryError(
                "tags", f"tags must be a comma-separated list of tags of 1 to {MAX_TAG} characters"
            )
    source = params.get("source")
    if source is not None and not source:
        raise QueryError("source", "source may not be empty")
    trace_id = params.get("trace_id")
    if trace_id is not None and (
        len(trace_id) != 32 or not all(c in "0123456789abcdef" for c in trace_id)
    ):
        raise QueryError("trace_id", "trace_id must be 32 lowercase hex digits")
    since, until = time(params, "since"), time(params, "until")
    if since is not None and until is not None and since >= until:
        raise QueryError("since", "since must be before until")
    return EventQuery(
        types=comma_choices(params, "type", TYPES),
        source=source,
        levels=comma_choices(params, "level", LEVELS),
        tags=tags,
        trace_id=trace_id,
        since=since,
        until=until,
        limit=integer(params, "limit", 100, 1, 1000),
        offset=integer(params, "offset", 0, 0, MAX_EVENT_OFFSET),
    )


def events_answer(events: list[EventRecord], query: EventQuery) -> dict[str, Any]:
    return {
        "limit": query.limit,
        "offset": query.offset,
        "events": [event.to_json() for event in events],
    }


class BadEvent(Exception):
    """A POSTed event that cannot be taken: 400 naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _event(
    data: Any, where: str, now: Callable[[], float], make_id: Callable[[], str]
) -> EventRecord:
    if not isinstance(data, dict):
        raise BadEvent(where or "body", "an event must be a JSON object")
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in _FIELDS:
            raise BadEvent(f"{prefix}{key}", f"unknown field; known: {', '.join(_FIELDS)}")
    if "message" not in data:
        raise BadEvent(f"{prefix}message", "message is required")
    timestamp = data.get("timestamp")
    if isinstance(timestamp, str):
        try:
            timestamp = parse_time("timestamp", timestamp)
        except QueryError as error:
            raise BadEvent(f"{prefix}timestamp", error.message) from None
    fields = {"type": "log", "source": "app", "level": "info"}
    fields.update({key: data[key] for key in ("type", "source", "level") if key in data})
    try:
        return build_event(
            data["message"], tags=data.get("tags"), payload=data.get("payload"),
            timestamp=timestamp, event_id=data.get("id"), trace_id=data.get("trace_id"),
            now=now, make_id=make_id, **fields,
        )  # fmt: skip
    except EventError as error:
        raise BadEvent(f"{prefix}{error.field}", error.message) from None


def parse_events(
    body: bytes, now: Callable[[], float], make_id: Callable[[], str] = new_event_id
) -> list[EventRecord]:
    """The events a POST body holds, every one checked; :class:`BadEvent` for the first bad one."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadEvent("body", f"the body is not JSON: {exc}") from None
    if isinstance(data, list):
        if not data:
            raise BadEvent("body", "the list of events is empty")
        if len(data) > MAX_EVENTS:
            raise BadEvent("body", f"at most {MAX_EVENTS} events at once")
        return [_event(item, f"[{index}]", now, make_id) for index, item in enumerate(data)]
    return [_event(data, "", now, make_id)]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def post_events(aegis: Aegis, body: bytes, actor: str) -> Response:
    """The answer to ``POST {api_path}/events``; ``actor`` is who posts."""
    if not aegis.stores_events:
        return Response.error(
            409, "events_not_stored",
            "no sink stores events; use sqlite:///..., postgresql://..., memory:// or jsonl:///...",
        )  # fmt: skip
    try:
        events = parse_events(body, aegis.clock.wall, aegis.recorder.events.new_id)
    except BadEvent as error:
        return Response.json(
            400,
            {"error": {"code": "invalid_field", "message": error.message, "field": error.field}},
        )
    queue = aegis.recorder.events
    taken = [index for index, event in enumerate(events) if queue.offer(event)]
    if taken:
        _audit(aegis, actor, [events[index] for index in taken])
    if len(taken) < len(events):
        # The queue is full (the store is behind, or a burst outran the
        # flusher) or shutdown began: those not taken are counted as dropped.
        # Which ones were taken, by their place in the body and their id, so
        # a client sends only the others again (an event without an id of its
        # own would be stored twice if sent again whole).
        message = (
            f"{len(events) - len(taken)} of {len(events)} events could not be queued now "
            "(the event queue is full, or the app is stopping); send the others again later"
        )
        refusal = {
            "code": "events_not_queued", "message": message,
            "accepted": [events[index].event_id for index in taken], "accepted_indexes": taken,
        }  # fmt: skip
        return Response.json(503, {"error": refusal}, headers=[("Retry-After", "5")])
    ids = [event.event_id for event in events]
    return Response.json(202, {"data": {"accepted": len(ids), "ids": ids}})


def _audit(aegis: Aegis, actor: str, queued: list[EventRecord]) -> None:
    """Keep who posted which events (those queued), in the audit log, or on
    the ``aegis_mw.audit`` logger where there is none (INFO) or it cannot be
    written now (WARNING, with why)."""
    detail = {"events": len(queued), "ids": [event.event_id for event in queued]}
    audit_log, guarded = aegis.audit_log, aegis.reads.history
    if audit_log is None:
        audit_logger.info("%s: post events %s", actor, json.dumps(detail))
        return
    at = aegis.clock.wall()
    try:
        if guarded is None:  # never: the audit log is the history store's
            audit_log.add(at, actor, "post", "events", detail)
        else:
            guarded.guarded(lambda: audit_log.add(at, actor, "post", "events", detail))
    except Exception as error:
        # Why: the store's own error, or its breaker open since one.
        cause = error.__cause__ if isinstance(error.__cause__, Exception) else None
        why = (
            "the store is down (since an earlier failure)"
            if isinstance(error, StoreUnavailable) and cause is None
            else describe_error(cause or error, 200)
        )
        audit_logger.warning(
            "%s: post events %s (not in the audit log: %s)", actor, json.dumps(detail), why
        )

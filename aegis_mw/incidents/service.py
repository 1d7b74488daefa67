"""What the API, the CLI and the app do with incidents: open, change, read,
and rebuild an incident's timeline and summary from what was recorded.

The timeline runs from :data:`BEFORE` seconds before the incident opened to
its resolution (or now): its own updates (opened, changed, notes, attached
openings), the app's events and the request log's errors (see
:mod:`aegis_mw.core.events`), and the alert transitions, in time order, each
source read up to :data:`CAP` items (``truncated`` says when one had more).
The summary compares the request log's rollups before, during and after.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.events import REQUEST_PREFIX, EventQuery
from ..core.record import isoformat
from ..core.rollup import FINEST
from ..core.text_rules import CONTROL
from ..history.ranges import QueryError
from .model import (
    MAX_KEY,
    MAX_TEXT,
    MAX_TITLE,
    RESOLVED,
    Incident,
    IncidentUpdate,
    changes,
    opening,
    text,
)
from .store import IncidentStore

if TYPE_CHECKING:
    from ..alerts.evaluator import Transition
    from ..alerts.store import AlertStore
    from ..history.queries import HistoryQueries

#: An alert rule's severity -> the severity of the incident it opens.
ALERT_SEVERITIES = {"critical": "critical", "error": "high", "warning": "medium", "info": "low"}
#: Characters of who opens or changes an incident (shown, so checked as text).
MAX_ACTOR = 512
#: Seconds of the timeline before the incident opened.
BEFORE = 900.0
#: Items read from each source of a timeline at most.
CAP = 5000
#: The summary's "before" and "after" spans: the incident's duration, within these.
SPAN_MIN, SPAN_MAX = 60.0, 3600.0


def new_incident_id() -> str:
    return f"inc-{os.urandom(6).hex()}"


class Incidents:
    """Incidents of one app: its store, and what their timelines read."""

    def __init__(
        self,
        store: IncidentStore,
        wall: Callable[[], float],
        *,
        events: Callable[[EventQuery], list[Any]] | None = None,
        queries: HistoryQueries | None = None,
        alerts: Callable[[], AlertStore | None] = lambda: None,
    ) -> None:
        self.store = store
        self.wall = wall
        self._events = events
        self._queries = queries
        self._alerts = alerts

    # -- writes --------------------------------------------------------------------------
    def open(self, data: Mapping[str, Any], actor: str) -> tuple[Incident, bool]:
        """Open an incident (fields as the API takes them), or attach to the
        active one of its correlation key: the incident, and whether it is new."""
        return self.store.open(self._opening(opening(data), actor))

    def open_once(
        self, data: Mapping[str, Any], actor: str, key: str, sender: str
    ) -> tuple[Incident, bool, bool]:
        """``open``, once per ``Idempotency-Key`` ``key`` of ``sender`` (the
        credential) in a day: the incident, whether it is new, and whether
        this answers an earlier opening of the key (see
        :meth:`IncidentStore.open_once`). Only hashes are stored: of the key
        with its sender, and of the opening's fields."""
        fields = opening(data)
        incident = self._opening(fields, actor)
        return self.store.open_once(incident, _digest([sender, key]), _digest(fields))

    def _opening(self, fields: Mapping[str, Any], actor: str) -> Incident:
        """A new incident of checked ``fields``, opened now by ``actor``."""
        actor = text("actor", actor, MAX_ACTOR, empty=False)
        now = self.wall()
        return Incident(
            new_incident_id(), fields["title"], fields["description"], fields["severity"],
            fields["status"], fields["assignee"], fields["root_cause"], fields["correlation_key"],
            now, now, None, actor,
        )  # fmt: skip

    def change(self, incident_id: str, data: Mapping[str, Any], actor: str) -> Incident | None:
        """Change fields and add a note (fields as the API takes them)."""
        changed, note = changes(data)
        actor = text("actor", actor, MAX_ACTOR, empty=False)
        return self.store.change(incident_id, changed, note, actor, self.wall())

    def open_for_alert(self, transition: Transition) -> tuple[Incident, bool]:
        """An incident for an alert that started firing, one per rule while it
        is active (key ``alert:<rule>``): later firings of the rule (its other
        groups, or again before it is resolved) attach to it."""
        group = ", ".join(f"{name}={value}" for name, value in transition.group)
        title = _plain(f"{transition.rule} firing" + (f" ({group})" if group else ""))
        annotations = transition.annotations
        description = _plain(annotations.get("summary", "") or annotations.get("description", ""))
        data = {
            "title": title[:MAX_TITLE],
            "description": description[:MAX_TEXT],
            "severity": ALERT_SEVERITIES.get(transition.severity, "medium"),
            "correlation_key": f"alert:{transition.rule}"[:MAX_KEY],
        }
        return self.open(data, "alerts")

    # -- reads ---------------------------------------------------------------------------
    def get(self, incident_id: str) -> Incident | None:
        return self.store.get(incident_id)

    def updates(self, incident_id: str) -> list[IncidentUpdate]:
        return self.store.updates(incident_id)

    def find(
        self, statuses: tuple[str, ...] = (), severities: tuple[str, ...] = (),
        limit: int = 100, offset: int = 0,
    ) -> list[Incident]:  # fmt: skip
        return self.store.find(statuses, severities, limit, offset)

    def counts(self, since: float) -> tuple[int, int, int]:
        """All incidents, the active ones, and those opened at or after ``since``."""
        return self.store.counts(since)

    def timeline(self, incident: Incident, limit: int, offset: int | None) -> dict[str, Any]:
        """One page of what happened around ``incident``, oldest first
        (``offset`` None: the last ``limit`` items)."""
        start = incident.created_at - BEFORE
        end = incident.resolved_at if incident.resolved_at is not None else self.wall()
        items: list[tuple[float, int, dict[str, Any]]] = []
        truncated = False
        for update in self.updates(incident.incident_id):
            items.append((update.at, 0, {"kind": "incident", "update": update.to_json()}))
        if self._events is not None:
            # Events and the request log's errors, merged: up to CAP of them.
            found = self._events(EventQuery(since=start, until=end + 0.001, limit=CAP + 1))
            truncated = truncated or len(found) > CAP
            found = found[:CAP]  # the newest: a source cut short keeps its latest
            for event in found:
                kind = "request_error" if event.event_id.startswith(REQUEST_PREFIX) else "event"
                items.append((event.timestamp, 1, {"kind": kind, "event": event.to_json()}))
        alerts = self._alerts()
        if alerts is not None:
            transitions, more = _transitions(alerts, start, end)
            truncated = truncated or more
            for row in transitions:
                transition = {**row, "at": isoformat(row["at"])}
                items.append((row["at"], 2, {"kind": "alert", "transition": transition}))
        items.sort(key=lambda item: (item[0], item[1]))
        if offset is None:
            offset = max(len(items) - limit, 0)
        page = [{"at": isoformat(at), **item} for at, _, item in items[offset : offset + limit]]
        return {
            "incident": incident.to_json(),
            "from": isoformat(start),
            "to": isoformat(end),
            "total": len(items),
            "truncated": truncated,
            "limit": limit,
            "offset": offset,
            "items": page,
        }

    def summary(self, incident: Incident) -> dict[str, Any]:
        """Its duration and the requests before, during and after it (from the
        rollups: failed requests are server errors, as the overview counts)."""
        now = self.wall()
        opened = incident.created_at
        closed = incident.resolved_at if incident.resolved_at is not None else now
        # Whole rollup buckets, the edges shared, so no request counts in two
        # periods: "during" holds the buckets the incident touched.
        start = math.floor(opened / FINEST) * FINEST
        end = max(math.ceil(closed / FINEST) * FINEST, start + FINEST)
        span = math.ceil(min(max(closed - opened, SPAN_MIN), SPAN_MAX) / FINEST) * FINEST
        during = self._figures(start, end)
        after = None
        if incident.status == RESOLVED and now > end:
            after = self._figures(end, min(end + span, now))
        return {
            "duration_seconds": round(closed - opened, 3),
            "resolved": incident.status == RESOLVED,
            "requests_affected": None if during is None else during["failed"],
            "before": self._figures(start - span, start),
            "during": during,
            "after": after,
        }

    def _figures(self, since: float, until: float) -> dict[str, Any] | None:
        queries = self._queries
        if queries is None or until <= since:
            return None
        try:
            overview = queries.overview(None, since, until)
        except QueryError:  # beyond what the rollups can answer (a year-old incident)
            return None
        return {
            "from": overview["range"]["from"], "to": overview["range"]["to"],
            "requests": overview["total"], "failed": overview["failed"],
            "error_rate": overview["error_rate"],
        }  # fmt: skip


def _digest(value: Any) -> str:
    """A SHA-256 of ``value`` as canonical JSON (keys sorted)."""
    encoded = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def _plain(text: str) -> str:
    """Text of a rule (its annotations and group are not checked as an
    incident's fields are) with its control characters made spaces."""
    return CONTROL.sub(" ", text).encode("utf-8", "replace").decode("utf-8")


def _transitions(store: AlertStore, start: float, end: float) -> tuple[list[dict[str, Any]], bool]:
    """The alert transitions at ``start <= at <= end``, and whether there were
    more than CAP of them (read newest first, in pages, until before ``start``)."""
    found: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        rows = store.history(500, before)
        for row in rows:
            if row["at"] < start:
                return found, False
            if row["at"] <= end:
                found.append(row)
                if len(found) >= CAP:
                    return found, True
        if len(rows) < 500:
            return found, False
        before = rows[-1]["id"]

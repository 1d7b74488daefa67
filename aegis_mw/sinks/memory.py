"""``memory://``: records kept in the process, for tests and experiments.

It keeps history too, with the same rollup arithmetic as the databases, so
the queries answer the same from memory as from SQLite or PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..core.audit_log import MemoryAuditLog
from ..core.custom_history import (
    SPAN,
    CustomCell,
    CustomRow,
    copy_custom,
    expand_custom,
    merge_custom,
)
from ..core.custom_metrics import MetricSnapshot
from ..core.events import EventQuery, matches, newest_first
from ..core.history import RequestQuery
from ..core.record import Batch, EventRecord, RequestRecord, WebSocketSession
from ..core.rollup import (
    LEVELS,
    Cell,
    RollupDelta,
    RollupRow,
    copy_cell,
    expand,
    merge_cell,
    rows_from,
)
from ..incidents.store import MemoryIncidentStore


class MemorySink:
    """Keeps every record in memory, once per id, in arrival order.

    Example::

        sink = MemorySink()
        aegis = Aegis(sink=sink)
        ...
        aegis.force_flush()
        assert sink.requests[0].route == "/items/{item_id}"
    """

    name = "memory"
    stores_events = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, RequestRecord] = {}
        self._sessions: dict[str, WebSocketSession] = {}
        self._events: dict[str, EventRecord] = {}
        self._incidents = MemoryIncidentStore()
        self._audit = MemoryAuditLog()
        self._rollups: dict[tuple[Any, ...], Cell] = {}
        self._totals: dict[tuple[Any, ...], Cell] = {}
        self._custom: dict[tuple[Any, ...], CustomCell] = {}
        self._custom_metrics: dict[str, MetricSnapshot] = {}
        self._applied: set[str] = set()
        self.batches = 0
        self.closed = False

    def write(self, batch: Batch) -> None:
        with self._lock:
            for record in batch.requests:
                self._requests.setdefault(record.request_id, record)
            for session in batch.sessions:
                self._sessions.setdefault(session.session_id, session)
            for event in batch.events:
                self._events.setdefault(event.event_id, event)
            delta = batch.rollups
            if delta is not None and delta.holds_anything() and delta.delta_id not in self._applied:
                self._applied.add(delta.delta_id)
                for table, cells in zip((self._rollups, self._totals), expand(delta), strict=True):
                    for key, cell in cells.items():
                        mine = table.get(key)
                        if mine is None:
                            table[key] = copy_cell(cell)
                        else:
                            merge_cell(mine, cell)
                self._add_custom(delta)
            self.batches += 1

    def _add_custom(self, delta: RollupDelta) -> None:
        self._custom_metrics.update(delta.metrics)
        for key, cell in expand_custom(delta.custom, LEVELS).items():
            mine = self._custom.get(key)
            if mine is None:
                self._custom[key] = cell
            else:
                merge_custom(mine, cell)

    def close(self) -> None:
        self.closed = True

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests.values())

    @property
    def sessions(self) -> list[WebSocketSession]:
        with self._lock:
            return list(self._sessions.values())

    def incident_store(self) -> MemoryIncidentStore:
        """The incidents of this process (one store per sink)."""
        return self._incidents

    def audit_log(self) -> MemoryAuditLog:
        """The audit of this process's API writes (see :mod:`aegis_mw.core.audit_log`)."""
        return self._audit

    @property
    def events(self) -> list[EventRecord]:
        with self._lock:
            return list(self._events.values())

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._sessions.clear()
            self._events.clear()
            self._rollups.clear()
            self._totals.clear()
            self._custom.clear()
            self._custom_metrics.clear()

    # -- history ---------------------------------------------------------------
    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        with self._lock:
            if by_route:
                found = [
                    ((bucket, route, method, klass), cell)
                    for (level, bucket, route, method, klass), cell in self._rollups.items()
                    if level == resolution and start <= bucket < end
                ]
            else:
                found = [
                    ((bucket, "", "", klass), cell)
                    for (level, bucket, klass), cell in self._totals.items()
                    if level == resolution and start <= bucket < end
                ]
            return list(rows_from(found))

    def read_custom_rollups(
        self, metric: str, resolution: int, start: int, end: int, limit: int = 2**62
    ) -> list[CustomRow]:
        """The app's own metric ``metric``'s stored changes, one resolution
        (the first ``limit``, by bucket and labels)."""
        with self._lock:
            found = [
                (bucket, labels, copy_custom(cell))
                for (level, bucket, name, labels), cell in self._custom.items()
                if level == resolution and name == metric and start <= bucket < end
            ]
        return [
            CustomRow(bucket, labels, *cell[:SPAN], *(cell[SPAN] or (None, None)))
            for bucket, labels, cell in sorted(found)[:limit]
        ]

    def read_custom_metrics(self) -> list[MetricSnapshot]:
        """The app's own metrics the history holds, as last declared."""
        with self._lock:
            return [metric for _, metric in sorted(self._custom_metrics.items())]

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        with self._lock:
            records = list(self._requests.values())
        kept = [
            record
            for record in records
            if (query.route is None or record.route == query.route)
            and (query.method is None or record.method == query.method)
            and (query.status_from is None or record.status >= query.status_from)
            and (query.status_to is None or record.status < query.status_to)
            and (query.min_duration_ms is None or record.duration_ms >= query.min_duration_ms)
            and (query.since is None or record.timestamp >= query.since)
            and (query.until is None or record.timestamp < query.until)
            and (query.trace_id is None or record.trace_id == query.trace_id)
        ]
        kept.sort(key=lambda record: (record.timestamp, record.request_id), reverse=True)
        return kept[query.offset : query.offset + query.limit]

    def read_events(self, query: EventQuery) -> list[EventRecord]:
        """The stored events ``query`` asks for (not the request log's errors)."""
        with self._lock:
            events = list(self._events.values())
        kept = [event for event in events if matches(event, query)]
        kept.sort(key=newest_first, reverse=True)
        return kept[query.offset : query.offset + query.limit]

    def count_events(self, since: float) -> tuple[int, int]:
        """How many events are stored, and how many of them at or after ``since``."""
        with self._lock:
            events = list(self._events.values())
        return len(events), sum(1 for event in events if event.timestamp >= since)

    def prune(self, raw_before: float, rollups_before: Mapping[int, float], limit: int) -> int:
        deleted = 0
        with self._lock:
            tables: tuple[dict[str, Any], ...] = (self._requests, self._sessions, self._events)
            for table in tables:
                expired = [key for key, record in table.items() if record.timestamp < raw_before]
                for key in expired[:limit]:
                    del table[key]
                deleted += min(len(expired), limit)
            tables_of_cells: tuple[dict[tuple[Any, ...], Any], ...] = (
                self._rollups, self._totals, self._custom,
            )  # fmt: skip
            for cells in tables_of_cells:
                old = [cell for cell in cells if cell[1] < rollups_before.get(cell[0], -1.0)]
                for cell_key in old[:limit]:
                    del cells[cell_key]
                deleted += min(len(old), limit)
        # The audit of posted events expires with the events.
        return deleted + self._audit.prune(raw_before, limit)

"""``GET {api_path}/stats``: what the app holds beside its traffic, at a glance.

Totals and the last hour's counts: the app's events (stored), the requests
and their server errors (from the rollups), the custom metrics declared and
their series, the alerts firing and pending (what this process shows), and
the incidents (all, active, opened in the last hour). A part whose store
keeps none of it is ``null``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.record import isoformat
from ..history.breaker import EventsUnavailable

if TYPE_CHECKING:
    from ..aegis import Aegis
    from ..history.queries import HistoryQueries

HOUR = 3600.0


def stats_answer(aegis: Aegis, queries: HistoryQueries | None) -> dict[str, Any]:
    """The answer's data (reads the stores: call it from a worker thread)."""
    now = aegis.clock.wall()
    since = now - HOUR
    source = aegis.reads.history
    events: dict[str, int] | None = None
    if source is not None:
        try:
            total, recent = source.count_events(since)
            events = {"total": total, "last_hour": recent}
        except EventsUnavailable:
            events = None
    requests = None
    if queries is not None:
        overview = queries.overview("1h")
        requests = {"last_hour": overview["total"], "failed_last_hour": overview["failed"]}
    custom = aegis.metrics.read_custom()
    alerts = aegis.alerts
    shown = alerts.view() if alerts is not None else []
    incidents = None
    if aegis.incidents is not None:
        total, active, opened = aegis.incidents.counts(since)
        incidents = {"total": total, "active": active, "opened_last_hour": opened}
    return {
        "at": isoformat(now),
        "events": events,
        "requests": requests,
        "custom_metrics": {
            "declared": len(custom),
            "series": sum(len(metric.series) for metric in custom),
        },
        "alerts": None if alerts is None else {
            "firing": sum(1 for alert in shown if alert.get("state") == "firing"),
            "pending": sum(1 for alert in shown if alert.get("state") == "pending"),
        },
        "incidents": incidents,
    }  # fmt: skip

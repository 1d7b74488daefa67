"""``alert_incidents``: a firing alert opens an incident, one per rule while
it is active; its timeline holds the alert's transitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.service import AlertService
from aegis_mw.core.events import read_merged
from aegis_mw.incidents.service import Incidents
from tests.alerts.test_service import INTERVAL, Wall, write
from tests.alerts.timeline import START
from tests.history.dataset import open_sink

RULE = AlertRule(
    name="errors", input="error_ratio", operator=">", threshold=0.1, window="1m", for_="20s",
    annotations={"summary": "requests fail"}, severity="error",
)  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A SQLite file or the real PostgreSQL, as the alert service's tests have."""
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def process(sink: Any, wall: Wall) -> tuple[AlertService, Incidents]:
    """One process of the app: its alert service, its incidents, wired as
    ``Aegis`` wires them with ``alert_incidents``."""
    alerts = AlertService([RULE], sink.alert_store(), sink, interval=INTERVAL, wall=wall)
    incidents = Incidents(
        sink.incident_store(),
        wall,
        events=lambda query: read_merged(query, sink.read_events, sink.read_requests),
        alerts=lambda: alerts.store,
    )
    alerts.on_firing = incidents.open_for_alert
    return alerts, incidents


def test_a_firing_opens_one_incident_and_a_second_episode_attaches(sink: Any) -> None:
    wall = Wall()
    (a, incidents), (b, _) = process(sink, wall), process(sink, wall)
    for second in range(0, 120, 5):  # 30 % errors from START on
        write(sink, START + second, 20, 6, f"w{second}-")
    wall.now = START + 80
    for _ in range(3):  # pending, then firing after 20 s
        a.tick()
        b.tick()
        wall.now += INTERVAL
    [incident] = incidents.find()
    assert (incident.title, incident.severity, incident.status) == (
        "errors firing", "high", "open",
    )  # fmt: skip
    assert incident.correlation_key == "alert:errors"
    assert incident.description == "requests fail"
    assert incident.created_by == "alerts"
    assert [u.kind for u in incidents.updates(incident.incident_id)] == ["created"]

    # It resolves, and fires again while the incident is still open: attached.
    for second in range(120, 220, 5):
        write(sink, START + second, 20, 0, f"ok{second}-")
    wall.now = START + 230
    a.tick()
    for second in range(240, 400, 5):
        write(sink, START + second, 20, 8, f"again{second}-")
    wall.now = START + 330
    for _ in range(4):
        a.tick()
        wall.now += INTERVAL
    assert [i.incident_id for i in incidents.find()] == [incident.incident_id]
    kinds = [u.kind for u in incidents.updates(incident.incident_id)]
    assert kinds == ["created", "attached"]

    timeline = incidents.timeline(incidents.get(incident.incident_id), 1000, 0)  # type: ignore[arg-type]
    assert timeline["total"] == len(timeline["items"]) and not timeline["truncated"]
    transitions = [
        (item["transition"]["kind"]) for item in timeline["items"] if item["kind"] == "alert"
    ]
    assert transitions[:3] == ["pending", "firing", "resolved"]
    assert "firing" in transitions[3:]
    errors = [item for item in timeline["items"] if item["kind"] == "request_error"]
    assert errors and all(item["event"]["level"] == "error" for item in errors)
    assert timeline["items"] == sorted(timeline["items"], key=lambda item: item["at"])


def test_the_option_wires_it_and_needs_alerts(tmp_path: Path) -> None:
    aegis = Aegis(
        sink=f"sqlite:///{tmp_path / 'aegis.db'}", alert_rules=[RULE], alert_incidents=True,
        environ={}, metrics_registry="none",
    )  # fmt: skip
    try:
        assert aegis.alerts is not None and aegis.incidents is not None
        assert aegis.alerts.on_firing == aegis.incidents.open_for_alert
    finally:
        aegis.shutdown()
    quiet = Aegis(sink="memory://", alert_rules=[RULE], environ={}, metrics_registry="none")
    try:
        assert quiet.alerts is not None and quiet.alerts.on_firing is None
    finally:
        quiet.shutdown()

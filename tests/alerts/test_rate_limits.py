"""Rate limits per channel: what is over the limit goes as one digest, or
waits; nothing is dropped. Real stores, a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.channels import channels_from_config
from aegis_mw.alerts.service import AlertService
from aegis_mw.alerts.store import MemoryAlertStore
from aegis_mw.core.errors import ConfigError
from tests.history.dataset import open_sink

from .test_grouping import traffic
from .test_service import START, Wall

RULE = AlertRule(
    name="errors", input="error_ratio", operator=">", threshold=0.1, window="1m",
    group_by=("route",), min_requests=5, severity="critical",
)  # fmt: skip
ROUTES = [f"/r{n}" for n in range(6)]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def evaluator(sink: Any, wall: Wall, channel: dict[str, Any]) -> AlertService:
    store = sink.alert_store() if hasattr(sink, "alert_store") else MemoryAlertStore()
    channels = channels_from_config({"c": {"allow_private": True, **channel}})
    return AlertService([RULE], store, sink, interval=10, wall=wall, channels=channels)


def posted(server: HTTPServer) -> list[dict[str, Any]]:
    return [json.loads(r.get_data()) for r, response in server.log if response.status_code < 300]


def routes_of(notice: dict[str, Any]) -> list[str]:
    return sorted(a["labels"]["route"] for a in notice["alerts"])


def test_what_is_over_the_limit_goes_as_one_digest(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    service = evaluator(sink, wall, {
        "type": "webhook", "url": httpserver.url_for("/hook"), "group_by": ["..."],
        "rate_limit": {"count": 2, "per": "5m"},
    })  # fmt: skip
    traffic(sink, START, START + 80, set(ROUTES[:5]), "a", ROUTES)
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    alone, digest = posted(httpserver)
    assert routes_of(alone) == ["/r0"] and alone["aegis"]["kind"] == "firing"
    assert routes_of(digest) == ["/r1", "/r2", "/r3", "/r4"]
    assert digest["aegis"] == {"kind": "group", "firing": 4, "resolved": 0}
    assert digest["groupLabels"] == {}
    # The limit is used up: a new firing waits until five minutes have passed.
    traffic(sink, START + 80, START + 160, set(ROUTES), "b", ROUTES)
    wall.now = START + 160
    service.tick()
    assert "/r5" in {a["group"]["route"] for a in service.view()}
    # Claimed and left for the limit: not counted as handled (the sender
    # waits for its poll instead of claiming it again at once), and not due
    # again before the limit allows.
    assert service.sender.send_due() == 0
    assert len(posted(httpserver)) == 2
    wall.now = START + 80 + 299
    service.sender.send_due()
    assert len(posted(httpserver)) == 2
    wall.now = START + 80 + 301
    service.sender.send_due()
    assert [routes_of(n) for n in posted(httpserver)][2:] == [["/r5"]]
    stored = service.store.notices(20)
    assert {row["state"] for row in stored} == {"delivered"} and len(stored) == 6


def test_a_limit_used_up_is_forgotten_when_the_channel_changes(
    sink: Any, httpserver: HTTPServer
) -> None:
    """The limit used up, a new firing waits; the channel's settings change
    (its limit raised through the API, say): the firing goes at once, not
    when the old limit would have allowed it."""
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    hook = {"type": "webhook", "url": httpserver.url_for("/hook"), "group_by": ["..."]}
    service = evaluator(sink, wall, {**hook, "rate_limit": {"count": 1, "per": "1h"}})
    traffic(sink, START, START + 80, {ROUTES[0]}, "a", ROUTES)
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    traffic(sink, START + 80, START + 160, set(ROUTES[:2]), "b", ROUTES)
    wall.now = START + 160
    service.tick()
    wall.now = START + 191  # its group's wait over, /r1 is due: it waits for the hour
    assert service.sender.send_due() == 0
    service.sender.set_channels(
        channels_from_config({"c": {"allow_private": True, **hook, "rate_limit": None}})
    )
    wall.now += 1
    service.sender.send_due()
    assert [routes_of(n) for n in posted(httpserver)] == [["/r0"], ["/r1"]]


def test_slack_gets_one_message_a_second(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/slack").respond_with_data("ok")
    wall = Wall()
    service = evaluator(
        sink, wall, {"type": "slack", "url": httpserver.url_for("/slack"), "group_by": ["..."]}
    )
    traffic(sink, START, START + 80, set(ROUTES[:3]), "a", ROUTES)
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    [message] = posted(httpserver)
    lines = message["text"].splitlines()
    assert lines[0] == ":red_circle: *errors:* 3 alerts, 3 firing"
    assert [line.split()[-1] for line in lines[1:]] == ["route=/r0", "route=/r1", "route=/r2"]


def test_pagerduty_events_wait_rather_than_merge(sink: Any, httpserver: HTTPServer) -> None:
    """An event per alert: over the limit, events wait for it."""
    httpserver.expect_request("/pd").respond_with_json({"status": "success"}, status=202)
    wall = Wall()
    service = evaluator(sink, wall, {
        "type": "pagerduty", "url": httpserver.url_for("/pd"), "routing_key": "k" * 32,
        "rate_limit": {"count": 2, "per": "1m"},
    })  # fmt: skip
    traffic(sink, START, START + 80, set(ROUTES[:3]), "a", ROUTES)
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    assert [n["event_action"] for n in posted(httpserver)] == ["trigger", "trigger"]
    wall.now += 61
    service.sender.send_due()
    events = posted(httpserver)
    assert len(events) == 3 and len({e["dedup_key"] for e in events}) == 3


@pytest.mark.parametrize(
    "value",
    [{"count": 0, "per": "1s"}, {"count": 5}, {"count": 1, "per": "2h"}, {"count": True, "per": 1},
     "1/s", {"count": 1, "per": "soon"}],
)  # fmt: skip
def test_a_bad_rate_limit_is_named(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_config(
            {"c": {"type": "webhook", "url": "https://h.example", "rate_limit": value}}
        )
    assert caught.value.option == "alert_channels.c.rate_limit"
    assert '"count": 1 to 10000' in str(caught.value)


def test_the_receivers_own_limits_are_the_defaults() -> None:
    made = channels_from_config({
        "s": {"type": "slack", "url": "https://hooks.example/x"},
        "p": {"type": "pagerduty", "routing_key": "k" * 32},
        "w": {"type": "webhook", "url": "https://h.example"},
    })  # fmt: skip
    assert made["s"].rate_limit == (1, 1.0)
    assert made["p"].rate_limit == (120, 60.0)
    assert made["w"].rate_limit is None

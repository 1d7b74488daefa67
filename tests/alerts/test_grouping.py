"""Grouping and its timers (Alertmanager's group_by, group_wait,
group_interval, repeat_interval) through the outbox to a real HTTP receiver
on 127.0.0.1, over the real stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.channels import channels_from_config, slack_text
from aegis_mw.alerts.email_channel import email_body, email_subject
from aegis_mw.alerts.grouping import Grouping, group_payload, notification_key
from aegis_mw.alerts.service import AlertService
from aegis_mw.alerts.store import MemoryAlertStore
from aegis_mw.core.errors import ConfigError
from aegis_mw.core.record import Batch, RequestRecord
from aegis_mw.core.rollup import RollupDelta
from tests.history.dataset import open_sink

from .test_service import START, Wall

ROUTES = [f"/r{n:02d}" for n in range(50)]
RULE = AlertRule(
    name="errors", input="error_ratio", operator=">", threshold=0.1, window="1m",
    group_by=("route",), min_requests=5, severity="critical",
    annotations={"summary": "$route fails $value_percent"},
)  # fmt: skip


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def traffic(
    sink: Any, start: float, end: float, bad: set[str], tag: str, routes: list[str] = ROUTES
) -> None:
    """10 requests a route every 5 s from ``start`` to ``end``; half fail on ``bad`` routes."""
    for at in range(int(start), int(end), 5):
        records, delta = [], RollupDelta()
        for route in routes:
            for n in range(10):
                status = 500 if route in bad and n < 5 else 200
                records.append(
                    RequestRecord(
                        f"{tag}{at}{route}{n}", at, "GET", route, route, status, 3.0, None, 0, 10,
                        None, "",
                    )
                )  # fmt: skip
                delta.add(at, route, "GET", status, 3.0, status >= 500, 0, 10)
        delta.delta_id = f"{tag}{at}"
        sink.write(Batch(requests=records, rollups=delta))


def evaluator(sink: Any, wall: Wall, server: HTTPServer, **grouping: Any) -> AlertService:
    channels = channels_from_config(
        {"hook": {"type": "webhook", "url": server.url_for("/hook"), "allow_private": True,
                  **grouping}}
    )  # fmt: skip
    store = sink.alert_store() if hasattr(sink, "alert_store") else MemoryAlertStore()
    return AlertService([RULE], store, sink, interval=10, wall=wall, channels=channels)


def received(server: HTTPServer) -> list[tuple[dict[str, Any], str]]:
    return [
        (json.loads(request.get_data()), request.headers["webhook-id"])
        for request, response in server.log
        if response.status_code == 200
    ]


def statuses(notice: dict[str, Any]) -> dict[str, str]:
    return {a["labels"]["route"]: a["status"] for a in notice["alerts"]}


def test_fifty_routes_breaching_at_once_are_one_notice(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    service = evaluator(sink, wall, httpserver)
    traffic(sink, START, START + 80, set(ROUTES), "a")
    wall.now = START + 80
    service.tick()
    assert len([a for a in service.view() if a["state"] == "firing"]) == 50
    # group_wait (30 s by default): the group waits for the rest of itself.
    assert service.sender.send_due() == 0
    wall.now += 29
    assert service.sender.send_due() == 0
    wall.now += 1
    assert service.sender.send_due() == 50
    [(notice, key)] = received(httpserver)
    assert notice["status"] == "firing" and len(notice["alerts"]) == 50
    assert statuses(notice) == dict.fromkeys(ROUTES, "firing")
    assert notice["groupLabels"] == {"alertname": "errors"}
    assert notice["commonLabels"] == {"alertname": "errors", "severity": "critical"}
    assert notice["aegis"] == {"kind": "group", "firing": 50, "resolved": 0}
    assert all(alert["aegis"]["kind"] == "firing" for alert in notice["alerts"])
    assert key.startswith("group.")
    assert service.sender.send_due() == 0  # nothing twice


def test_changes_wait_for_the_group_interval(sink: Any, httpserver: HTTPServer) -> None:
    """After a group's notice, what changes in it waits until group_interval
    has passed since, and goes as one notice; then a quiet group starts over
    with group_wait."""
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    service = evaluator(sink, wall, httpserver, group_wait="10s", group_interval="2m")
    traffic(sink, START, START + 80, {"/r00", "/r01", "/r02"}, "a", ROUTES[:4])
    wall.now = START + 80
    service.tick()
    wall.now += 10
    service.sender.send_due()
    sent_at = wall.now
    # /r00 recovers; /r03 starts failing.
    traffic(sink, START + 80, START + 200, {"/r01", "/r02", "/r03"}, "b", ROUTES[:4])
    wall.now = START + 200
    service.tick()
    assert {a["group"]["route"] for a in service.view()} == {"/r01", "/r02", "/r03"}
    wall.now = sent_at + 119
    assert service.sender.send_due() == 0
    wall.now = sent_at + 120
    assert service.sender.send_due() == 2
    first, second = [notice for notice, _ in received(httpserver)]
    assert statuses(first) == {"/r00": "firing", "/r01": "firing", "/r02": "firing"}
    assert statuses(second) == {"/r00": "resolved", "/r03": "firing"}
    assert second["status"] == "firing"
    assert sorted(a["aegis"]["kind"] for a in second["alerts"]) == ["firing", "resolved"]


def test_an_alert_still_firing_is_repeated(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    service = evaluator(sink, wall, httpserver, group_by=["..."], repeat_interval="10m")
    traffic(sink, START, START + 80, {"/r07"}, "a", ["/r07"])
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    firing_at = wall.now
    for step in range(1, 8):  # still failing, ticks every 100 s
        traffic(sink, firing_at + 100 * step - 80, firing_at + 100 * step, {"/r07"}, f"s{step}-", ["/r07"])  # fmt: skip
        wall.now = firing_at + 100 * step
        service.tick()
        service.sender.send_due()
    notices = [notice for notice, _ in received(httpserver)]
    kinds = [notice["aegis"]["kind"] for notice in notices]
    assert kinds == ["firing", "repeat"]  # at 600 s, once
    firing, repeat = notices
    assert repeat["status"] == "firing"
    assert repeat["alerts"][0]["fingerprint"] == firing["alerts"][0]["fingerprint"]
    assert repeat["alerts"][0]["labels"] == firing["alerts"][0]["labels"]
    assert repeat["aegis"]["at"] == firing_at + 600


def test_a_group_down_for_its_whole_episode_is_told_in_order(
    sink: Any, httpserver: HTTPServer
) -> None:
    """A receiver down while a group fires and resolves gets, once back, the
    firing notice and then the resolve: never a resolve it had no firing for."""
    httpserver.expect_request("/hook").respond_with_data("", status=503)
    wall = Wall()
    service = evaluator(sink, wall, httpserver, group_wait="0s", group_interval="0s")
    traffic(sink, START, START + 80, {"/r00", "/r01"}, "a", ROUTES[:2])
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    traffic(sink, START + 80, START + 240, set(), "b", ROUTES[:2])
    wall.now = START + 240
    service.tick()
    for _ in range(6):
        wall.now += 400
        service.sender.send_due()
    httpserver.clear_all_handlers()
    httpserver.expect_request("/hook").respond_with_data("ok")
    for _ in range(3):
        wall.now += 400
        service.sender.send_due()
    notices = [notice for notice, _ in received(httpserver)]
    assert [statuses(n) for n in notices] == [
        {"/r00": "firing", "/r01": "firing"},
        {"/r00": "resolved", "/r01": "resolved"},
    ]
    # The same rows on every retry: the same idempotency key.
    keys = {request.headers["webhook-id"] for request, _ in httpserver.log}
    assert len(keys) == 2


def test_a_notification_key_is_stable_and_a_single_notice_is_sent_as_it_is() -> None:
    assert notification_key(["b", "a"]) == notification_key(["a", "b"]) != notification_key(["a"])
    assert notification_key(["only"]) == "only"
    one = {
        "status": "firing",
        "alerts": [{"labels": {"alertname": "x"}}],
        "aegis": {"kind": "firing"},
    }
    assert group_payload([one], "") == one


def group_notice() -> dict[str, Any]:
    def single(route: str, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "alerts": [{
                "status": status,
                "labels": {"alertname": "errors", "severity": "critical", "route": route},
                "annotations": {"summary": f"{route} <fails>"},
            }],
            "aegis": {"kind": status, "episode": route, "value": 0.5, "at": 1.0},
        }  # fmt: skip

    return group_payload(
        [single("/a", "firing"), single("/b", "firing"), single("/c", "resolved")],
        json.dumps([["alertname", "errors"]]),
    )


def test_a_group_as_slack_text_and_as_mail() -> None:
    notice = group_notice()
    text = slack_text(notice)
    assert text.splitlines()[0] == ":red_circle: *errors:* 3 alerts, 2 firing, 1 resolved"
    assert "• errors firing (critical) route=/a /a &lt;fails&gt;" in text.splitlines()
    assert "• errors resolved (critical) route=/c /c &lt;fails&gt;" in text.splitlines()
    assert email_subject(notice) == "[FIRING:3] errors: 3 alerts, 2 firing, 1 resolved"
    body = email_body(notice, "mail")
    assert body.count("Notice:   firing") == 2 and body.count("Notice:   resolved") == 1
    assert "  route = /b" in body


@pytest.mark.parametrize(
    ("settings", "where", "allowed"),
    [
        ({"group_by": "route"}, "group_by", "a list of label names"),
        ({"group_by": ["route", "route"]}, "group_by", "each once"),
        ({"group_by": ["...", "route"]}, "group_by", "'...' alone"),
        ({"group_by": ["bad-name"]}, "group_by", "a list of label names"),
        ({"group_wait": "soon"}, "group_wait", "a number of seconds"),
        ({"group_interval": -1}, "group_interval", "zero or more"),
        ({"repeat_interval": 0}, "repeat_interval", "> 0"),
        ({"repeat_interval": "8d"}, "repeat_interval", "at most a week"),
    ],
)
def test_grouping_settings_are_checked(settings: dict[str, Any], where: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_config({"c": {"type": "webhook", "url": "https://h.example", **settings}})
    assert caught.value.option == f"alert_channels.c.{where}"
    assert allowed in str(caught.value)


def test_defaults_are_alertmanagers_and_pagerduty_is_never_grouped() -> None:
    [hook] = channels_from_config({"c": {"type": "webhook", "url": "https://h.example"}}).values()
    assert hook.grouping == Grouping(("alertname",), 30.0, 300.0, 14400.0)
    [pager] = channels_from_config(
        {"p": {"type": "pagerduty", "routing_key": "k" * 32, "repeat_interval": "1h"}}
    ).values()
    assert pager.grouping.group_by == ("...",) and pager.grouping.repeat_interval == 3600.0
    with pytest.raises(ConfigError) as caught:
        channels_from_config({"p": {"type": "pagerduty", "routing_key": "k", "group_by": ["a"]}})
    assert caught.value.option == "alert_channels.p.group_by"

"""A channel that every notice would fail (gone, credentials refused) is
disabled, not drained: its notices are kept, it is probed, the built-in
``aegis_channel_disabled`` alert goes to the other channels, and the first
delivery (or new settings) brings it back, with every attempt on record.
Against real HTTP receivers on 127.0.0.1 and the real stores."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from pytest_httpserver import HTTPServer

from aegis_mw import Aegis
from aegis_mw.alerts.channels import channels_from_config
from aegis_mw.alerts.outbox import PROBE_SECONDS
from aegis_mw.alerts.service import CHANNEL_RULE, AlertService
from tests.endpoints.test_api import client, flush
from tests.history.dataset import open_sink

from .test_notices import RULE, episode
from .test_policy import silence
from .test_service import START, Wall, write
from .test_surfaces import API, firing_app


@pytest.fixture(params=["sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def two_channels(sink: Any, wall: Wall, server: HTTPServer, **hook: Any) -> AlertService:
    channels = channels_from_config({
        "hook": {"type": "webhook", "url": server.url_for("/hook"), "allow_private": True,
                 "group_by": ["..."],
                 **hook},
        "other": {"type": "webhook", "url": server.url_for("/other"), "allow_private": True,
                  "group_by": ["..."]},
    })  # fmt: skip
    return AlertService([RULE], sink.alert_store(), sink, interval=10, wall=wall, channels=channels)


def bodies(server: HTTPServer, path: str) -> list[dict[str, Any]]:
    return [
        json.loads(request.get_data())
        for request, response in server.log
        if request.path == path and response.status_code == 200
    ]


def names(notices: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(n["alerts"][0]["labels"]["alertname"], n["status"]) for n in notices]


def test_a_probe_is_a_notice_that_is_sent_not_one_held_back(
    sink: Any, httpserver: HTTPServer
) -> None:
    """Two alerts' firings wait on a disabled channel, and one alert is
    silenced meanwhile. The probe skips that one's firing (held back) and
    sends the other's: the channel is enabled at the first probe after it
    works again, not one probe per held notice later."""
    httpserver.expect_request("/hook").respond_with_data("gone", status=410)
    wall = Wall()
    channels = channels_from_config({
        "hook": {"type": "webhook", "url": httpserver.url_for("/hook"), "allow_private": True,
                 "group_by": ["..."]},
    })  # fmt: skip
    rules = [RULE, dataclasses.replace(RULE, name="errors_again")]
    evaluator = AlertService(rules, sink.alert_store(), sink, interval=10, wall=wall,
                             channels=channels)  # fmt: skip
    for second in range(0, 120, 5):
        write(sink, START + second, 20, 6, f"bad{second}-")
    wall.now = START + 80
    evaluator.tick()
    evaluator.sender.send_due()  # the first firing meets 410: disabled, both kept
    evaluator.store.put_silence(silence(wall.now, 'alertname="errors"'), "ops", wall.now)
    wall.now = START + 90
    evaluator.tick()  # this process's policy now has the silence
    httpserver.clear_all_handlers()
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall.now = evaluator.store.channel_states()["hook"].probe_at + 1
    evaluator.sender.send_due()
    assert names(bodies(httpserver, "/hook")) == [("errors_again", "firing")]
    assert evaluator.store.channel_states() == {}
    held = [r for r in evaluator.store.notices(10) if r["state"] == "skipped"]
    assert [r["last_error"] for r in held] == ["held back when due: silenced by s1"]


def test_a_gone_receiver_is_disabled_alerted_probed_and_caught_up(
    sink: Any, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/hook").respond_with_data("gone", status=410)
    httpserver.expect_request("/other").respond_with_data("ok")
    wall = Wall()
    evaluator = two_channels(sink, wall, httpserver)
    assert CHANNEL_RULE in evaluator.rules
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()
    evaluator.sender.send_due()
    hook_tries = [r for r, _ in httpserver.log if r.path == "/hook"]
    assert len(hook_tries) == 1  # disabled at once: no storm of retries
    state = evaluator.store.channel_states()["hook"]
    assert state.reason == "the webhook answered 410"
    assert state.probe_at == pytest.approx(state.disabled_at + PROBE_SECONDS)
    # Kept, not failed: the firing waits for the channel, its resolve behind it.
    rows = {(r["channel"], r["state"]) for r in evaluator.store.notices(10)}
    assert ("hook", "pending") in rows and ("hook", "failed") not in rows

    # The next evaluation raises the built-in alert, to the other channel only.
    wall.now += 10
    evaluator.tick()
    shown = {(a["name"], a["state"]) for a in evaluator.view()}
    assert ("aegis_channel_disabled", "firing") in shown
    [channel] = [c for c in evaluator.channel_view if c["name"] == "hook"]
    assert channel["state"] == "disabled" and channel["reason"] == "the webhook answered 410"
    assert channel["notices"]["pending"] == 2 and channel["oldest_pending_at"] is not None
    evaluator.sender.send_due()
    meta = [n for n in bodies(httpserver, "/other") if n["alerts"][0]["labels"]["alertname"]
            == "aegis_channel_disabled"]  # fmt: skip
    assert [n["status"] for n in meta] == ["firing"]
    assert meta[0]["alerts"][0]["labels"]["channel"] == "hook"
    assert len([r for r, _ in httpserver.log if r.path == "/hook"]) == 1

    # Before the probe is due nothing goes to it; at the probe, one row.
    wall.now += PROBE_SECONDS / 2
    evaluator.sender.send_due()
    assert len([r for r, _ in httpserver.log if r.path == "/hook"]) == 1
    wall.now += PROBE_SECONDS
    evaluator.sender.send_due()
    assert len([r for r, _ in httpserver.log if r.path == "/hook"]) == 2
    again = evaluator.store.channel_states()["hook"]
    assert again.disabled_at == state.disabled_at and again.probe_at > state.probe_at

    # A probe that fails otherwise (503) still waits a whole period for the next.
    httpserver.clear_all_handlers()
    httpserver.expect_request("/hook").respond_with_data("", status=503)
    httpserver.expect_request("/other").respond_with_data("ok")
    wall.now = again.probe_at
    evaluator.sender.send_due()
    assert len([r for r, _ in httpserver.log if r.path == "/hook"]) == 3
    wall.now += 30  # the row's backoff is over; the next probe is not due
    evaluator.sender.send_due()
    assert len([r for r, _ in httpserver.log if r.path == "/hook"]) == 3
    assert evaluator.store.channel_states()["hook"].probe_at == again.probe_at + PROBE_SECONDS

    # The receiver is back: the probe delivers, the channel works, the
    # backlog follows in order, and the built-in alert resolves.
    httpserver.clear_all_handlers()
    httpserver.expect_request("/hook").respond_with_data("ok")
    httpserver.expect_request("/other").respond_with_data("ok")
    wall.now += PROBE_SECONDS
    evaluator.sender.send_due()
    assert evaluator.store.channel_states() == {}
    evaluator.sender.send_due()
    assert names(bodies(httpserver, "/hook")) == [("errors", "firing"), ("errors", "resolved")]
    wall.now += 10
    evaluator.tick()
    evaluator.sender.send_due()
    meta = [n for n in bodies(httpserver, "/other") if n["alerts"][0]["labels"]["alertname"]
            == "aegis_channel_disabled"]  # fmt: skip
    assert [n["status"] for n in meta] == ["firing", "resolved"]
    # The hook never heard of its own outage.
    assert all(
        n["alerts"][0]["labels"]["alertname"] == "errors" for n in bodies(httpserver, "/hook")
    )

    # Every attempt is on record, with its outcome.
    [firing_row] = [
        n for n in evaluator.store.notices(20)
        if n["channel"] == "hook" and n["notice_key"].startswith(n["episode"] + ".firing")
    ]  # fmt: skip
    log = evaluator.store.attempts([firing_row["id"]])[firing_row["id"]]
    assert [a["outcome"] for a in log] == ["disabled", "disabled", "retry", "delivered"]
    assert all(a["sender"] == evaluator.holder and a["seconds"] >= 0 for a in log)
    assert log[0]["error"] == "the webhook answered 410" and log[-1]["error"] == ""


def test_new_settings_send_at_once_and_enable_the_channel(
    sink: Any, httpserver: HTTPServer
) -> None:
    """Disabled with its old URL; a process with the fixed one sends before
    any probe is due and enables it for every process."""
    httpserver.expect_request("/old").respond_with_data("", status=404)
    httpserver.expect_request("/hook").respond_with_data("ok")
    httpserver.expect_request("/other").respond_with_data("ok")
    wall = Wall()
    broken = two_channels(sink, wall, httpserver)
    broken.sender.channels["hook"] = channels_from_config(
        {
            "hook": {
                "type": "webhook",
                "url": httpserver.url_for("/old"),
                "allow_private": True,
                "group_by": ["..."],
            }
        }
    )["hook"]  # the old deploy's URL, with the same fingerprint as the new one
    broken.sender.fingerprints["hook"] = "old-settings"
    episode(sink, wall, broken)
    broken.sender.send_due()
    assert broken.store.channel_states()["hook"].fingerprint == "old-settings"
    # The old process leaves the channel alone until its probe.
    broken.sender.send_due()
    assert len([r for r, _ in httpserver.log if r.path == "/old"]) == 1
    fixed = two_channels(sink, wall, httpserver)
    fixed.sender.send_due()
    fixed.sender.send_due()
    assert names(bodies(httpserver, "/hook")) == [("errors", "firing"), ("errors", "resolved")]
    assert fixed.store.channel_states() == {}


class Seen(logging.Handler):
    """Sets ``event`` when a record's message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.mark.anyio
async def test_channel_health_on_metrics_and_in_the_api(
    make_aegis: Callable[..., Aegis], httpserver: HTTPServer
) -> None:
    """Through a running app: its sender (woken by the evaluation) disables
    the channel; the next evaluation shows it on the API and /metrics."""
    httpserver.expect_request("/hook").respond_with_data("", status=401)
    httpserver.expect_request("/other").respond_with_data("ok")
    channels = {
        name: {
            "type": "webhook",
            "url": httpserver.url_for(f"/{name}"),
            "allow_private": True,
            "group_by": ["..."],
        }
        for name in ("hook", "other")
    }
    aegis, app, clock = await firing_app(make_aegis, alert_channels=channels)
    seen = Seen("alert channel hook disabled")
    logger = logging.getLogger("aegis_mw.alerts")
    logger.addHandler(seen)
    try:
        async with client(app) as http:
            for _ in range(5):
                assert (await http.get("/boom")).status_code == 500
            await flush(aegis)
            clock.advance(20)
            assert aegis.alerts is not None
            await anyio.to_thread.run_sync(aegis.alerts.tick)
            assert await anyio.to_thread.run_sync(seen.event.wait, 30)
            clock.advance(10)
            await anyio.to_thread.run_sync(aegis.alerts.tick)
            answer = (await http.get(f"{API}/alerts")).json()["data"]
            metrics = (await http.get("/metrics")).text
            history = (await http.get(f"{API}/alert-history")).json()["data"]
    finally:
        logger.removeHandler(seen)
    hook, other = answer["channels"]
    assert (hook["name"], hook["state"], hook["reason"]) == (
        "hook", "disabled", "the webhook answered 401"
    )  # fmt: skip
    assert hook["notices"] == {"pending": 1, "delivered": 0, "failed": 0, "skipped": 0}
    assert (other["name"], other["state"]) == ("other", "ok")
    assert ("aegis_channel_disabled", "firing") in {
        (a["name"], a["state"]) for a in answer["alerts"]
    }
    assert "aegis_channel_disabled" in [rule["name"] for rule in answer["rules"]]
    assert 'aegis_alert_channel_up{channel="hook"} 0' in metrics
    assert 'aegis_alert_channel_up{channel="other"} 1' in metrics
    assert 'aegis_alert_notices{channel="hook",state="pending"} 1' in metrics
    assert 'aegis_alert_oldest_pending_notice_timestamp_seconds{channel="hook"}' in metrics
    [held] = [n for n in history["notices"] if n["channel"] == "hook"]
    assert [(a["outcome"], a["error"]) for a in held["attempt_log"]] == [
        ("disabled", "the webhook answered 401")
    ]

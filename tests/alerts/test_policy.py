"""Silences, mute windows and inhibition on the notification path: what they
hold back, what they never hold back (a resolve), what is told once they
end; the silences' command and API. Real stores, a real HTTP receiver."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.channels import channels_from_config
from aegis_mw.alerts.service import AlertService
from aegis_mw.alerts.silences import (
    inhibit_rule_from_mapping,
    mute_window_from_mapping,
    silence_from_mapping,
)
from aegis_mw.alerts.store import MemoryAlertStore
from aegis_mw.cli import main
from aegis_mw.core.errors import ConfigError
from aegis_mw.core.record import Batch
from aegis_mw.sinks import SQLiteSink
from aegis_mw.testing import FakeClock
from tests.endpoints.test_api import client, starlette_app
from tests.history.dataset import open_sink

from .test_grouping import traffic
from .test_service import START, Wall

ERRORS = AlertRule(
    name="errors", input="error_ratio", operator=">", threshold=0.1, window="1m",
    group_by=("route",), min_requests=5, severity="warning",
)  # fmt: skip
ROUTES = ["/a", "/b"]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def evaluator(
    sink: Any, wall: Wall, server: HTTPServer, rules: list[AlertRule] | None = None,
    **options: Any,
) -> AlertService:  # fmt: skip
    channel = {"type": "webhook", "url": server.url_for("/hook"), "allow_private": True,
               "group_by": ["..."], **options.pop("channel", {})}  # fmt: skip
    store = sink.alert_store() if hasattr(sink, "alert_store") else MemoryAlertStore()
    return AlertService(
        rules or [ERRORS], store, sink, interval=10, wall=wall,
        channels=channels_from_config({"hook": channel}), **options,
    )  # fmt: skip


def told(server: HTTPServer) -> list[tuple[str, str, str]]:
    """(rule, route, kind) of each notice the receiver took."""
    out = []
    for request, response in server.log:
        if response.status_code == 200:
            notice = json.loads(request.get_data())
            labels = notice["alerts"][0]["labels"]
            out.append((labels["alertname"], labels.get("route", ""), notice["aegis"]["kind"]))
    return out


def silence(now: float, *matchers: str, hours: float = 1, id: str = "s1") -> Any:
    return silence_from_mapping({
        "id": id, "matchers": list(matchers), "starts_at": now - 1, "ends_at": now + hours * 3600,
        "created_by": "ops@example", "comment": "deploying",
    })  # fmt: skip


def test_a_silence_holds_a_firing_back_until_it_is_expired(
    sink: Any, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    service = evaluator(sink, wall, httpserver)
    service.store.put_silence(silence(START, 'route="/a"'), "ops@example", START)
    traffic(sink, START, START + 80, {"/a", "/b"}, "a", ROUTES)
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/b", "firing")]
    assert {a["group"]["route"]: a["muted"] for a in service.view()} == {
        "/a": "silenced by s1", "/b": None,
    }  # fmt: skip
    assert service.muted == 1
    # Still silenced: nothing more at the next tick.
    traffic(sink, START + 80, START + 100, {"/a", "/b"}, "b", ROUTES)
    wall.now = START + 100
    service.tick()
    service.sender.send_due()
    assert len(told(httpserver)) == 1
    # Expired: /a, still firing, is told at the next tick.
    assert service.store.expire_silence("s1", "ops@example", wall.now)
    traffic(sink, START + 100, START + 110, {"/a", "/b"}, "c", ROUTES)
    wall.now = START + 110
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/b", "firing"), ("errors", "/a", "firing")]
    [created, expired] = service.store.audit(10)[::-1]
    assert (created["action"], expired["action"]) == ("create", "expire")
    assert created["actor"] == "ops@example" and created["object"] == "silence s1"
    assert created["detail"]["matchers"] == ['route="/a"']


def test_a_firing_due_later_is_held_back_by_a_silence_made_meanwhile(
    sink: Any, httpserver: HTTPServer
) -> None:
    """The receiver is down when /a fires: its firing waits for a retry. A
    silence made meanwhile holds it back when it is due (skipped, saying
    why); once the silence is expired, the alert still firing, the next
    evaluation tells the channel."""
    httpserver.expect_oneshot_request("/hook").respond_with_data("", status=503)
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    service = evaluator(sink, wall, httpserver)
    traffic(sink, START, START + 80, {"/a"}, "a", ROUTES)
    wall.now = START + 80
    service.tick()
    service.sender.send_due()  # 503: tried again in about 2 s
    service.store.put_silence(silence(wall.now, 'route="/a"'), "ops@example", wall.now)
    traffic(sink, START + 80, START + 90, {"/a"}, "b", ROUTES)
    wall.now = START + 90
    service.tick()  # this process's policy now has the silence
    service.sender.send_due()
    assert told(httpserver) == [] and len(httpserver.log) == 1
    [row] = service.store.notices(10)
    assert (row["state"], row["last_error"]) == ("skipped", "held back when due: silenced by s1")
    assert service.store.expire_silence("s1", "ops@example", wall.now)
    traffic(sink, START + 90, START + 100, {"/a"}, "c", ROUTES)
    wall.now = START + 100
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/a", "firing")]


def test_a_resolve_is_never_silenced(sink: Any, httpserver: HTTPServer) -> None:
    """Silenced after its firing went out, an alert's resolve still goes:
    the receiver's incident is never left open."""
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    service = evaluator(sink, wall, httpserver)
    traffic(sink, START, START + 80, {"/a"}, "a", ROUTES)
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    service.store.put_silence(silence(wall.now, 'alertname="errors"'), "ops", wall.now)
    traffic(sink, START + 80, START + 240, set(), "b", ROUTES)
    wall.now = START + 240
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/a", "firing"), ("errors", "/a", "resolved")]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_a_mute_window_across_the_spring_forward_switch(sink: Any, httpserver: HTTPServer) -> None:
    """01:30-03:30 Berlin time on 29 March 2026, when clocks jump from 02:00
    to 03:00: the window lasts one hour, 00:30 to 01:30 UTC."""
    httpserver.expect_request("/hook").respond_with_data("ok")
    window = mute_window_from_mapping(
        {"name": "nights", "times": [["01:30", "03:30"]], "location": "Europe/Berlin"}
    )
    wall = Wall()
    service = evaluator(
        sink, wall, httpserver, channel={"mute_windows": ["nights"]}, mute_windows=[window]
    )
    start = at("2026-03-29T00:29:00")
    traffic(sink, start - 80, start, {"/a"}, "a", ROUTES)
    wall.now = start
    service.tick()  # 00:29 UTC, 01:29 in Berlin: before the window
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/a", "firing")]
    traffic(sink, start, start + 90, {"/a", "/b"}, "b", ROUTES)
    wall.now = start + 90  # 00:30:30 UTC, 01:30:30 Berlin: muted
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/a", "firing")]
    end = at("2026-03-29T01:29:50")  # 03:29:50 Berlin (summer time): still muted
    traffic(sink, end - 80, end, {"/a", "/b"}, "c", ROUTES)
    wall.now = end
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/a", "firing")]
    traffic(sink, end, end + 20, {"/a", "/b"}, "d", ROUTES)
    wall.now = end + 20  # 03:30:10 Berlin: the window is over, /b is told
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors", "/a", "firing"), ("errors", "/b", "firing")]


def test_a_critical_alert_inhibits_the_warning_of_its_route(
    sink: Any, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    critical = AlertRule(
        name="errors_critical", input="error_ratio", operator=">", threshold=0.3, window="1m",
        group_by=("route",), min_requests=5, severity="critical",
    )  # fmt: skip
    inhibit = inhibit_rule_from_mapping({
        "source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
        "equal": ["route"],
    })  # fmt: skip
    wall = Wall()
    service = evaluator(sink, wall, httpserver, [ERRORS, critical], inhibit_rules=[inhibit])
    traffic(sink, START, START + 80, {"/a"}, "a", ROUTES)  # half of /a fails: both breach
    wall.now = START + 80
    service.tick()
    service.sender.send_due()
    assert told(httpserver) == [("errors_critical", "/a", "firing")]
    muted = {a["name"]: a["muted"] for a in service.view()}
    assert muted == {"errors_critical": None, "errors": "inhibited by errors_critical"}


def test_a_channel_naming_an_unknown_window_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Aegis(
            sink=f"sqlite:///{tmp_path / 'a.db'}", environ={}, alert_rules=[ERRORS],
            alert_mute_windows=[{"name": "nights", "times": [["22:00", "24:00"]]}],
            alert_channels={"hook": {"type": "webhook", "url": "https://h.example/x",
                                     "mute_windows": ["night"]}},
        )  # fmt: skip
    assert caught.value.option == "alert_channels.hook.mute_windows"
    assert "a name of alert_mute_windows (nights)" in str(caught.value)


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("alert_mute_windows", [{"name": "w", "location": "Mars/Olympus"}], "location"),
        ("alert_mute_windows", "not json", "JSON text of a list of mute windows"),
        ("alert_inhibit_rules", [{"source_matchers": ['a="b"']}], "target_matchers"),
        ("alert_inhibit_rules", {"a": 1}, "a list of inhibit rules"),
    ],
)
def test_bad_policy_settings_name_the_option(option: str, value: Any, allowed: str) -> None:
    from aegis_mw.core.settings import AegisSettings

    with pytest.raises(ConfigError) as caught:
        AegisSettings.load({}, **{option: value})
    assert caught.value.option == option and allowed in str(caught.value)


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def test_the_silence_command_adds_lists_and_expires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "aegis.db"
    sink = SQLiteSink(str(path))
    sink.write(Batch())  # the app's file, with its schema
    # Another kind of change in the alert store's audit: the list leaves it out.
    sink.alert_store().add_audit("ops", "test", "channel pager", {}, 1.0)
    sink.close()
    db = f"sqlite:///{path}"
    code, out = run(
        "alerts", "silence", "add", 'alertname="errors"', 'route=~"/api/.*"', "--duration", "2h",
        "--comment", "deploying the fix", "--author", "ana", "--db", db,
    )  # fmt: skip
    assert code == 0
    silence_id = out.strip()
    code, out = run("alerts", "silence", "list", "--json", "--db", db)
    listed = json.loads(out)
    [made] = listed["silences"]
    assert made["id"] == silence_id and made["state"] == "active"
    assert made["matchers"] == ['alertname="errors"', 'route=~"/api/.*"']
    assert made["ends_at"] - made["starts_at"] == pytest.approx(7200)
    assert [(a["actor"], a["action"]) for a in listed["audit"]] == [("ana", "create")]
    code, out = run("alerts", "silence", "expire", silence_id, "--author", "bo", "--db", db)
    assert (code, out) == (0, f"expired {silence_id}\n")
    code, out = run("alerts", "silence", "list", "--json", "--db", db)
    assert json.loads(out)["silences"] == []
    assert [a["action"] for a in json.loads(out)["audit"]] == ["expire", "create"]
    # Bad input: exit 2, the problem named, nothing written.
    capsys.readouterr()
    code, _ = run("alerts", "silence", "add", 'route=~"("', "--comment", "x", "--db", db)
    assert code == 2 and "a valid regular expression" in capsys.readouterr().err
    code, _ = run("alerts", "silence", "add", 'route=~".*"', "--comment", "x", "--db", db)
    assert code == 2 and "must not match every alert" in capsys.readouterr().err
    code, _ = run(
        "alerts", "silence", "add", 'a="b"', "--comment", "x", "--duration", "x", "--db", db
    )
    assert code == 2 and "a number of seconds" in capsys.readouterr().err
    code, _ = run("alerts", "silence", "expire", "nope", "--db", db)
    assert code == 2 and "no silence 'nope'" in capsys.readouterr().err


@pytest.mark.anyio
async def test_the_silences_api(make_aegis: Callable[..., Aegis]) -> None:
    clock = FakeClock()
    aegis = make_aegis(
        clock=clock, alert_rules=[ERRORS], alert_interval=3600, metrics_registry="none",
        alert_mute_windows=[{"name": "nights", "times": [["22:00", "24:00"]],
                             "location": "Asia/Tokyo"}],
    )  # fmt: skip
    assert aegis.alerts is not None
    now = clock.wall()
    aegis.alerts.store.put_silence(silence(now, 'route="/a"'), "ops", now)
    async with client(AegisMiddleware(starlette_app(clock), aegis=aegis)) as http:
        answer = (await http.get("/api/metrics/silences")).json()["data"]
        spec = (await http.get("/api/metrics/openapi.json")).json()
    [listed] = answer["silences"]
    assert (listed["id"], listed["state"], listed["matchers"]) == ("s1", "active", ['route="/a"'])
    assert answer["mute_windows"][0]["name"] == "nights"
    assert answer["mute_windows"][0]["location"] == "Asia/Tokyo"
    assert [(a["actor"], a["action"]) for a in answer["audit"]] == [("ops", "create")]
    assert "/api/metrics/silences" in spec["paths"]

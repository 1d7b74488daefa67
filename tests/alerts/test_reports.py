"""Health and the pipeline as alert inputs: each process's report in the
shared store (a real SQLite file), read by the evaluating process into
``health_check_failing``, ``sink_failing`` and ``records_dropped``; a
failing readiness check holds back the error and latency alerts' firings
until it passes (a real HTTP receiver)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from pytest_httpserver import HTTPServer

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.alerts.reports import RESULT_SECONDS, ReportReader, process_report
from aegis_mw.health.checks import FAIL, PASS, UNKNOWN, CheckResult
from aegis_mw.testing import FakeClock
from tests.endpoints.test_api import client, flush, starlette_app

pytestmark = pytest.mark.anyio

API = "/api/metrics"
CHECKS = {
    "name": "checks_failing", "input": "health_check_failing", "operator": ">", "threshold": 0,
    "group_by": ["check"], "severity": "critical",
}  # fmt: skip
ERRORS = {
    "name": "boom_errors", "input": "error_ratio", "operator": ">", "threshold": 0.2,
    "window": "1m", "route": "/boom", "min_requests": 3,
}  # fmt: skip


def result(name: str, status: str, *, critical: bool = True, at: float = 1000.0) -> CheckResult:
    return CheckResult(name, status, "", 1.0, critical, {}, at)


def test_the_reader_sums_the_live_processes() -> None:
    reader = ReportReader()
    a = {"checks": {"db": {"failing": True, "critical": True, "age": 5.0},
                    "cache": {"failing": True, "critical": False, "age": 5.0}},
         "dropped": 10, "sinks": {"sqlite": False}, "channels": ["hook"]}  # fmt: skip
    b = {"checks": {"db": {"failing": False, "critical": True, "age": 1.0},
                    "old": {"failing": True, "critical": True, "age": RESULT_SECONDS + 1}},
         "dropped": 3, "sinks": {"sqlite": True}, "channels": ["hook", "ops"]}  # fmt: skip
    state = reader.read([("a", a), ("b", b)], 1000.0)
    db, cache = (("check", "db"),), (("check", "cache"),)
    assert state.health_check_failing == {db: 1, cache: 1}  # "old" is stale: not counted
    assert state.readiness_failing == {db: 1}  # the critical checks only
    assert state.sink_failing == {(("sink", "sqlite"),): 1}
    assert state.channels == frozenset({"hook", "ops"})
    assert state.records_dropped == 0  # counters first seen count from now
    # Next reading: a dropped 5 more, b is missing, c is new.
    state = reader.read([("a", {**a, "dropped": 15}), ("c", {"dropped": 40})], 1010.0)
    assert state.records_dropped == 5
    assert state.channels is None  # c did not say which it has: none is given up
    # b is back within the hour: its drops meanwhile count; c's too.
    state = reader.read([("b", {**b, "dropped": 7}), ("c", {"dropped": 41})], 1020.0)
    assert state.records_dropped == 4 + 1
    # Gone over an hour: forgotten, counted from its next report on.
    reader.read([("c", {"dropped": 41})], 5000.0)
    assert (
        reader.read([("b", {**b, "dropped": 9}), ("c", {"dropped": 41})], 5010.0).records_dropped
        == 0
    )
    # Reports that do not read are skipped, never an error.
    odd = reader.read(
        [("x", {"checks": [1], "sinks": "no", "dropped": -1}), ("y", [1]), ("z", {})], 6000.0
    )
    assert odd.inputs() == {
        "health_check_failing": {}, "readiness_failing": {}, "sink_failing": {},
        "records_dropped": {(): 0.0},
    }  # fmt: skip


def test_a_process_reports_its_checks_drops_and_sinks(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none")
    results = {
        "db": result("db", FAIL, at=990.0),
        "cache": result("cache", UNKNOWN, critical=False, at=999.0),
        "disk": result("disk", PASS, at=1000.0),
    }
    report = process_report(results, aegis.stats(), clock=lambda: 1000.0)
    assert report["checks"] == {
        "db": {"failing": True, "critical": True, "age": 10.0},
        "cache": {"failing": True, "critical": False, "age": 1.0},
        "disk": {"failing": False, "critical": True, "age": 0.0},
    }
    assert report["dropped"] == 0 and report["sinks"] == {"memory": False}
    json.dumps(report, allow_nan=False)  # what the store keeps


def settled(aegis: Aegis) -> None:
    """Until no notice is pending: sent here, or by the sender's own thread
    (woken by the commit; whichever claims a row sends it), within 10 s."""
    assert aegis.alerts is not None
    store, pause = aegis.alerts.store, threading.Event()
    deadline = time.monotonic() + 10
    aegis.alerts.sender.send_due()
    while any(n["state"] == "pending" for n in store.notices(100)):
        assert time.monotonic() < deadline, store.notices(100)
        pause.wait(0.02)


async def probe_and_tick(http: Any, aegis: Aegis, status: int) -> None:
    """A readiness probe (it runs the checks), then one evaluation."""
    assert (await http.get("/health/ready")).status_code == status
    assert aegis.alerts is not None
    await anyio.to_thread.run_sync(aegis.alerts.tick)


async def test_a_failing_check_fires_and_resolves(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    clock = FakeClock()
    aegis = make_aegis(
        sink=f"sqlite:///{tmp_path / 'aegis.db'}", clock=clock, alert_rules=[CHECKS],
        alert_interval=3600, metrics_registry="none", health_cache_seconds=0,
    )  # fmt: skip
    up = {"db": False}
    aegis.health.add("database", lambda: up["db"])
    aegis.health.add("cache", lambda: True, critical=False)
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        await probe_and_tick(http, aegis, 503)
        [alert] = (await http.get(f"{API}/alerts")).json()["data"]["alerts"]
        assert (alert["state"], alert["group"], alert["value"]) == (
            "firing", {"check": "database"}, 1.0
        )  # fmt: skip
        up["db"] = True
        clock.advance(10)
        await probe_and_tick(http, aegis, 200)
        assert (await http.get(f"{API}/alerts")).json()["data"]["alerts"] == []
        history = (await http.get(f"{API}/alert-history")).json()["data"]["transitions"]
    assert [(t["kind"], t["group"]) for t in history if t["notify"]] == [
        ("resolved", {"check": "database"}), ("firing", {"check": "database"})
    ]  # fmt: skip


def shared_store(tmp_path: Path, clock: FakeClock, rule: dict[str, Any]) -> dict[str, Any]:
    """The options of pipelines over one SQLite file (the app's processes)."""
    return {
        "sink": f"sqlite:///{tmp_path / 'aegis.db'}", "clock": clock, "alert_rules": [rule],
        "alert_interval": 3600, "metrics_registry": "none", "health_cache_seconds": 0,
    }  # fmt: skip


async def evaluating(make_aegis: Callable[..., Aegis], options: dict[str, Any]) -> Aegis:
    """The first pipeline: its tick (taking turns with its thread's first)
    takes the lease, before any other pipeline exists to take it."""
    evaluator = make_aegis(**options)
    assert evaluator.alerts is not None
    await anyio.to_thread.run_sync(evaluator.alerts.tick)
    assert evaluator.alerts.token == 1
    return evaluator


async def test_another_process_reports_the_check_the_evaluator_alerts_on(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Two pipelines over one SQLite file: the one the probe reaches is not
    the one that evaluates; its report carries the failing check across."""
    clock = FakeClock()
    options = shared_store(tmp_path, clock, CHECKS)
    evaluator = await evaluating(make_aegis, options)
    probed = make_aegis(**options)
    assert probed.alerts is not None
    probed.health.add("database", lambda: False)
    async with client(AegisMiddleware(starlette_app(clock), aegis=probed)) as http:
        await probe_and_tick(http, probed, 503)  # reports; does not evaluate
    assert probed.alerts.token is None
    await anyio.to_thread.run_sync(evaluator.alerts.tick)
    [alert] = evaluator.alerts.view()
    assert alert["group"] == {"check": "database"} and alert["state"] == "firing"


@pytest.mark.parametrize("inhibits", [True, False])
async def test_failing_readiness_pages_once_and_holds_the_error_alerts(
    inhibits: bool, make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer
) -> None:
    """The app says it is not ready: the built-in readiness alert fires and
    is sent; its errors are the symptom, so their alert's firing waits
    (shown as held) and goes once the readiness alert resolves."""
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    clock = FakeClock()
    channels = {
        # Each group's notices at once (no waiting for the rest of a group).
        "hook": {"type": "webhook", "url": httpserver.url_for("/hook"), "allow_private": True,
                 "group_wait": "0s", "group_interval": "0s"}
    }  # fmt: skip
    aegis = make_aegis(
        sink=f"sqlite:///{tmp_path / 'aegis.db'}", clock=clock, alert_rules=[ERRORS],
        alert_channels=channels, alert_interval=3600, metrics_registry="none",
        health_cache_seconds=0, alert_readiness_inhibits=inhibits,
    )  # fmt: skip
    ready = {"db": False}
    aegis.health.add("database", lambda: ready["db"])
    assert aegis.alerts is not None
    async with client(AegisMiddleware(starlette_app(clock), aegis=aegis)) as http:
        for _ in range(5):
            await http.get("/boom")
        await flush(aegis)
        clock.advance(20)
        await probe_and_tick(http, aegis, 503)
        alerts = (await http.get(f"{API}/alerts")).json()["data"]["alerts"]
        await anyio.to_thread.run_sync(settled, aegis)
        sent = [(n["groupLabels"]["alertname"], n["status"]) for n in received(httpserver)]
        if not inhibits:
            assert [(a["name"], a["muted"]) for a in alerts] == [("boom_errors", None)]
            assert sent == [("boom_errors", "firing")]
            return
        assert [(a["name"], a["state"], a["muted"]) for a in alerts] == [
            ("aegis_readiness_failing", "firing", None),
            ("boom_errors", "firing",
             "inhibited by aegis_readiness_failing (check=database)"),
        ]  # fmt: skip
        assert sent == [("aegis_readiness_failing", "firing")]
        ready["db"] = True
        clock.advance(10)
        await probe_and_tick(http, aegis, 200)
        await anyio.to_thread.run_sync(settled, aegis)
    sent = [(n["groupLabels"]["alertname"], n["status"]) for n in received(httpserver)]
    assert sorted(sent[1:]) == [("aegis_readiness_failing", "resolved"), ("boom_errors", "firing")]


def received(httpserver: HTTPServer) -> list[Any]:
    return [json.loads(request.data) for request, _ in httpserver.log]


async def test_a_stopped_process_leaves_and_a_failed_report_holds_nothing_back(
    make_aegis: Callable[..., Aegis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing report write misses this process's report once (the last
    one still counts); a process that stops removes its report, and the
    readiness alert it caused resolves."""
    clock = FakeClock()
    options = shared_store(tmp_path, clock, ERRORS)
    evaluator = await evaluating(make_aegis, options)
    probed = make_aegis(**options)
    probed.health.add("database", lambda: False)
    assert probed.alerts is not None
    async with client(AegisMiddleware(starlette_app(clock), aegis=probed)) as http:
        await probe_and_tick(http, probed, 503)
    await anyio.to_thread.run_sync(evaluator.alerts.tick)
    assert [a["name"] for a in evaluator.alerts.view()] == ["aegis_readiness_failing"]

    def down(*args: Any) -> None:
        raise OSError("database is locked")

    monkeypatch.setattr(evaluator.alerts.store, "put_report", down)
    clock.advance(10)
    await anyio.to_thread.run_sync(evaluator.alerts.tick)
    assert evaluator.alerts.failures == 0
    assert [a["name"] for a in evaluator.alerts.view()] == ["aegis_readiness_failing"]
    monkeypatch.undo()
    await anyio.to_thread.run_sync(probed.alerts.stop, 10)
    clock.advance(10)
    await anyio.to_thread.run_sync(evaluator.alerts.tick)
    assert evaluator.alerts.view() == []


def test_sinks_and_drops_through_the_service(tmp_path: Path) -> None:
    """The report inputs evaluated: two processes' reports over one store."""
    from aegis_mw.alerts import AlertRule
    from aegis_mw.alerts.service import AlertService
    from aegis_mw.sinks import SQLiteSink

    now = [1_800_000_000.0]
    rules = [
        AlertRule(name="sink_down", input="sink_failing", operator=">", threshold=0,
                  group_by=("sink",)),
        AlertRule(name="lost", input="records_dropped", operator=">", threshold=100),
    ]  # fmt: skip
    reports = {
        "a": {"checks": {}, "dropped": 0, "sinks": {"sqlite": False}},
        "b": {"checks": {}, "dropped": 0, "sinks": {"sqlite": True}},
    }
    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    try:
        services = {
            name: AlertService(
                rules, sink.alert_store(), sink, interval=10.0, wall=lambda: now[0],
                reporter=lambda name=name: reports[name],
            )
            for name in ("a", "b")
        }  # fmt: skip
        evaluator = services["b"]
        evaluator.tick()  # takes the lease
        services["a"].tick()  # writes its report
        evaluator.tick()  # reads both: a's drop counter counts from here
        assert evaluator.token is not None and services["a"].token is None
        values = {(a["name"], tuple(a["group"].items())): a["value"] for a in evaluator.view()}
        assert values == {("sink_down", (("sink", "sqlite"),)): 1.0}
        reports["a"] = {**reports["a"], "dropped": 150}
        now[0] += 10
        services["a"].tick()
        evaluator.tick()
        names = sorted(a["name"] for a in evaluator.view())
        assert names == ["lost", "sink_down"]
    finally:
        sink.close()


def test_no_report_is_written_when_nothing_reads_them(tmp_path: Path) -> None:
    from aegis_mw.alerts import AlertRule
    from aegis_mw.alerts.service import AlertService
    from aegis_mw.sinks import SQLiteSink

    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    try:
        rule = AlertRule(name="busy", input="request_rate", operator=">", threshold=1)
        service = AlertService(
            [rule],
            sink.alert_store(),
            sink,
            interval=10.0,
            wall=lambda: 1_800_000_000.0,
            reporter=lambda: {"checks": {}, "dropped": 0, "sinks": {}},
        )
        service.tick()
        assert [r.name for r in service.rules] == ["busy"]  # no readiness rule for a rate
        assert service.store.reports(0) == []
    finally:
        sink.close()

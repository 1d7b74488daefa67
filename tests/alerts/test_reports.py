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
         "dropped": 10, "sinks": {"sqlite": False}}  # fmt: skip
    b = {"checks": {"db": {"failing": False, "critical": True, "age": 1.0},
                    "old": {"failing": True, "critical": True, "age": RESULT_SECONDS + 1}},
         "dropped": 3, "sinks": {"sqlite": True}}  # fmt: skip
    state = reader.read([("a", a), ("b", b)])
    assert state.health_check_failing == {(("check", "db"),): 1, (("check", "cache"),): 1}
    assert state.sink_failing == {(("sink", "sqlite"),): 1}
    assert state.not_ready == ("db",)  # the cache is not critical; "old" is stale
    assert state.records_dropped == 0  # counters first seen count from now
    # Next reading: a dropped 5 more, b restarted (a new process), c is new.
    state = reader.read([("a", {**a, "dropped": 15}), ("c", {"dropped": 40})])
    assert state.records_dropped == 5
    state = reader.read([("a", {**a, "dropped": 15}), ("c", {"dropped": 41})])
    assert state.records_dropped == 1
    # Reports that do not read are skipped, never an error.
    odd = reader.read([("x", {"checks": [1], "sinks": "no", "dropped": -1}), ("y", {})])
    assert odd.inputs() == {
        "health_check_failing": {}, "sink_failing": {}, "records_dropped": {(): 0.0}
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


async def test_another_process_reports_the_check_the_evaluator_alerts_on(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Two pipelines over one SQLite file: the one the probe reaches is not
    the one that evaluates; its report carries the failing check across."""
    clock = FakeClock()
    options = {
        "sink": f"sqlite:///{tmp_path / 'aegis.db'}", "clock": clock, "alert_rules": [CHECKS],
        "alert_interval": 3600, "metrics_registry": "none", "health_cache_seconds": 0,
    }  # fmt: skip
    evaluator = make_aegis(**options)
    assert evaluator.alerts is not None
    # After its thread's first tick (ticks take turns): it holds the lease.
    await anyio.to_thread.run_sync(evaluator.alerts.tick)
    assert evaluator.alerts.token == 1
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
async def test_failing_readiness_holds_the_error_alerts_firing(
    inhibits: bool, make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer
) -> None:
    """The app says it is not ready: its errors are the symptom, so their
    alert's firing waits (shown as held) and goes once readiness passes."""
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    clock = FakeClock()
    channels = {
        "hook": {"type": "webhook", "url": httpserver.url_for("/hook"), "allow_private": True,
                 "group_wait": "0s"}
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
        [alert] = (await http.get(f"{API}/alerts")).json()["data"]["alerts"]
        assert alert["state"] == "firing"
        await anyio.to_thread.run_sync(settled, aegis)
        if not inhibits:
            assert alert["muted"] is None and len(httpserver.log) == 1
            return
        assert alert["muted"] == "inhibited by failing readiness (database)"
        assert httpserver.log == []
        ready["db"] = True
        clock.advance(10)
        await probe_and_tick(http, aegis, 200)
        await anyio.to_thread.run_sync(settled, aegis)
    [(request, _)] = httpserver.log
    notice = json.loads(request.data)
    assert notice["status"] == "firing" and notice["groupLabels"]["alertname"] == "boom_errors"

"""Alerts where they leave the process: the JSON API (private by default,
input checked), the stream's section, the dashboard's panel data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.realtime.sections import build
from aegis_mw.testing import FakeClock
from tests.endpoints.test_api import client, flush, starlette_app
from tests.servers import promtool_checks

pytestmark = pytest.mark.anyio

API = "/api/metrics"
RULES = [
    {
        "name": "boom_errors", "input": "error_ratio", "operator": ">", "threshold": 0.2,
        "window": "1m", "route": "/boom", "min_requests": 3, "severity": "critical",
        "annotations": {"summary": "$route fails $value_percent"},
    },
    {"name": "traffic", "input": "request_rate", "operator": ">", "threshold": 100},
]  # fmt: skip


async def firing_app(
    make_aegis: Callable[..., Aegis], **options: Any
) -> tuple[Aegis, Any, FakeClock]:
    clock = FakeClock()
    aegis = make_aegis(
        clock=clock, alert_rules=RULES, alert_interval=3600, metrics_registry="none", **options
    )
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    return aegis, app, clock


async def test_a_firing_alert_on_the_api_and_the_stream(make_aegis: Callable[..., Aegis]) -> None:
    aegis, app, clock = await firing_app(make_aegis)
    async with client(app) as http:
        for _ in range(5):
            assert (await http.get("/boom")).status_code == 500
        await flush(aegis)
        clock.advance(20)  # the requests' buckets settle
        assert aegis.alerts is not None
        await anyio.to_thread.run_sync(aegis.alerts.tick)
        answer = (await http.get(f"{API}/alerts")).json()["data"]
        assert answer["evaluating"] is True and answer["interval"] == 3600
        [alert] = answer["alerts"]
        assert alert["name"] == "boom_errors" and alert["state"] == "firing"
        assert alert["severity"] == "critical" and alert["value"] == 1.0
        assert alert["message"] == "boom_errors firing: /boom fails 100 %"
        # The traffic rule's window is empty: no data, listed apart.
        assert answer["nodata"] == []  # a rate is data at any count
        assert [(r["name"], r["health"]) for r in answer["rules"]] == [
            ("boom_errors", ""), ("traffic", ""), ("aegis_readiness_failing", "")
        ]  # fmt: skip
        history = (await http.get(f"{API}/alert-history", params={"limit": 10})).json()["data"]
        notified = [t for t in history["transitions"] if t["notify"]]
        assert [(t["rule"], t["kind"]) for t in notified] == [("boom_errors", "firing")]
        older = await http.get(
            f"{API}/alert-history", params={"before": history["transitions"][-1]["id"]}
        )
        assert older.json()["data"]["transitions"] == []
        metrics = (await http.get("/metrics")).text
    frame = build(aegis, ("alerts",))
    assert [a["name"] for a in frame["alerts"]] == ["boom_errors"]
    lines = [line for line in metrics.splitlines() if line.startswith("aegis_alerts{")]
    assert len(lines) == 8  # every state and severity, so no series comes and goes
    assert 'aegis_alerts{state="firing",severity="critical"} 1' in lines
    assert 'aegis_alerts{state="firing",severity="warning"} 0' in lines
    await anyio.to_thread.run_sync(promtool_checks, metrics)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"limit": "0"}, "limit"), ({"before": "x"}, "before"), ({"since": "1"}, "since")],
)
async def test_bad_history_parameters_are_named(
    make_aegis: Callable[..., Aegis], params: dict[str, str], parameter: str
) -> None:
    _, app, _ = await firing_app(make_aegis)
    async with client(app) as http:
        response = await http.get(f"{API}/alert-history", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == parameter


async def test_alerts_are_private_by_default(make_aegis: Callable[..., Aegis]) -> None:
    aegis, app, _ = await firing_app(make_aegis, access={})
    async with client(app) as http:
        for endpoint in ("alerts", "alert-history"):
            assert (await http.get(f"{API}/{endpoint}")).status_code == 401
        assert aegis.access_token is not None
        token = {"authorization": f"Bearer {aegis.access_token.value}"}
        assert (await http.get(f"{API}/alerts", headers=token)).status_code == 200


async def test_without_rules_the_answers_are_empty(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none")
    assert aegis.alerts is None
    async with client(AegisMiddleware(starlette_app(FakeClock()), aegis=aegis)) as http:
        answer = (await http.get(f"{API}/alerts")).json()["data"]
        assert answer == {
            "evaluating": False, "interval": None, "alerts": [], "nodata": [], "rules": [],
            "channels": [],
        }  # fmt: skip
        history = (await http.get(f"{API}/alert-history")).json()["data"]
        assert history == {"transitions": [], "notices": []}
    assert build(aegis, ("alerts",)) == {"alerts": []}


def test_rules_need_a_sink_that_keeps_history(make_aegis: Callable[..., Aegis]) -> None:
    from aegis_mw import ConfigError

    with pytest.raises(ConfigError, match="alerts need a sink that keeps history"):
        make_aegis(sink=lambda batch: None, alert_rules=RULES)


def test_a_window_longer_than_its_rows_are_kept_is_refused(
    make_aegis: Callable[..., Aegis],
) -> None:
    from aegis_mw import ConfigError

    long = {"name": "long", "input": "request_rate", "operator": "<", "threshold": 1}
    make_aegis(alert_rules=[{**long, "window": "1h"}], retention_raw=3600)
    with pytest.raises(ConfigError, match=r"rule 'long' window 7200 s.*3600 s its 60 s rollups"):
        make_aegis(alert_rules=[{**long, "window": "2h"}], retention_raw=3600)


def test_windows_wait_for_a_flush_interval_more(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(alert_rules=RULES, flush_interval=30)
    assert aegis.alerts is not None and aegis.alerts.settle == 40.0

"""``GET {api_path}/stats``: events, requests, custom metrics, alerts and
incidents at a glance, the same from memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import Aegis
from aegis_mw.contrib.starlette import install

API = "/api/metrics"
TOKEN = "viewer-token-0123"


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("kaput")


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get(f"{API}/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


@pytest.mark.anyio
async def test_the_figures_follow_what_was_recorded(
    make_aegis: Callable[..., Aegis], history_sink_url: str
) -> None:
    aegis = make_aegis(
        sink=history_sink_url, access={"api": {"tokens": [TOKEN]}}, alerts_enabled=True,
        metrics_registry="none", environ={},
    )  # fmt: skip
    app = Starlette(routes=[Route("/boom", boom), Route("/ok", ok)])
    install(app, aegis=aegis)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        before = await stats(http)
        assert before["events"] == {"total": 0, "last_hour": 0}
        assert before["incidents"] == {"total": 0, "active": 0, "opened_last_hour": 0}
        assert before["custom_metrics"] == {"declared": 0, "series": 0}
        assert before["alerts"] == {"firing": 0, "pending": 0}

        for _ in range(3):
            assert (await http.get("/ok")).status_code == 200
        assert (await http.get("/boom")).status_code == 500
        aegis.event("deployed", event_id="d1")
        aegis.event("old news", timestamp=aegis.clock.wall() - 7200, event_id="d0")
        jobs = aegis.counter("jobs_total", "Jobs.", labels=("kind",))
        jobs.labels("a").inc()
        jobs.labels("b").inc()
        aegis.gauge("queue_depth", "Depth.").set(3)
        assert aegis.incidents is not None
        first, _ = aegis.incidents.open({"title": "one", "correlation_key": "k"}, "t")
        aegis.incidents.open({"title": "two"}, "t")
        aegis.incidents.change(first.incident_id, {"status": "resolved"}, "t")
        assert aegis.force_flush(10)

        after = await stats(http)
        assert after["events"] == {"total": 2, "last_hour": 1}
        assert after["requests"] == {"last_hour": 4, "failed_last_hour": 1}
        assert after["custom_metrics"] == {"declared": 2, "series": 3}
        assert after["incidents"] == {"total": 2, "active": 1, "opened_last_hour": 2}


@pytest.mark.anyio
async def test_without_history_the_parts_it_lacks_are_null(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis = make_aegis(
        sink=f"jsonl:///{tmp_path / 'log.jsonl'}", access={"api": {"tokens": [TOKEN]}},
        metrics_registry="none", environ={},
    )  # fmt: skip
    app = Starlette(routes=[Route("/ok", ok)])
    install(app, aegis=aegis)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        data = await stats(http)
    assert (data["events"], data["requests"], data["alerts"], data["incidents"]) == (
        None, None, None, None,
    )  # fmt: skip
    assert data["custom_metrics"] == {"declared": 0, "series": 0}

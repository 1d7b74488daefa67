"""The PostgreSQL dashboard against the real PostgreSQL: a FastAPI app with the
middleware and a ``postgresql://`` sink (tables in a schema of the test's own)
serves pages, a 404, server errors (answered and raised) and WebSocket
sessions and records an event; the pipeline is flushed. Then every panel's SQL
and the route variable's, expanded as Grafana expands them
(``tests/grafana/grafana_sql.py``), must run and return rows, at three
intervals and ranges that read three stored resolutions; the figures must be
those aegis_mw's own history API reads from the same tables."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.history import HistoryQueries
from tests.grafana.dashboards import dashboard, label, targets, variables
from tests.grafana.grafana_sql import Query, all_of, interpolated, quoted
from tests.harness import Exchange, websocket_scope

ROUTES = {"/items/{item_id}", "/orders/{order_id}", "/fail", "/raise", "<unmatched>"}


@pytest.fixture
def stored(make_aegis: Callable[..., Aegis], postgres_url: str) -> tuple[Aegis, str]:
    """The database after an app's traffic, and the pipeline that wrote it."""
    aegis = make_aegis(sink=postgres_url)
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.post("/orders/{order_id}")
    async def order(order_id: int) -> JSONResponse:
        return JSONResponse({}, status_code=429 if order_id == 0 else 201)

    @app.get("/fail")
    async def fail() -> JSONResponse:
        return JSONResponse({"error": "down"}, status_code=503)

    @app.get("/raise")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.websocket("/ws/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text)

    app.add_middleware(AegisMiddleware, aegis=aegis)
    anyio.run(traffic, app)
    assert aegis.event("deployed 1.2.3", type="log", level="warning", tags=["deploy"])
    assert aegis.force_flush(timeout=30)
    return aegis, postgres_url


async def traffic(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for number in range(40):
            assert (await client.get(f"/items/{number}")).status_code == 200
        for number in range(4):
            assert (await client.post(f"/orders/{number}")).status_code in (201, 429)
        for _ in range(3):
            assert (await client.get("/fail")).status_code == 503
        assert (await client.get("/raise")).status_code == 500
        assert (await client.get("/missing")).status_code == 404
    for _ in range(2):  # WebSocket sessions, played at the message level
        session = Exchange(
            [
                {"type": "websocket.connect"},
                {"type": "websocket.receive", "text": "hello"},
                {"type": "websocket.disconnect", "code": 1000},
            ]
        )
        await app(websocket_scope("/ws/echo"), session.receive, session.send)
        assert [message["type"] for message in session.sent] == [
            "websocket.accept",
            "websocket.send",
        ]


def rows(url: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql.encode())  # as written: no parameters, no % placeholders
        assert cursor.description is not None
        return [column.name for column in cursor.description], cursor.fetchall()


def everything(url: str, data: dict[str, Any], query: Query) -> dict[str, str]:
    """The route variable's values over ``query``'s range, and the variables set to "All"."""
    route = variables(data)["route"]
    names, found = rows(url, interpolated(route["query"], {}, query))
    assert names == ["route"]
    values = [row[0] for row in found]
    assert set(values) == ROUTES  # the HTTP routes (WebSocket sessions have no rollups)
    return {"route": all_of(route, values)}


#: (what, how long before now the range starts, Grafana's interval, the stored
#: resolution read and the seconds a point covers): three resolutions.
QUERIES = [("1 hour at 2 s", 3600, 2_000, 5, 5), ("6 hours at 1 min", 21_600, 60_000, 60, 60),
           ("10 days at 10 min", 864_000, 600_000, 300, 600)]  # fmt: skip


@pytest.mark.parametrize(
    ("span", "interval_ms", "resolution", "step"),
    [query[1:] for query in QUERIES],
    ids=[query[0] for query in QUERIES],
)
def test_every_panel_runs_and_returns_rows(
    stored: tuple[Aegis, str], span: int, interval_ms: int, resolution: int, step: int
) -> None:
    _, url = stored
    data = dashboard("postgresql-dashboard")
    now = time.time()
    query = Query(now - span, now + 60, interval_ms)
    chosen = everything(url, data, query)
    # The resolution the panels read: their shared first part, asked alone.
    head = by_title(data, "Requests").partition("\nSELECT coalesce")[0]
    _, found = rows(url, interpolated(head + "\nSELECT res, step FROM r", chosen, query))
    assert found == [(resolution, step)]
    ran = 0
    for panel, target in targets(data):
        sql = interpolated(target["rawSql"], chosen, query)
        names, found = rows(url, sql)
        assert found, f"{label(panel, target)} returned no rows:\n{sql}"
        if target["format"] == "time_series":
            # Grafana needs a time column, in ascending order, to draw the series.
            assert names[0] == "time", label(panel, target)
            times = [row[0] for row in found]
            assert times == sorted(times), label(panel, target)
        ran += 1
    assert ran == 13


def test_a_route_selection_narrows_the_route_panels(stored: tuple[Aegis, str]) -> None:
    _, url = stored
    data = dashboard("postgresql-dashboard")
    now = time.time()
    query = Query(now - 3600, now + 60, 2_000)
    picked = ["/fail", "/raise"]
    narrowed = {"route": quoted(picked)}
    assert narrowed["route"] == "'/fail','/raise'"
    seen: dict[str, set[str]] = {}
    for panel, target in targets(data):
        if "$route" not in target["rawSql"]:
            continue
        names, found = rows(url, interpolated(target["rawSql"], narrowed, query))
        column = "Route" if "Route" in names else "metric"
        seen[panel["title"]] = {row[names.index(column)] for row in found}
    assert seen == {
        "Requests per second by route": set(picked),
        "Latency p95 by route": set(picked),
        "Routes over the time range": set(picked),
        "Recent server errors": set(picked),
    }


def by_title(data: dict[str, Any], title: str) -> str:
    [sql] = [target["rawSql"] for panel, target in targets(data) if panel["title"] == title]
    return sql


def test_the_figures_are_those_of_the_history_api(stored: tuple[Aegis, str]) -> None:
    """Over a range holding all the traffic, the stats equal what aegis_mw's own
    history queries read from the same tables (the percentile from the same
    histograms, within the same clamps)."""
    aegis, url = stored
    data = dashboard("postgresql-dashboard")
    now = time.time()
    query = Query(now - 3600, now + 60, 2_000)
    chosen = everything(url, data, query)

    def stat(title: str) -> Any:
        _, found = rows(url, interpolated(by_title(data, title), chosen, query))
        [(value,)] = found
        return value

    overview = HistoryQueries(aegis.sinks[0]).overview(
        since=datetime.fromtimestamp(query.start).astimezone(),
        until=datetime.fromtimestamp(query.end).astimezone(),
    )
    assert overview["total"] == 49
    assert stat("Requests") == overview["total"]
    assert stat("Server errors") == pytest.approx(overview["failed"] / overview["total"])
    assert overview["failed"] == 4  # the three 503s and the raise
    latency = overview["latency_ms"]  # rounded to the microsecond
    assert stat("Average latency") == pytest.approx(latency["avg"], abs=6e-4)
    assert stat("Latency p95") == pytest.approx(latency["p95"], abs=6e-4)

    # The routes table: every route's requests and errors.
    names, found = rows(
        url, interpolated(by_title(data, "Routes over the time range"), chosen, query)
    )
    table = {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in found}
    assert table["/items/{item_id}", "GET"]["Requests"] == 40
    assert table["/fail", "GET"]["Server errors"] == 3
    assert table["/fail", "GET"]["Error ratio"] == 1.0
    assert all(row["p95"] <= row["Max"] for row in table.values())

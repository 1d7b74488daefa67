"""The JSON metrics API under /api/metrics/, served by the middleware in front of a
Starlette app: exact figures after real traffic, every filter of the request log,
400s that name the bad parameter, 401/405/503, and the API switched off."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import Aegis, AegisMiddleware, Batch
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.record import RequestRecord
from aegis_mw.core.rollup import RollupRow
from aegis_mw.endpoints.api import PARAMETERS
from aegis_mw.endpoints.writes import WRITES
from aegis_mw.testing import FakeClock, MemorySink
from tests.harness import call, http_scope

pytestmark = pytest.mark.anyio
API = "/api/metrics"
TOKEN = "api-token-1234"
#: Every endpoint that reads storage (realtime and openapi.json do not).
STORAGE = ("overview", "request-rate", "latency", "status-distribution", "top-endpoints")
HISTORY = (*STORAGE, "requests")

#: (method, path, status, how many, milliseconds each): 30 requests.
TRAFFIC = (
    ("GET", "/items/1", 200, 12, 10),
    ("POST", "/items/2", 201, 2, 20),
    ("GET", "/slow", 200, 3, 800),
    ("GET", "/boom", 500, 4, 5),
    ("GET", "/limited", 429, 3, 1),
    ("GET", "/missing/page", 404, 6, 0),  # Starlette's own 404: no fake time passes
)
TOTAL = sum(count for _, _, _, count, _ in TRAFFIC)


def starlette_app(clock: FakeClock) -> Starlette:
    """Each route answers the status it is named for, taking ``ms`` fake milliseconds."""

    def route(status: int, ms: float) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> PlainTextResponse:
            clock.advance(ms / 1000)
            return PlainTextResponse("x" * status, status_code=status)

        return endpoint

    async def items(request: Request) -> PlainTextResponse:
        ms = 10 if request.method == "GET" else 20
        clock.advance(ms / 1000)
        return PlainTextResponse("item", status_code=200 if request.method == "GET" else 201)

    return Starlette(
        routes=[
            Route("/items/{item_id}", items, methods=["GET", "POST"]),
            Route("/slow", route(200, 800)),
            Route("/boom", route(500, 5)),
            Route("/limited", route(429, 1)),
        ]
    )


def client(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers
    )


async def flush(aegis: Aegis) -> None:
    """force_flush waits on the flusher thread: never on the event loop."""
    assert await anyio.to_thread.run_sync(aegis.force_flush, 10.0)


async def send_traffic(http: httpx.AsyncClient, clock: FakeClock) -> None:
    """The 30 requests of TRAFFIC, one fake second apart (plus each one's duration)."""
    for method, path, status, count, _ in TRAFFIC:
        for _ in range(count):
            clock.advance(1.0)
            response = await http.request(method, path)
            assert response.status_code == status


async def get(http: httpx.AsyncClient, endpoint: str, **params: Any) -> Any:
    response = await http.get(f"{API}/{endpoint}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert list(body) == ["data"]
    return body["data"]


async def bad(http: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "parameter"}
    assert error["message"]
    return dict(error)


def iso(timestamp: float) -> str:
    """Microsecond ISO 8601, finer than the API's own millisecond output."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


class Served:
    """An app with TRAFFIC recorded and flushed, and a client for it."""

    def __init__(self, aegis: Aegis, clock: FakeClock, http: httpx.AsyncClient) -> None:
        self.aegis, self.clock, self.http = aegis, clock, http

    @property
    def records(self) -> list[RequestRecord]:
        sink = self.aegis.sinks[0]
        assert isinstance(sink, MemorySink)
        return sink.requests


@pytest.fixture
async def served(make_aegis: Callable[..., Aegis]) -> AsyncIterator[Served]:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600, metrics_registry="none")
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        await send_traffic(http, clock)
        # "Now" moves on past the last request, as it does on a real clock.
        clock.advance(5.0)
        await flush(aegis)
        yield Served(aegis, clock, http)


# -- figures -------------------------------------------------------------------------


@pytest.mark.usefixtures("hot_path")
async def test_overview_counts_exactly_what_was_sent(served: Served) -> None:
    overview = await get(served.http, "overview")
    assert overview["total"] == TOTAL == 30
    assert overview["successful"] == 12 + 2 + 3
    assert overview["failed"] == 4
    assert overview["client_errors"] == 3 + 6
    assert overview["rate_limited"] == 3
    assert overview["error_rate"] == round(4 / 30, 6)
    assert overview["status"] == {"1xx": 0, "2xx": 17, "3xx": 0, "4xx": 9, "5xx": 4}
    latency = overview["latency_ms"]
    assert latency["min"] == 0
    assert latency["max"] == pytest.approx(800, abs=0.01)
    assert latency["avg"] == pytest.approx(sum(n * ms for *_, n, ms in TRAFFIC) / 30, abs=0.001)
    assert overview["response_bytes"] == sum(r.response_bytes for r in served.records)
    # The same figures from an explicit range around the traffic, none before it.
    start = served.records[0].timestamp
    around = await get(served.http, "overview", **{"from": iso(start - 60), "to": iso(start + 120)})
    assert (around["total"], around["failed"], around["status"]) == (30, 4, overview["status"])
    before = await get(served.http, "overview", **{"from": iso(start - 600), "to": iso(start - 60)})
    assert before["total"] == 0 and before["latency_ms"]["p95"] is None


async def test_series_points_add_up_to_the_total(served: Served) -> None:
    for range_name in ("5m", "15m", "1h", "24h"):
        rate = await get(served.http, "request-rate", range=range_name)
        assert sum(p["requests"] for p in rate["points"]) == TOTAL
        assert sum(p["errors"] for p in rate["points"]) == 4
        assert len(rate["points"]) >= 60
        step = rate["range"]["step_seconds"]
        assert all(
            p["requests_per_second"] == round(p["requests"] / step, 3) for p in rate["points"]
        )
        statuses = await get(served.http, "status-distribution", range=range_name)
        assert [p["timestamp"] for p in statuses["points"]] == [
            p["timestamp"] for p in rate["points"]
        ]
        classes = {f"{n}xx": sum(p[f"{n}xx"] for p in statuses["points"]) for n in range(1, 6)}
        assert classes == {"1xx": 0, "2xx": 17, "3xx": 0, "4xx": 9, "5xx": 4}
        latency = await get(served.http, "latency", range=range_name)
        assert sum(p["requests"] for p in latency["points"]) == TOTAL
        busy = [p for p in latency["points"] if p["requests"]]
        assert busy and all(p["p95"] is not None for p in busy)
        assert all(p["avg"] is None for p in latency["points"] if not p["requests"])


async def test_top_endpoints_by_count_p95_and_errors(served: Served) -> None:
    by_count = await get(served.http, "top-endpoints")
    assert by_count["sort"] == "count"
    assert [(e["route"], e["method"], e["requests"]) for e in by_count["endpoints"]] == [
        ("/items/{item_id}", "GET", 12),
        ("<unmatched>", "GET", 6),
        ("/boom", "GET", 4),
        ("/limited", "GET", 3),  # ties in count go by route, then method
        ("/slow", "GET", 3),
        ("/items/{item_id}", "POST", 2),
    ]
    by_p95 = await get(served.http, "top-endpoints", sort="p95", limit=2)
    assert [e["route"] for e in by_p95["endpoints"]] == ["/slow", "/items/{item_id}"]
    assert by_p95["endpoints"][0]["latency_ms"]["p95"] > 500
    assert by_p95["endpoints"][1]["method"] == "POST"  # 20 ms beats GET's 10 ms
    by_errors = await get(served.http, "top-endpoints", sort="errors", limit=1)
    [worst] = by_errors["endpoints"]
    assert (worst["route"], worst["errors"], worst["error_rate"]) == ("/boom", 4, 1.0)


async def test_the_request_log_filters(served: Served) -> None:
    records = served.records
    assert len(records) == TOTAL

    async def ids(**params: Any) -> list[str]:
        data = await get(served.http, "requests", **params)
        return [r["request_id"] for r in data["requests"]]

    def expect(keep: Callable[[RequestRecord], bool]) -> list[str]:
        kept = sorted((r for r in records if keep(r)), key=lambda r: r.timestamp, reverse=True)
        return [r.request_id for r in kept]

    everything = await ids()
    assert everything == expect(lambda r: True)  # newest first
    assert len(await ids(route="/items/{item_id}")) == 14
    assert await ids(route="/items/{item_id}", method="POST") == expect(
        lambda r: r.method == "POST"
    )
    assert len(await ids(method="post")) == 2  # methods are matched in upper case
    assert await ids(status="404") == expect(lambda r: r.status == 404)
    assert len(await ids(status="404")) == 6
    assert await ids(status="5xx") == expect(lambda r: r.status >= 500)
    assert len(await ids(status="4xx")) == 9
    assert await ids(status="201") == expect(lambda r: r.status == 201)
    assert await ids(min_duration_ms="500") == expect(lambda r: r.route == "/slow")
    assert await ids(route="/nowhere") == []
    # A window between records: since inclusive, until exclusive.
    ordered = sorted(r.timestamp for r in records)
    since, until = (ordered[4] + ordered[5]) / 2, (ordered[14] + ordered[15]) / 2
    window = await ids(since=iso(since), until=iso(until))
    assert window == expect(lambda r: since <= r.timestamp < until) and len(window) == 10
    assert await ids(since=iso(ordered[5])) == expect(lambda r: r.timestamp >= ordered[5])
    # Pages: limit and offset walk the whole log once.
    pages = [await ids(limit=7, offset=offset) for offset in range(0, 35, 7)]
    assert [len(page) for page in pages] == [7, 7, 7, 7, 2]
    assert [i for page in pages for i in page] == everything
    assert await ids(offset=30) == []
    data = await get(served.http, "requests", limit=3, offset=2)
    assert (data["limit"], data["offset"]) == (3, 2)
    first = data["requests"][0]
    assert set(first) == set(RequestRecord._fields)
    assert first["timestamp"].endswith("Z")


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_the_request_log_filters_by_trace(served: Served) -> None:
    """``trace_id`` keeps one trace's requests, newest first, each with its
    trace and span ids; untraced records (the traffic's) show them as null."""
    sink = served.aegis.sinks[0]
    assert isinstance(sink, MemorySink)
    start = served.records[0].timestamp
    traced = [
        RequestRecord(
            f"{'e' * 16}{n:016x}", start + n, "GET", "/traced", "/traced", 200 + n, 1.0, 0.5,
            0, 10, None, "", TRACE if n != 2 else "0af7651916cd43dd8448eb211c80319c",
            f"{n + 1:016x}",
        )
        for n in range(4)
    ]  # fmt: skip
    sink.write(Batch(requests=traced, batch_id="traced"))

    data = await get(served.http, "requests", trace_id=TRACE)
    assert [r["request_id"] for r in data["requests"]] == [
        traced[3].request_id, traced[1].request_id, traced[0].request_id,
    ]  # fmt: skip
    assert data["requests"][0] == traced[3].to_json()
    assert (data["requests"][0]["trace_id"], data["requests"][0]["span_id"]) == (
        TRACE, "0000000000000004",
    )  # fmt: skip
    both = await get(served.http, "requests", trace_id=TRACE, status="201", limit=5)
    assert [r["request_id"] for r in both["requests"]] == [traced[1].request_id]
    assert (await get(served.http, "requests", trace_id="f" * 32))["requests"] == []
    everything = (await get(served.http, "requests", limit=1000))["requests"]
    assert len(everything) == TOTAL + 4
    assert sum(1 for r in everything if r["trace_id"] is None and r["span_id"] is None) == TOTAL


async def test_the_api_is_never_recorded_as_traffic(served: Served) -> None:
    for endpoint in (*HISTORY, "realtime", "openapi.json"):
        assert (await served.http.get(f"{API}/{endpoint}")).status_code == 200
        assert (await served.http.get(f"{API}/{endpoint}?bogus=1")).status_code == 400
        assert (await served.http.post(f"{API}/{endpoint}")).status_code == 405
    await flush(served.aegis)
    assert len(served.records) == TOTAL
    assert all(not r.path.startswith(API) for r in served.records)
    assert (await get(served.http, "overview"))["total"] == TOTAL
    assert (await get(served.http, "realtime"))["total_requests"] == TOTAL


async def test_realtime_answers_from_memory_before_any_flush(
    make_aegis: Callable[..., Aegis],
) -> None:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600, metrics_registry="none")
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        await send_traffic(http, clock)
        realtime = await get(http, "realtime")
    assert aegis.sinks[0].batches == 0  # type: ignore[attr-defined]  # nothing stored yet
    assert realtime["total_requests"] == TOTAL
    assert realtime["status_totals"] == {"1xx": 0, "2xx": 17, "3xx": 0, "4xx": 9, "5xx": 4}
    assert realtime["in_flight"] == 0


async def test_realtime_carries_the_streams_series_and_top_endpoints(
    make_aegis: Callable[..., Aegis],
) -> None:
    """What a page polling without the stream draws: the last minute's series
    and the live top endpoints, with their p95, beside the overview's fields."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600, metrics_registry="none")
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        await send_traffic(http, clock)  # about 35 fake seconds: all in the last minute
        realtime = await get(http, "realtime")
    assert realtime["total_requests"] == TOTAL and realtime["stream_connections_active"] == 0
    rate = realtime["request_rate"]
    assert rate["step_seconds"] == 1 and len(rate["points"]) == 60
    assert sum(point["requests"] for point in rate["points"]) == TOTAL
    assert sum(point["errors"] for point in rate["points"]) == 4
    assert max(p["p99"] or 0 for p in realtime["latency_percentiles"]["points"]) == pytest.approx(
        800, rel=0.02
    )
    status = realtime["status_distribution"]["points"]
    assert sum(point["2xx"] for point in status) == 17
    top = {(row["method"], row["route"]): row for row in realtime["top_endpoints"]}
    assert top["GET", "/items/{item_id}"]["requests"] == 12
    # p95 from the fine buckets (2% wide), not the exposition's (5 ms, 10 ms, ...).
    assert top["GET", "/items/{item_id}"]["latency_ms"]["p95"] == pytest.approx(10, rel=0.02)
    assert top["POST", "/items/{item_id}"]["latency_ms"]["p95"] == pytest.approx(20, rel=0.02)
    assert top["GET", "/slow"]["latency_ms"]["p95"] == pytest.approx(800, rel=0.02)
    assert top["GET", "/limited"]["latency_ms"]["p95"] == pytest.approx(1, rel=0.02)


async def test_a_sink_without_history_serves_realtime_but_not_storage(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    clock = FakeClock()
    aegis = make_aegis(
        clock=clock, sink=f"jsonl:///{tmp_path}/records.jsonl", metrics_registry="none"
    )
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        await send_traffic(http, clock)
        await flush(aegis)
        assert (await get(http, "realtime"))["total_requests"] == TOTAL
        document = (await http.get(f"{API}/openapi.json")).json()
        assert document["openapi"] == "3.1.0"
        for endpoint in HISTORY:
            response = await http.get(f"{API}/{endpoint}")
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "history_unavailable"
        # Bad input is still bad input, with or without history.
        assert (await bad(http, f"{API}/overview?range=2h"))["parameter"] == "range"
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == TOTAL  # the API's requests were not written either


# -- bad input -----------------------------------------------------------------------

BAD = [
    ("overview", "range=2h", "range"),
    ("overview", "range=", "range"),
    ("latency", "range=1h&from=2023-11-14T21:00:00Z", "range"),
    ("request-rate", "from=2023-11-14T22:00:00Z&to=2023-11-14T21:00:00Z", "from"),
    ("status-distribution", "from=2023-11-14T22:00:00Z&to=2023-11-14T22:00:00Z", "from"),
    ("overview", "from=yesterday", "from"),
    ("overview", "from=2023-11-14T21:00:00Z&to=31/12/2023", "to"),
    ("overview", "from=2023-13-01T00:00:00Z", "from"),
    ("overview", "from=", "from"),
    ("overview", "to=2023-11-14T21:00:00Z", "from"),
    ("overview", "from=2020-01-01T00:00:00Z&to=2023-11-14T00:00:00Z", "to"),
    # Times the answer could not be written in: a 400, not a storage failure.
    ("overview", "from=0001-01-01T00:00:00%2B05:00&to=0001-01-02T00:00:00Z", "from"),
    ("overview", "from=9999-12-30T00:00:00Z&to=9999-12-31T23:59:59Z", "from"),
    ("requests", "until=9999-12-31T23:59:59Z", "until"),
    ("requests", "since=not-a-time", "since"),
    ("requests", "since=2023-11-14T22:00:00Z&until=2023-11-14T21:00:00Z", "since"),
    ("top-endpoints", "limit=0", "limit"),
    ("top-endpoints", "limit=1001", "limit"),
    ("top-endpoints", "limit=abc", "limit"),
    ("top-endpoints", "limit=", "limit"),
    ("requests", "limit=0", "limit"),
    ("requests", "limit=1001", "limit"),
    ("requests", "limit=1.5", "limit"),
    ("top-endpoints", "sort=latency", "sort"),
    ("top-endpoints", "sort=COUNT", "sort"),
    ("overview", "bogus=1", "bogus"),
    ("realtime", "range=1h", "range"),
    ("openapi.json", "x", "x"),
    ("requests", "sort=count", "sort"),
    ("overview", "range=1h&range=5m", "range"),
    ("requests", "status=200&status=404", "status"),
    ("requests", "status=600", "status"),
    ("requests", "status=099", "status"),
    ("requests", "status=6xx", "status"),
    ("requests", "status=5x", "status"),
    ("requests", "status=abc", "status"),
    ("requests", "status=%C2%B2%C2%B2%C2%B2", "status"),  # "²²²": digits to isdigit()
    ("requests", "method=FETCH", "method"),
    ("requests", "method=", "method"),
    ("requests", "offset=-1", "offset"),
    ("requests", "offset=1000001", "offset"),
    ("requests", "min_duration_ms=-1", "min_duration_ms"),
    ("requests", "min_duration_ms=nan", "min_duration_ms"),
    ("requests", "min_duration_ms=inf", "min_duration_ms"),
    ("requests", "min_duration_ms=fast", "min_duration_ms"),
    ("requests", "route=" + "r" * 1025, "route"),
    ("requests", "route=%FF", "route"),
    # A trace id is 32 lowercase hex digits, not all zeros (W3C Trace Context).
    ("requests", "trace_id=4BF92F3577B34DA6A3CE929D0E0E4736", "trace_id"),
    ("requests", "trace_id=4bf92f3577b34da6a3ce929d0e0e473", "trace_id"),
    ("requests", "trace_id=4bf92f3577b34da6a3ce929d0e0e47360", "trace_id"),
    ("requests", "trace_id=4bf92f3577b34da6a3ce929d0e0e473g", "trace_id"),
    ("requests", "trace_id=" + "0" * 32, "trace_id"),
    ("requests", "trace_id=", "trace_id"),
    ("requests", "trace_id=%204bf92f3577b34da6a3ce929d0e0e473", "trace_id"),
    ("requests", "trace_id=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "trace_id"),
    ("requests", "trace_id=" + "a" * 32 + "&trace_id=" + "b" * 32, "trace_id"),
    ("requests", "trace_id=%00" + "a" * 31, "trace_id"),
    ("overview", "trace_id=" + "a" * 32, "trace_id"),
    ("overview", "range=%C3%28", "range"),
    ("requests", "%FF=1", "query"),
    ("requests", "&".join(f"p{n}=1" for n in range(50)), "query"),
]


@pytest.mark.parametrize(("endpoint", "query", "parameter"), BAD)
async def test_bad_input_answers_400_naming_the_parameter(
    served: Served, endpoint: str, query: str, parameter: str
) -> None:
    error = await bad(served.http, f"{API}/{endpoint}?{query}")
    assert error["parameter"] == parameter
    unknown = parameter != "query" and parameter not in PARAMETERS[endpoint]
    assert error["code"] == ("unknown_parameter" if unknown else "invalid_parameter")


async def test_raw_non_ascii_query_bytes_are_read_as_utf8(make_aegis: Callable[..., Aegis]) -> None:
    """A server may pass the query string unescaped: its UTF-8 is decoded (not
    read as latin-1 mojibake), and bytes that are not UTF-8 are a 400."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = "/café"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    aegis = make_aegis(metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    await call(middleware, http_scope("/caf%C3%A9"))
    await flush(aegis)
    for query in ("route=/café".encode(), b"route=/caf%C3%A9"):
        found = await call(middleware, http_scope(f"{API}/requests", query_string=query))
        assert found.status == 200
        assert [r["route"] for r in json.loads(found.body)["data"]["requests"]] == ["/café"]
    refused = await call(middleware, http_scope(f"{API}/requests", query_string=b"route=\xff"))
    assert refused.status == 400
    assert json.loads(refused.body)["error"]["parameter"] == "route"


# -- methods, access, storage failure, switched off ------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_answer_405_with_allow(served: Served, method: str) -> None:
    response = await served.http.request(method, f"{API}/overview")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_head_answers_the_headers_only(served: Served) -> None:
    response = await served.http.head(f"{API}/overview")
    assert response.status_code == 200 and response.content == b""
    full = await served.http.get(f"{API}/overview")
    assert int(response.headers["content-length"]) == len(full.content)


async def test_a_token_guards_the_api(make_aegis: Callable[..., Aegis]) -> None:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, access={"api": {"tokens": [TOKEN]}}, metrics_registry="none")
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        await send_traffic(http, clock)
        clock.advance(5.0)
        await flush(aegis)
        for endpoint in ("overview", "requests", "realtime", "openapi.json"):
            refused = await http.get(f"{API}/{endpoint}")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
            wrong = await http.get(f"{API}/{endpoint}", headers={"authorization": "Bearer u"})
            assert wrong.status_code == 401
        # Refused before the parameters are even read.
        assert (await http.get(f"{API}/overview?range=2h")).status_code == 401
    async with client(app, authorization=f"Bearer {TOKEN}") as http:
        assert (await get(http, "overview"))["total"] == TOTAL
        assert len((await get(http, "requests"))["requests"]) == TOTAL
        assert (await bad(http, f"{API}/overview?range=2h"))["parameter"] == "range"
    # /metrics is in another group: the api token does not close it.
    async with client(app) as http:
        assert (await http.get("/metrics")).status_code == 200


class BrokenHistory(MemorySink):
    """Keeps history like memory:// but every read fails: rollups as an
    unreachable store does (an OSError), the request log with a fault of the
    read itself."""

    name = "broken"

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        raise OSError("database is locked")

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        raise RuntimeError("a bug in the read")


async def test_a_failing_read_answers_503_never_500(
    make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    """A read's own fault: 503 with its traceback logged once per burst, the
    store still read next time. An unreachable store: 503 with Retry-After, logged once without
    a traceback, and every read after it refused at once (the request log too)."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock, sink=BrokenHistory(), metrics_registry="none")
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        await send_traffic(http, clock)
        await flush(aegis)
        with caplog.at_level(logging.INFO, logger="aegis_mw"):
            for _ in range(2):
                faulty = await http.get(f"{API}/requests")
                assert faulty.status_code == 503
                assert faulty.json() == {
                    "error": {
                        "code": "storage_unavailable",
                        "message": "the history could not be read",
                    }
                }
                assert "retry-after" not in faulty.headers
            for endpoint in HISTORY:
                response = await http.get(f"{API}/{endpoint}")
                assert response.status_code == 503, endpoint
                assert response.json()["error"]["code"] == "storage_unavailable"
                assert response.headers["retry-after"] == "5"  # read_retry_after
        tracebacks = [r for r in caplog.records if r.exc_info is not None]
        assert [r.name for r in tracebacks] == ["aegis_mw.api"]  # once per burst
        outage = [r.getMessage() for r in caplog.records if r.name == "aegis_mw.history"]
        assert len(outage) == 1, outage
        assert "broken cannot be read (OSError: database is locked)" in outage[0]
        assert "database is locked" not in response.text  # no internals in the answer
        assert (await get(http, "realtime"))["total_requests"] == TOTAL
        assert (await bad(http, f"{API}/requests?limit=0"))["parameter"] == "limit"


async def test_an_empty_api_path_switches_the_api_off(make_aegis: Callable[..., Aegis]) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the app"})

    aegis = make_aegis(api_path="", metrics_registry="none")
    async with client(AegisMiddleware(app, aegis=aegis)) as http:
        response = await http.get(f"{API}/overview")
        assert (response.status_code, response.text) == (200, "the app")
        assert (await http.get(f"{API}/openapi.json")).text == "the app"
    assert seen == [f"{API}/overview", f"{API}/openapi.json"]
    await flush(aegis)
    assert [r.path for r in aegis.sinks[0].requests] == seen  # type: ignore[attr-defined]


async def test_the_api_moves_with_api_path(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(api_path="/internal/stats", metrics_registry="none")
    async with client(AegisMiddleware(starlette_app(FakeClock()), aegis=aegis)) as http:
        document = (await http.get("/internal/stats/openapi.json")).json()
        assert sorted(document["paths"]) == sorted(
            f"/internal/stats/{name}"
            for name in (
                *HISTORY, "realtime", "alerts", "alert-rules", "alert-channels", "alert-history",
                "silences", "custom-metrics", "custom-metric-history", "events", "incidents",
                "incident",
                "incident-timeline", "stats", "audit",
                "alert-rules/dry-run", "channel-test",
            )
        )  # fmt: skip
        assert (await http.get("/internal/stats/overview")).json()["data"]["total"] == 0
        assert (await http.get(f"{API}/overview")).status_code == 404  # now the app's path


async def test_the_served_document_describes_every_endpoint_and_parameter(
    served: Served,
) -> None:
    document = (await served.http.get(f"{API}/openapi.json")).json()
    described = {
        path.removeprefix(f"{API}/"): [p["name"] for p in item["get"]["parameters"]]
        for path, item in document["paths"].items()
        if "get" in item
    }
    assert described == {
        name: list(params) for name, params in PARAMETERS.items() if name != "openapi.json"
    }
    writes = {
        (path.removeprefix(f"{API}/"), method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "get"
    }
    assert writes == {(name, method) for name, methods in WRITES.items() for method in methods}

"""``GET {api_path}/requests?trace_id=...`` on every sink that keeps history
(memory, a SQLite file, the real PostgreSQL): one trace's requests and no
other, their ids in the answer, and a 400 naming the parameter for an id
that is not one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
import httpx
import pytest

from aegis_mw import Aegis, AegisMiddleware, Batch
from aegis_mw.core.record import RequestRecord
from aegis_mw.sinks import MemorySink, build_sink
from tests.sinks.test_sqlite import make_request

pytestmark = pytest.mark.anyio
API = "/api/metrics"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Answers 200, or the status its path ends with (``/boom/503``)."""
    if scope["type"] != "http":
        return
    status = int(scope["path"].rsplit("/", 1)[1]) if scope["path"].startswith("/boom/") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class Served:
    def __init__(self, aegis: Aegis, http: httpx.AsyncClient, url: str) -> None:
        self.aegis, self.http, self.url = aegis, http, url

    def write(self, batch: Batch) -> None:
        """Store ``batch`` as another process would: through a sink of its own
        on the same store (the pipeline's sink keeps its connection to the
        flusher's thread); into the pipeline's own memory sink."""
        sink = self.aegis.sinks[0]
        if isinstance(sink, MemorySink):
            sink.write(batch)
            return
        other = build_sink(self.url)
        try:
            other.write(batch)
        finally:
            other.close()

    async def requests(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.http.get(f"{API}/requests", params=params)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["data"]["requests"]
        return found


@pytest.fixture
async def served(make_aegis: Callable[..., Aegis], history_sink_url: str) -> AsyncIterator[Served]:
    # speedups=False: the records are built by the Python request path,
    # which reads the traceparent header (the compiled one is held to it by
    # its own differential tests).
    aegis = make_aegis(
        sink=history_sink_url, flush_interval=3600, metrics_registry="none", speedups=False
    )
    transport = httpx.ASGITransport(app=AegisMiddleware(app, aegis=aegis))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Served(aegis, http, history_sink_url)


def traceparent(trace: str, span: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace}-{span}-01"}


async def test_requests_sent_with_a_traceparent_are_found_by_their_trace(served: Served) -> None:
    """From the header to the stored record to the filter: the caller's
    trace and span, on requests of that trace only."""
    for number in range(3):
        response = await served.http.get(
            f"/in-trace/{number}", headers=traceparent(TRACE, f"{number + 1:016x}")
        )
        assert response.status_code == 200
    await served.http.get("/boom/503", headers=traceparent(OTHER, "00f067aa0ba902b7"))
    await served.http.get("/untraced")
    await served.http.get("/malformed", headers={"traceparent": f"00-{TRACE.upper()}-01-01"})
    assert await anyio.to_thread.run_sync(served.aegis.force_flush, 30.0)

    found = await served.requests(trace_id=TRACE)
    assert sorted(r["path"] for r in found) == ["/in-trace/0", "/in-trace/1", "/in-trace/2"]
    assert {r["trace_id"] for r in found} == {TRACE}
    assert sorted(r["span_id"] for r in found) == [f"{n:016x}" for n in (1, 2, 3)]
    assert [r["path"] for r in await served.requests(trace_id=OTHER, status="5xx")] == ["/boom/503"]
    assert await served.requests(trace_id=OTHER, status="2xx") == []
    everything = {r["path"]: r for r in await served.requests()}
    assert len(everything) == 6
    for path in ("/untraced", "/malformed"):
        assert (everything[path]["trace_id"], everything[path]["span_id"]) == (None, None)


async def test_stored_records_are_filtered_newest_first_and_paged(served: Served) -> None:
    """Records written straight to the store (not through the request path):
    the filter matches the id exactly, newest first, with limit and offset."""
    records = [
        make_request(n, trace_id=TRACE if n % 2 else OTHER, span_id=f"{n + 1:016x}")
        for n in range(80)
    ]
    records.append(make_request(80))  # untraced
    served.write(Batch(requests=records, batch_id="direct"))

    in_trace = sorted(
        (r for r in records if r.trace_id == TRACE),
        key=lambda r: (r.timestamp, r.request_id),
        reverse=True,
    )
    assert await served.requests(trace_id=TRACE, limit=1000) == [r.to_json() for r in in_trace]
    page = await served.requests(trace_id=TRACE, limit=5, offset=10)
    assert [r["request_id"] for r in page] == [r.request_id for r in in_trace[10:15]]
    assert await served.requests(trace_id="1" * 32) == []
    assert len(await served.requests(limit=1000)) == 81


@pytest.mark.parametrize(
    "value",
    [
        TRACE.upper(),
        TRACE[:-1],
        TRACE + "0",
        TRACE[:-1] + "z",
        "0" * 32,
        "",
        f"00-{TRACE}-00f067aa0ba902b7-01",
        f" {TRACE}",
    ],
)
async def test_a_value_that_is_no_trace_id_answers_400(served: Served, value: str) -> None:
    response = await served.http.get(f"{API}/requests", params={"trace_id": value})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid_parameter",
            "message": "trace_id must be 32 lowercase hex digits, not all zeros",
            "parameter": "trace_id",
        }
    }


async def test_the_document_describes_the_filter_and_the_fields(served: Served) -> None:
    document = (await served.http.get(f"{API}/openapi.json")).json()
    parameters = {p["name"]: p for p in document["paths"][f"{API}/requests"]["get"]["parameters"]}
    assert parameters["trace_id"]["schema"] == {
        "type": "string",
        "pattern": "^(?!0{32})[0-9a-f]{32}$",
    }
    answer = document["paths"][f"{API}/requests"]["get"]["responses"]["200"]
    text = str(answer)
    assert "'trace_id'" in text and "'span_id'" in text
    assert set(RequestRecord._fields) <= set(_record_schema(document)["required"])


def _record_schema(document: dict[str, Any]) -> dict[str, Any]:
    """The schema of one record of the request log's answer, wherever the
    document keeps it."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "request_id" in node.get("properties", {}):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document["paths"][f"{API}/requests"])
    assert found
    return found[0]

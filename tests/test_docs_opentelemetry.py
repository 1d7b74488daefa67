"""The "With OpenTelemetry" page's examples, run as written: OpenTelemetry's
own FastAPI and Flask instrumentation with the middleware, each record
carrying the id of the server span of its request, in the caller's trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from aegis_mw import Aegis
from aegis_mw.core.history import RequestQuery
from tests.test_docs_framework_examples import examples, here, run  # noqa: F401

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADERS = {"traceparent": f"00-{TRACE}-{PARENT}-01"}


def stored(aegis: Aegis) -> list[tuple[str, str | None, str | None]]:
    assert aegis.force_flush(10)
    sink: Any = aegis.sinks[0]
    return sorted((r.path, r.trace_id, r.span_id) for r in sink.read_requests(RequestQuery()))


def exporting() -> InMemorySpanExporter:
    """The spans the example's provider ends from now on (the page leaves the
    exporter to the reader)."""
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return spans


def check(rows: list[tuple[str, str | None, str | None]], spans: InMemorySpanExporter) -> None:
    """Each record carries its request's server span: the first joined the
    caller's trace (its traceparent), the second started one."""
    servers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(servers) == 2, servers
    joined, started = sorted(servers, key=lambda s: s.parent is None)
    assert f"{joined.context.trace_id:032x}" == TRACE
    assert rows == [
        ("/items/1", TRACE, f"{joined.context.span_id:016x}"),
        ("/items/2", f"{started.context.trace_id:032x}", f"{started.context.span_id:016x}"),
    ]


def test_the_examples_are_there() -> None:
    assert set(examples("opentelemetry.md")) == {"FastAPI", "Flask"}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_fastapi_example(here: Path, anyio_backend: str) -> None:  # noqa: F811
    import anyio.to_thread
    import httpx

    namespace = run(examples("opentelemetry.md")["FastAPI"])
    spans = exporting()
    aegis: Aegis = namespace["aegis"]
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/items/1", headers=HEADERS)).json() == {"item_id": 1}
        assert (await http.get("/items/2")).json() == {"item_id": 2}
    try:
        check(await anyio.to_thread.run_sync(stored, aegis), spans)
    finally:
        await anyio.to_thread.run_sync(aegis.shutdown, 10.0)


def test_the_flask_example(here: Path) -> None:  # noqa: F811
    namespace = run(examples("opentelemetry.md")["Flask"])
    spans = exporting()
    pipeline: Aegis = namespace["pipeline"]
    try:
        client = namespace["app"].test_client()
        assert client.get("/items/1", headers=HEADERS, buffered=True).get_json() == {"item_id": 1}
        assert client.get("/items/2", buffered=True).get_json() == {"item_id": 2}
        check(stored(pipeline), spans)
    finally:
        pipeline.shutdown()

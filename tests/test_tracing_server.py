"""``tracing`` in a real server: the FastAPI example under uvicorn with
``AEGIS_TRACING=true`` and the standard ``OTEL_*`` variables pointing at a
real OTLP/HTTP receiver on 127.0.0.1. A SIGTERM's lifespan shutdown exports
the spans; each names its route template, none is made for our routes, and
the stored request carries its span's ids."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.servers import child_environment, uvicorn_server
from tests.sinks.otlp_receiver import Receiver, attributes
from tests.tracing import OTEL_VARIABLES, exported_spans

pytestmark = pytest.mark.slow


def test_the_fastapi_example_traced_by_one_option(tmp_path: Path) -> None:
    receiver = Receiver().start()
    try:
        env = {k: v for k, v in child_environment().items() if k not in OTEL_VARIABLES}
        env.update(
            AEGIS_TRACING="true",
            OTEL_SERVICE_NAME="shop",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        )
        with uvicorn_server("examples.fastapi_app:app", tmp_path, env=env) as server:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                assert client.get("/items/3").status_code == 200
                assert client.get("/metrics").status_code == 200
                assert client.get("/health/live").status_code == 200
            assert server.terminate() in (0, -signal.SIGTERM), server.log.text
        spans = exported_spans(receiver)
    finally:
        receiver.stop()
    [(resource, span)] = spans
    assert (resource["service.name"], span.name) == ("shop", "GET /items/{item_id}")
    assert attributes(span.attributes)["http.route"] == "/items/{item_id}"
    with sqlite3.connect(tmp_path / "aegis.db") as db:
        rows = db.execute("SELECT path, trace_id, span_id FROM aegis_requests").fetchall()
    assert rows == [("/items/3", span.trace_id.hex(), span.span_id.hex())]

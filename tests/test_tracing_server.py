"""``tracing`` in a real server: the FastAPI example under uvicorn, and the
Flask example under gunicorn, with ``AEGIS_TRACING=true`` and the standard ``OTEL_*`` variables pointing at a
real OTLP/HTTP receiver on 127.0.0.1. A SIGTERM's lifespan shutdown exports
the spans; each names its route template, none is made for our routes, and
the stored request carries its span's ids."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.servers import (
    child_environment,
    free_port,
    gunicorn_command,
    gunicorn_process,
    uvicorn_server,
    wait_for,
)  # fmt: skip
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
            with connect(f"ws://127.0.0.1:{server.port}/ws/echo") as session:
                session.send("hello")
                assert session.recv(timeout=10) == "hello"
            assert server.terminate() in (0, -signal.SIGTERM), server.log.text
        spans = exported_spans(receiver)
    finally:
        receiver.stop()
    by_name = {span.name: span for _, span in spans}
    assert sorted(by_name) == ["GET /items/{item_id}", "WEBSOCKET /ws/echo"]
    assert {resource["service.name"] for resource, _ in spans} == {"shop"}
    span = by_name["GET /items/{item_id}"]
    assert attributes(span.attributes)["http.route"] == "/items/{item_id}"
    with sqlite3.connect(tmp_path / "aegis.db") as db:
        rows = db.execute("SELECT path, trace_id, span_id FROM aegis_requests").fetchall()
        sessions = db.execute(
            "SELECT path, trace_id, span_id FROM aegis_websocket_sessions"
        ).fetchall()
    assert rows == [("/items/3", span.trace_id.hex(), span.span_id.hex())]
    session_span = by_name["WEBSOCKET /ws/echo"]
    assert sessions == [("/ws/echo", session_span.trace_id.hex(), session_span.span_id.hex())]


def test_the_flask_example_traced_by_one_option_under_gunicorn(tmp_path: Path) -> None:
    """Two sync workers; each exports its spans as it exits (the pipeline's
    shutdown at exit), the failing view's as an error."""
    receiver = Receiver().start()
    try:
        env = {k: v for k, v in child_environment().items() if k not in OTEL_VARIABLES}
        env.update(
            AEGIS_TRACING="true", AEGIS_WS_PORT=str(free_port()), PYTHONUNBUFFERED="1",
            OTEL_SERVICE_NAME="shop",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        )  # fmt: skip
        command = gunicorn_command(2, "examples.flask_app:app", worker_class="sync")
        with gunicorn_process(command, tmp_path, env) as (process, lines, seen):
            deadline = time.monotonic() + 60
            [listening] = wait_for(
                lines, seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline
            )
            wait_for(lines, seen, r"Booting worker with pid: (\d+)", 2, deadline)
            base = f"http://127.0.0.1:{int(listening.group(1))}"
            with httpx.Client(base_url=base, timeout=10, headers={"connection": "close"}) as client:
                for number in range(4):
                    assert client.get(f"/api/items/{number}").status_code == 200
                assert client.get("/fail").status_code == 500
                assert client.get("/metrics").status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        spans = exported_spans(receiver)
    finally:
        receiver.stop()
    assert sorted(span.name for _, span in spans) == ["GET /api/items/{item_id}"] * 4 + [
        "GET /fail"
    ]
    assert {resource["service.name"] for resource, _ in spans} == {"shop"}
    [failed] = [span for _, span in spans if span.name == "GET /fail"]
    assert failed.status.code == 2  # STATUS_CODE_ERROR
    with sqlite3.connect(tmp_path / "aegis.db") as db:
        rows = db.execute("SELECT trace_id, span_id FROM aegis_requests").fetchall()
    assert sorted(rows) == sorted((span.trace_id.hex(), span.span_id.hex()) for _, span in spans)

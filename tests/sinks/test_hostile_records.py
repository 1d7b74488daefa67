"""Hostile requests stored by every sink, the same way: a NUL in a path, lone
surrogates, invalid UTF-8 from a raw scope, over-long values, float statuses, huge
numbers. Before, one ``GET /anything%00`` stopped PostgreSQL from storing anything
again (the batch was retried forever with that record first) and a lone surrogate
did the same to SQLite and JSONL. A sink that is down is still kept and retried."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware, Batch
from aegis_mw.core.items import PendingSession
from aegis_mw.testing import MemorySink
from tests.harness import Exchange, call, http_scope, inbox_item, websocket_scope

SINKS = ["memory", "sqlite", "postgresql", "jsonl", "callable"]
#: The fields every sink stores as text or numbers, read back per sink.
FIELDS = ("path", "route", "status", "error", "client_ip", "request_bytes", "response_bytes")
SESSION_FIELDS = ("path", "close_code", "accepted", "error")


class Stored:
    """A sink of one kind and how to read back what it stored, in id order."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.collected: list[Batch] = []
        self.memory = MemorySink()
        self.spec: Any
        if kind == "memory":
            self.spec = self.memory
        elif kind == "sqlite":
            self.file = tmp_path / "aegis.db"
            self.spec = f"sqlite:///{self.file}"
        elif kind == "postgresql":
            self.spec = request.getfixturevalue("postgres_url")
        elif kind == "jsonl":
            self.file = tmp_path / "records.jsonl"
            self.spec = f"jsonl:///{self.file}"
        else:
            self.spec = self.collected.append

    def rows(self, table: str, fields: tuple[str, ...]) -> list[tuple[Any, ...]]:
        key = "request_id" if table == "aegis_requests" else "session_id"
        if self.kind in ("sqlite", "postgresql"):
            sql = f"SELECT {', '.join(fields)} FROM {table} ORDER BY {key}"
            if self.kind == "sqlite":
                connection = sqlite3.connect(self.file)
                try:
                    found = connection.execute(sql).fetchall()
                finally:
                    connection.close()
                # SQLite has no boolean: accepted is 0 or 1.
                return [
                    tuple(
                        bool(v) if f == "accepted" else v for f, v in zip(fields, row, strict=True)
                    )
                    for row in found
                ]
            import psycopg

            with psycopg.connect(self.spec) as connection:
                return [tuple(row) for row in connection.execute(sql).fetchall()]
        if self.kind == "jsonl":
            kind = "request" if table == "aegis_requests" else "websocket"
            lines = [json.loads(line) for line in self.file.read_text("utf-8").splitlines()]
            chosen = sorted((d for d in lines if d["type"] == kind), key=lambda d: d[key])
            return [tuple(d[field] for field in fields) for d in chosen]
        if self.kind == "memory":
            records: list[Any] = (
                self.memory.requests if table == "aegis_requests" else self.memory.sessions
            )
        else:
            records = [
                record
                for batch in self.collected
                for record in (batch.requests if table == "aegis_requests" else batch.sessions)
            ]
        records.sort(key=lambda record: record[0])
        return [tuple(getattr(record, field) for field in fields) for record in records]


@pytest.fixture(params=SINKS)
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Stored:
    return Stored(str(request.param), tmp_path, request)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the status the path asks for; ``/raise`` raises a hostile message."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b""})
        return
    path = scope["path"]
    if path == "/raise":
        raise ValueError("no item '\x00\udce9'")
    status: Any = {"/float": 200.0, "/str": "200"}.get(path, 404)
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"x"})


def raw_scope(path: Any, raw_path: bytes = b"/", **extra: Any) -> dict[str, Any]:
    scope = http_scope("/", **extra)
    scope["path"], scope["raw_path"] = path, raw_path
    return scope


async def hostile_traffic(aegis: Aegis) -> None:
    wrapped = AegisMiddleware(app, aegis=aegis)
    for scope in (
        raw_scope("/anything\x00", b"/anything%00"),
        raw_scope("/caf\udce9", b"/caf%E9"),
        raw_scope(b"/caf\xe9\x00", b"/caf%E9%00"),
        raw_scope("/\ud800", b"/%ED%A0%80"),
        raw_scope("/" + "z" * 600),
        raw_scope("/float"),
        raw_scope("/str"),
        raw_scope("/client", client=("10.0.0.1\x00", 1)),
    ):
        await call(wrapped, scope)
    with pytest.raises(ValueError):
        await call(wrapped, raw_scope("/raise"))
    scope = websocket_scope("/")
    scope["path"] = "/chat\x00x"
    await wrapped(scope, Exchange([{"type": "websocket.connect"}]).receive, Exchange().send)
    # Integrations offering items the request path would never build.
    for index, value in ((3, 2**31), (8, 2**63), (6, math.nan)):
        item = inbox_item("/huge", start=aegis.clock.monotonic(), response_bytes=1)
        item[index] = value
        aegis.recorder.offer(item)
    now = aegis.clock.monotonic()
    aegis.recorder.offer(
        PendingSession(now, "/ws", "/ws/\udcff", now, 1, 1, 1000.0, True, None, None, "")
    )
    aegis.recorder.offer(
        PendingSession(now, "/ws", "/ws/huge", now, 1, 1, 2**40, True, None, None, "")
    )
    await call(wrapped, http_scope("/after"))


UNMATCHED = "<unmatched>"
EXPECTED_REQUESTS = [
    ("/anything%00", UNMATCHED, 404, "", "127.0.0.1", 0, 1),
    ("/caf%E9", UNMATCHED, 404, "", "127.0.0.1", 0, 1),
    ("/caf%E9%00", UNMATCHED, 404, "", "127.0.0.1", 0, 1),
    ("/%ED%A0%80", UNMATCHED, 404, "", "127.0.0.1", 0, 1),
    ("/" + "z" * 511, UNMATCHED, 404, "", "127.0.0.1", 0, 1),
    ("/float", UNMATCHED, 200, "", "127.0.0.1", 0, 1),
    ("/client", UNMATCHED, 404, "", "10.0.0.1\\x00", 0, 1),
    ("/raise", UNMATCHED, 500, "ValueError: no item '\\x00\\udce9'", "127.0.0.1", 0, 0),
    ("/huge", "/r", 200, "", None, 0, 2**40 - 1),  # a count beyond a terabyte, saturated
    ("/after", UNMATCHED, 404, "", "127.0.0.1", 0, 1),
]
EXPECTED_SESSIONS = [("/chat%00x", 1008, False, ""), ("/ws/%FF", 1000, True, "")]
#: "/str" (a str status), a huge status, a NaN time and a session with a 2**40 code.
INVALID = 4


def test_every_sink_stores_hostile_requests_the_same_way(
    stored: Stored, make_aegis: Callable[..., Aegis]
) -> None:
    aegis = make_aegis(sink=stored.spec, flush_interval=3600)

    asyncio.run(hostile_traffic(aegis))

    assert aegis.force_flush(30) is True
    stats = aegis.stats()
    [entry] = stats.sinks
    assert entry.written == len(EXPECTED_REQUESTS) + len(EXPECTED_SESSIONS)
    assert (entry.backlog, entry.errors, entry.dropped["rejected"]) == (0, 0, 0)
    assert stats.dropped["invalid"] == INVALID
    assert stored.rows("aegis_requests", FIELDS) == EXPECTED_REQUESTS
    assert stored.rows("aegis_websocket_sessions", SESSION_FIELDS) == EXPECTED_SESSIONS


def test_shutdown_after_a_nul_request_is_prompt_and_stores_everything(
    postgres_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    """Before, shutdown waited its whole timeout and dropped the queue."""
    aegis = make_aegis(sink=postgres_url, flush_interval=3600)

    async def traffic() -> None:
        wrapped = AegisMiddleware(app, aegis=aegis)
        await call(wrapped, raw_scope("/anything\x00", b"/anything%00"))
        for number in range(20):
            await call(wrapped, http_scope(f"/fine/{number}"))

    asyncio.run(traffic())

    assert aegis.shutdown(timeout=20) is True
    [entry] = aegis.stats().sinks
    assert (entry.written, entry.dropped["shutdown_timeout"]) == (21, 0)


def test_postgres_that_nobody_listens_on_is_an_outage_not_a_refusal(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Kept whole and retried once per flush with backoff: never split, never dropped."""
    from tests.servers import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    aegis = make_aegis(sink=url, flush_interval=3600)
    for number in range(30):
        aegis.recorder.offer(inbox_item(f"/kept/{number}", start=aegis.clock.monotonic()))

    for attempt in (1, 2):
        assert aegis.force_flush(30) is False
        [entry] = aegis.stats().sinks
        assert (entry.errors, entry.consecutive_failures, entry.backlog) == (attempt, attempt, 30)
        assert entry.dropped["rejected"] == 0
        assert entry.last_error.startswith("OperationalError")


@pytest.mark.slow
def test_a_scanner_under_uvicorn_does_not_stop_postgres_recording(
    postgres_url: str, tmp_path: Path
) -> None:
    """A real server: ``GET /anything%00`` and a refused WebSocket handshake to
    ``/chat%00x``, then normal traffic; SIGTERM's shutdown stores all of it."""
    import httpx
    import psycopg
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.servers import child_environment, uvicorn_server

    (tmp_path / "hostile_app.py").write_text(
        "import os\n"
        "from starlette.applications import Starlette\n"
        "from aegis_mw import AegisMiddleware\n"
        "app = Starlette()\n"
        "app.add_middleware(AegisMiddleware, sink=os.environ['HOSTILE_SINK'])\n"
    )
    env = child_environment(HOSTILE_SINK=postgres_url)
    with uvicorn_server("hostile_app:app", tmp_path, env=env) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/anything%00").status_code == 404
            with pytest.raises(InvalidStatus):
                connect(f"ws://127.0.0.1:{server.port}/chat%00x", open_timeout=10)
            for number in range(5):
                assert client.get(f"/after/{number}").status_code == 404
        code = server.terminate()
    assert code in (0, -signal.SIGTERM), server.log.text
    assert "could not be written" not in server.log.text

    with psycopg.connect(postgres_url) as connection:
        paths = [row[0] for row in connection.execute("SELECT path FROM aegis_requests")]
        sessions = [
            row[0] for row in connection.execute("SELECT path FROM aegis_websocket_sessions")
        ]
    assert sorted(paths) == [
        "/after/0",
        "/after/1",
        "/after/2",
        "/after/3",
        "/after/4",
        "/anything%00",
    ]
    assert sessions == ["/chat%00x"]

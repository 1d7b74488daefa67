"""No blocking call reaches the event loop from aegis_mw (checked with blockbuster).

blockbuster patches blocking functions (file and socket I/O, sqlite3,
contended lock acquisition, time.sleep, ...) to raise when called from a
running asyncio loop with aegis_mw code on the stack.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from blockbuster import BlockingError, blockbuster_ctx
from fastapi import FastAPI, WebSocket
from fastapi.responses import StreamingResponse

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.endpoints.api import MetricsAPI
from aegis_mw.health import disk_space, sink_health
from aegis_mw.realtime.protocol import SECTIONS
from tests.harness import Exchange, call, http_scope, websocket_scope

pytestmark = pytest.mark.usefixtures("hot_path")
MOUNTED = ("/metrics", "/health/ready", "/health/live", "/health")
#: Every JSON API endpoint; all but realtime and openapi.json read the sink.
API_READS = (
    "/api/metrics/overview?range=5m",
    "/api/metrics/request-rate",
    "/api/metrics/latency?range=24h",
    "/api/metrics/status-distribution?range=15m",
    "/api/metrics/top-endpoints?sort=p95&limit=5",
    "/api/metrics/requests?route=/items/{item_id}&status=2xx&limit=50&offset=10",
    "/api/metrics/realtime",
    "/api/metrics/openapi.json",
)


def build_app(aegis: Aegis) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("boom")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for _ in range(3):
                yield b"x" * 100

        return StreamingResponse(chunks())

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app.add_middleware(AegisMiddleware, aegis=aegis)
    return app


async def exercise(app: FastAPI, requests: int) -> None:
    lifespan = Exchange([{"type": "lifespan.startup"}])
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    served = asyncio.Event()

    async def server_side(message: dict[str, Any]) -> None:
        await lifespan.send(message)
        if message["type"] == "lifespan.startup.complete":
            for number in range(requests):
                await call(app, http_scope(f"/items/{number}"))
                if number % 500 == 0:  # scrapes, probes and API reads while the flusher works
                    for route in (*MOUNTED, *API_READS):
                        path, _, query = route.partition("?")
                        scope = http_scope(path, query_string=query.encode())
                        assert (await call(app, scope)).status == 200, route
            await call(app, http_scope("/stream"))
            with pytest.raises(RuntimeError):
                await call(app, http_scope("/fail"))
            socket = Exchange(
                [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}]
            )
            await app(websocket_scope("/ws"), socket.receive, socket.send)
            # The realtime stream: every section built, and a history read, off the loop.
            everything = {"type": "subscribe", "data": dict.fromkeys(SECTIONS, True)}
            history = {"type": "get", "data": {"section": "latencyPercentiles", "range": "24h"}}
            stream = Exchange(
                [
                    {"type": "websocket.connect"},
                    {"type": "websocket.receive", "text": json.dumps(everything)},
                    {"type": "websocket.receive", "text": json.dumps(history)},
                    {"type": "websocket.disconnect", "code": 1000},
                ]
            )
            await app(websocket_scope("/ws/metrics"), stream.receive, stream.send)
            kinds = {json.loads(m["text"])["type"] for m in stream.sent if "text" in m}
            assert kinds >= {"hello", "subscribed", "metrics", "result"}, stream.sent
            served.set()
            lifespan.push({"type": "lifespan.shutdown"})

    await app(scope, lifespan.receive, server_side)
    assert served.is_set()
    assert lifespan.sent[-1]["type"] == "lifespan.shutdown.complete"


def test_a_full_app_life_on_asyncio_makes_no_blocking_call(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Startup, 3,000 requests with flushes to SQLite on the way and /metrics and the
    health routes (sync checks included) between them, a stream, an error, a
    WebSocket, and the lifespan shutdown flush: nothing blocks the loop."""
    aegis = make_aegis(sink=f"sqlite:///{tmp_path}/aegis.db", batch_size=100, flush_interval=0.05)
    aegis.health.add(sink_health(aegis))  # a sync check: it must run in a thread
    aegis.health.add(disk_space(str(tmp_path)))
    app = build_app(aegis)
    with blockbuster_ctx(scanned_modules=["aegis_mw"]):
        asyncio.run(exercise(app, 3000))
    stats = aegis.stats()
    assert stats.sinks[0].written == 3000 + 2 + 1  # requests, stream, failure, the session
    assert sum(stats.dropped.values()) == 0


def test_the_detector_does_catch_aegis_blocking_the_loop(make_aegis: Callable[..., Aegis]) -> None:
    """Control: a blocking aegis call made on the loop (force_flush waits) is flagged."""
    aegis = make_aegis(flush_interval=3600, batch_size=1_000_000)
    app = build_app(aegis)

    async def misuse() -> None:
        await call(app, http_scope("/items/1"))
        aegis.force_flush()

    with blockbuster_ctx(scanned_modules=["aegis_mw"]), pytest.raises(BlockingError):
        asyncio.run(misuse())


def test_history_reads_from_sqlite_make_no_blocking_call(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The JSON API reads SQLite (rollups and the request log) in a worker thread:
    every endpoint answers from the stored history with blockbuster watching."""
    aegis = make_aegis(sink=f"sqlite:///{tmp_path}/aegis.db", flush_interval=3600)
    app = build_app(aegis)
    answers: dict[str, Any] = {}

    async def read() -> None:
        for number in range(40):
            await call(app, http_scope(f"/items/{number}"))
        # force_flush waits for the flusher thread: off the loop, as an app would.
        assert await asyncio.to_thread(aegis.force_flush, 10.0)
        for route in API_READS:
            path, _, query = route.partition("?")
            exchange = await call(app, http_scope(path, query_string=query.encode()))
            assert exchange.status == 200, (route, exchange.body)
            answers[path.rsplit("/", 1)[-1]] = json.loads(exchange.body)

    with blockbuster_ctx(scanned_modules=["aegis_mw"]):
        asyncio.run(read())
    assert answers["overview"]["data"]["total"] == 40
    assert sum(p["requests"] for p in answers["request-rate"]["data"]["points"]) == 40
    [top] = answers["top-endpoints"]["data"]["endpoints"]
    assert (top["route"], top["requests"]) == ("/items/{item_id}", 40)
    assert len(answers["requests"]["data"]["requests"]) == 30  # 40 matching, from the 11th


def test_the_detector_does_catch_a_history_read_on_the_loop(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Control: the same SQLite read made on the loop (not in a thread) is flagged."""
    aegis = make_aegis(sink=f"sqlite:///{tmp_path}/aegis.db", flush_interval=3600)
    aegis.force_flush()
    queries = MetricsAPI(aegis).queries
    assert queries is not None

    async def misuse() -> None:
        # The query itself, not respond(): respond() turns any failure into a 503.
        queries.overview("5m")

    with blockbuster_ctx(scanned_modules=["aegis_mw"]), pytest.raises(BlockingError):
        asyncio.run(misuse())


def test_reads_while_the_store_is_down_make_no_blocking_call(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The breaker's path (a failing read, the outage logged, reads refused at
    once, the lanes' busy answers) keeps off the loop too."""
    path = tmp_path / "aegis.db"
    path.write_bytes(b"not a database, " * 512)
    aegis = make_aegis(sink=f"sqlite:///{path}", flush_interval=3600)
    app = build_app(aegis)

    async def reads() -> list[int | None]:
        statuses: list[int | None] = []

        async def one(route: str) -> None:
            path, _, query = route.partition("?")
            statuses.append((await call(app, http_scope(path, query_string=query.encode()))).status)

        async with anyio.create_task_group() as group:
            for route in API_READS[:6] * 10:  # more than the store lane holds and queues
                group.start_soon(one, route)
        return statuses

    with blockbuster_ctx(scanned_modules=["aegis_mw"]):
        statuses = anyio.run(reads)
    assert statuses == [503] * 60

"""Lifespan passes through; its shutdown flushes; it may run more than once."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import MemorySink
from tests.harness import Exchange, call, http_scope

pytestmark = pytest.mark.anyio


async def run_lifespan(app: Any) -> list[dict[str, Any]]:
    """Play a server's lifespan protocol once; returns what the app sent."""
    exchange = Exchange([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    await app(
        {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
        exchange.receive,
        exchange.send,
    )
    return exchange.sent


def starlette_app(aegis: Aegis, events: list[str]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        events.append("startup")
        yield
        events.append("shutdown")

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/hello", hello)], lifespan=lifespan)
    app.add_middleware(AegisMiddleware, aegis=aegis)
    return app


async def test_lifespan_passes_through_and_shutdown_flushes(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The app's handlers run, the server gets the app's replies, and records are written at shutdown."""
    sink = MemorySink()
    aegis = make_aegis(sink=sink, flush_interval=3600, batch_size=1_000_000)
    events: list[str] = []
    app = starlette_app(aegis, events)
    exchange = Exchange([{"type": "lifespan.startup"}])
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}

    async def serve_requests_then_stop(message: dict[str, Any]) -> None:
        await exchange.send(message)
        if message["type"] == "lifespan.startup.complete":
            for _ in range(3):
                await call(app, http_scope("/hello"))
            # With a one-hour interval nothing has been written yet.
            assert sink.requests == []
            exchange.push({"type": "lifespan.shutdown"})

    await app(scope, exchange.receive, serve_requests_then_stop)
    assert [m["type"] for m in exchange.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert events == ["startup", "shutdown"]
    assert [r.route for r in sink.requests] == ["/hello"] * 3
    assert aegis.recorder.closed and not aegis.flusher.alive


async def test_a_second_lifespan_records_again(make_aegis: Callable[..., Aegis]) -> None:
    """Test clients run lifespan once per use; recording resumes after each startup."""
    sink = MemorySink()
    aegis = make_aegis(sink=sink)
    events: list[str] = []
    app = starlette_app(aegis, events)
    for round_number in range(2):
        sent = await run_lifespan(app)
        assert [m["type"] for m in sent][-1] == "lifespan.shutdown.complete"
        assert aegis.recorder.closed
        aegis.start()  # what the next lifespan.startup does
        await call(app, http_scope("/hello"))
        assert aegis.force_flush(5)
        assert len(sink.requests) == round_number + 1
    assert aegis.stats().dropped["shutdown"] == 0


async def test_an_app_without_lifespan_support_fails_as_it_would_bare(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The app's own lifespan error reaches the server unchanged (servers then skip lifespan)."""
    aegis = make_aegis()
    failure = AssertionError("http only")

    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise failure

    with pytest.raises(AssertionError) as caught:
        await run_lifespan(AegisMiddleware(http_only, aegis=aegis))
    assert caught.value is failure
    assert not aegis.recorder.closed


async def test_a_failed_shutdown_still_flushes(make_aegis: Callable[..., Aegis]) -> None:
    """lifespan.shutdown.failed also writes what is buffered before the server is told."""
    sink = MemorySink()
    aegis = make_aegis(sink=sink, flush_interval=3600, batch_size=1_000_000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        await call(wrapped, http_scope("/x"))
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.failed", "message": "db close failed"})

    wrapped = AegisMiddleware(app, aegis=aegis)
    sent = await run_lifespan(wrapped)
    assert sent[-1] == {"type": "lifespan.shutdown.failed", "message": "db close failed"}
    assert [r.status for r in sink.requests] == [204]

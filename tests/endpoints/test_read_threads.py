"""Monitoring reads run in threads of their own lanes, on asyncio and trio: with
the store hung, 60 API reads hold none of the server's default thread limiter
(the one an app's ``def`` endpoints run under), at most the store lane's few
threads, a bounded queue, and the rest are answered 503 ``busy`` at once;
``/metrics`` and the app's own thread work go through meanwhile."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.lowlevel import checkpoint

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.endpoints.reads import LANES, QUEUE_PER_THREAD, RENDER, STORE
from tests.endpoints.stores import HungStore
from tests.harness import Exchange, call, http_scope, websocket_scope

pytestmark = pytest.mark.anyio
READERS = 60


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


async def test_reads_of_a_hung_store_keep_to_their_lane(make_aegis: Callable[..., Aegis]) -> None:
    with closing(HungStore()) as store:
        aegis = make_aegis(
            sink=store.url,
            read_timeout=2.0,
            read_retry_after=30,
            flush_interval=3600,
            metrics_registry="none",
        )
        middleware = AegisMiddleware(app, aegis=aegis)
        default = anyio.to_thread.current_default_thread_limiter()
        lane = aegis.reads.threads.limiter(STORE)
        answers: list[Exchange] = []

        async def read() -> None:
            scope = http_scope("/api/metrics/overview", query_string=b"range=5m")
            answers.append(await call(middleware, scope))

        async with anyio.create_task_group() as group:
            for _ in range(READERS):
                group.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            # Every read is in: waiting on the store, queued, or answered.
            assert default.borrowed_tokens == 0
            assert lane.borrowed_tokens == LANES[STORE]
            queued = QUEUE_PER_THREAD * LANES[STORE]
            assert lane.statistics().tasks_waiting == queued
            assert len(answers) == READERS - LANES[STORE] - queued
            busy = [json.loads(a.body)["error"]["code"] for a in answers]
            assert busy == ["busy"] * len(answers)
            # The app's own work in a thread, and a scrape, do not wait for them.
            assert await anyio.to_thread.run_sync(lambda: "ran") == "ran"
            scrape = await call(middleware, http_scope("/metrics"))
            assert scrape.status == 200
            assert aegis.reads.threads.limiter(RENDER) is not lane
        assert len(answers) == READERS
        codes = {json.loads(a.body)["error"]["code"] for a in answers}
        assert codes == {"busy", "storage_unavailable"}
        assert {a.status for a in answers} == {503}
        for answer in answers:
            headers = dict(answer.sent[0]["headers"])
            assert int(headers[b"retry-after"]) >= 1


async def test_each_event_loop_gets_limiters_of_its_own(make_aegis: Callable[..., Aegis]) -> None:
    """A limiter belongs to one loop: another loop (a WSGI probe's) gets its own."""
    aegis = make_aegis()
    threads = aegis.reads.threads
    here = threads.limiter(STORE)
    await checkpoint()
    assert threads.limiter(STORE) is here

    async def elsewhere() -> int:
        return id(threads.limiter(STORE))

    other = await anyio.to_thread.run_sync(anyio.run, elsewhere)
    assert other != id(here)
    assert here.total_tokens == LANES[STORE]


async def test_the_streams_get_reads_through_the_same_lane_and_breaker(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """A ``get`` on /ws/metrics while the store cannot be read: an error naming it,
    at once the second time, and the socket stays open."""
    path = tmp_path / "aegis.db"
    path.write_bytes(b"not a database, " * 512)
    aegis = make_aegis(sink=f"sqlite:///{path}", flush_interval=3600, metrics_registry="none")
    get = json.dumps({"type": "get", "data": {"section": "overview", "range": "1h"}})
    inbound = [{"type": "websocket.connect"}]
    inbound += [{"type": "websocket.receive", "text": get}] * 2
    answered = anyio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if inbound:
            return inbound.pop(0)
        await answered.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        texts = [json.loads(m["text"]) for m in sent if "text" in m]
        if sum(t["type"] == "error" for t in texts) == 2:
            answered.set()

    with anyio.fail_after(20):
        await AegisMiddleware(app, aegis=aegis)(websocket_scope("/ws/metrics"), receive, send)
    errors = [json.loads(m["text"])["data"] for m in sent if '"error"' in m.get("text", "")]
    assert [e["code"] for e in errors] == ["storage_unavailable"] * 2
    assert aegis.reads.history is not None
    assert aegis.reads.history.breaker.state == "open"
    assert not [m for m in sent if m["type"] == "websocket.close"]

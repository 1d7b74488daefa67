"""HTTP requests through AegisMiddleware, message by message, on asyncio and trio.

Each test plays the server with ``tests.harness.Exchange`` and checks both
that the app sees and sends exactly what it would without the middleware,
and what the record says. Durations use a FakeClock the app advances, so
timings are exact without sleeping.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.core.outcome import INCOMPLETE_RESPONSE, NO_RESPONSE
from aegis_mw.testing import FakeClock, recorded
from tests.harness import Exchange, call, http_scope

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("hot_path")]

START_200 = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def test_one_record_with_the_public_schema(make_aegis: Callable[..., Aegis]) -> None:
    """A plain request gives one record carrying every schema field."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(0.004)
        await send(START_200)
        clock.advance(0.006)
        await send(body(b"hello"))

    exchange = await call(
        AegisMiddleware(app, aegis=aegis), http_scope("/things/7", query_string=b"secret=1")
    )
    assert exchange.status == 200 and exchange.body == b"hello"
    [record] = recorded(aegis)
    assert len(record.request_id) == 32 and int(record.request_id, 16) >= 0
    assert record.timestamp == pytest.approx(clock.wall() - 0.010)
    assert (record.method, record.route, record.path, record.status) == (
        "GET", "<unmatched>", "/things/7", 200,
    )  # fmt: skip
    assert record.duration_ms == pytest.approx(10.0)
    assert record.ttfb_ms == pytest.approx(4.0)
    assert (record.request_bytes, record.response_bytes) == (0, 5)
    assert (record.client_ip, record.error) == ("127.0.0.1", "")
    assert record.to_json()["timestamp"].endswith("Z")


async def test_messages_pass_through_unchanged(make_aegis: Callable[..., Aegis]) -> None:
    """The app receives the server's messages and the server gets the app's, untouched."""
    seen: list[dict[str, Any]] = []
    sent = [START_200, body(b"a", more=True), body(b"b")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())
        for message in sent:
            await send(message)

    inbound = [
        {"type": "http.request", "body": b"12", "more_body": True},
        {"type": "http.request", "body": b"345", "more_body": False},
    ]
    exchange = await call(
        AegisMiddleware(app, aegis=make_aegis()), http_scope(method="POST"), Exchange(inbound)
    )
    assert seen == inbound
    assert exchange.sent == sent


async def test_exact_counts_under_1000_concurrent_requests(
    make_aegis: Callable[..., Aegis],
) -> None:
    """1,000 requests in flight at once: in-flight peaks at 1,000, exactly 1,000 records."""
    aegis = make_aegis(batch_size=100)
    release = anyio.Event()
    arrived = 0
    all_in = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 1000:
            all_in.set()
        await release.wait()
        await send(START_200)
        await send(body(b"ok"))

    wrapped = AegisMiddleware(app, aegis=aegis)
    async with anyio.create_task_group() as group:
        for number in range(1000):
            group.start_soon(call, wrapped, http_scope(f"/n/{number}"))
        await all_in.wait()
        assert aegis.realtime().in_flight == 1000
        release.set()
    records = recorded(aegis)
    assert len(records) == 1000
    assert len({record.request_id for record in records}) == 1000
    assert {record.path for record in records} == {f"/n/{n}" for n in range(1000)}
    snapshot = aegis.realtime()
    assert (snapshot.in_flight, snapshot.total_requests) == (0, 1000)
    assert aegis.stats().offered == 1000


async def test_streaming_is_timed_to_the_last_chunk(make_aegis: Callable[..., Aegis]) -> None:
    """duration_ms runs to the final body message; ttfb_ms stops at the response start."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(0.002)
        await send(START_200)
        for _ in range(5):
            clock.advance(0.010)
            await send(body(b"chunk", more=True))
        clock.advance(0.010)
        await send(body(b"", more=False))
        clock.advance(5.0)  # work after the response (cleanup): not latency

    exchange = await call(AegisMiddleware(app, aegis=aegis), http_scope("/stream"))
    assert exchange.body == b"chunk" * 5
    [record] = recorded(aegis)
    assert record.ttfb_ms == pytest.approx(2.0)
    assert record.duration_ms == pytest.approx(62.0)
    assert record.response_bytes == 25


async def test_background_tasks_still_run_and_are_not_timed(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A Starlette background task runs to completion after the response; it adds no latency."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    clock = FakeClock()
    aegis = make_aegis(clock=clock)
    done: list[str] = []

    def later() -> None:
        clock.advance(3.0)
        done.append("ran")

    async def endpoint(request: Any) -> PlainTextResponse:
        clock.advance(0.020)
        return PlainTextResponse("ok", background=BackgroundTask(later))

    app = Starlette(routes=[Route("/job", endpoint)])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    exchange = await call(app, http_scope("/job"))
    assert exchange.body == b"ok" and done == ["ran"]
    [record] = recorded(aegis)
    assert record.route == "/job"
    assert record.duration_ms == pytest.approx(20.0)


async def test_exception_before_the_response_is_500_and_reraised_unchanged(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The very same exception object propagates; the record says 500 and names it."""
    aegis = make_aegis()
    failure = ValueError("bad input")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise failure

    with pytest.raises(ValueError, match="bad input") as caught:
        await call(AegisMiddleware(app, aegis=aegis), http_scope("/boom"))
    assert caught.value is failure
    [record] = recorded(aegis)
    assert (record.status, record.error, record.ttfb_ms) == (500, "ValueError: bad input", None)


async def test_exception_after_the_response_started_keeps_the_sent_status(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Status stays what was sent; the error is recorded; the exception propagates."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send(body(b"part", more=True))
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        await call(AegisMiddleware(app, aegis=aegis), http_scope("/partial"))
    [record] = recorded(aegis)
    assert (record.status, record.error, record.response_bytes) == (
        201,
        "RuntimeError: mid-stream",
        4,
    )


async def test_exception_after_the_response_completed(make_aegis: Callable[..., Aegis]) -> None:
    """An error after the last byte (say, in cleanup) keeps status and timing, adds the error."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        clock.advance(0.001)
        await send(body(b"done"))
        clock.advance(1.0)
        raise KeyError("cleanup")

    with pytest.raises(KeyError):
        await call(AegisMiddleware(app, aegis=aegis), http_scope("/x"))
    [record] = recorded(aegis)
    assert (record.status, record.error) == (200, "KeyError: 'cleanup'")
    assert record.duration_ms == pytest.approx(1.0)


async def test_client_disconnect_first_is_499(make_aegis: Callable[..., Aegis]) -> None:
    """The app sees http.disconnect and stops: status 499, no error."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    exchange = Exchange(
        [{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}]
    )
    await call(AegisMiddleware(app, aegis=aegis), http_scope("/upload", method="POST"), exchange)
    [record] = recorded(aegis)
    assert (record.status, record.error, record.request_bytes) == (499, "", 3)


@pytest.mark.parametrize("error", [ConnectionResetError("reset"), BrokenPipeError("pipe")])
async def test_send_failing_because_the_client_left_is_499(
    make_aegis: Callable[..., Aegis], error: OSError
) -> None:
    """A connection error from the server's send is the client leaving, not an app error."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b"x", more=True))

    async def broken_send(message: Any) -> None:
        if message["type"] == "http.response.body":
            raise error

    with pytest.raises(type(error)):
        await AegisMiddleware(app, aegis=aegis)(http_scope("/s"), Exchange().receive, broken_send)
    [record] = recorded(aegis)
    assert (record.status, record.error) == (499, "")


async def test_framework_client_disconnect_exception_is_499(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Starlette's ClientDisconnect means the client left: 499, not 500."""
    from starlette.requests import ClientDisconnect

    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ClientDisconnect()

    with pytest.raises(ClientDisconnect):
        await call(AegisMiddleware(app, aegis=aegis), http_scope("/d"))
    [record] = recorded(aegis)
    assert (record.status, record.error) == (499, "")


async def test_cancellation_propagates_and_is_recorded(make_aegis: Callable[..., Aegis]) -> None:
    """Cancelling the request task is never swallowed; the request is recorded as 499."""
    aegis = make_aegis()
    entered = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await anyio.sleep_forever()

    wrapped = AegisMiddleware(app, aegis=aegis)
    async with anyio.create_task_group() as group:
        group.start_soon(call, wrapped, http_scope("/slow"))
        await entered.wait()
        group.cancel_scope.cancel()
    [record] = recorded(aegis)
    assert record.status == 499
    assert aegis.realtime().in_flight == 0


async def test_app_returning_without_a_response_is_500(make_aegis: Callable[..., Aegis]) -> None:
    """No response at all is a server error, said so in the record."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    await call(AegisMiddleware(app, aegis=aegis), http_scope("/nothing"))
    [record] = recorded(aegis)
    assert (record.status, record.error) == (500, NO_RESPONSE)


async def test_app_returning_mid_body_is_flagged(make_aegis: Callable[..., Aegis]) -> None:
    """Returning with more_body still pending keeps the status and flags the request."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b"half", more=True))

    await call(AegisMiddleware(app, aegis=aegis), http_scope("/half"))
    [record] = recorded(aegis)
    assert (record.status, record.error) == (200, INCOMPLETE_RESPONSE)


async def test_head_request(make_aegis: Callable[..., Aegis]) -> None:
    """A HEAD answer passes through as the app sent it (the server drops the body);
    the record counts the 0 bytes the client gets."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    aegis = make_aegis()

    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse("twelve bytes")

    app = Starlette(routes=[Route("/page", page)])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    exchange = await call(app, http_scope("/page", method="HEAD"))
    assert exchange.status == 200 and exchange.body == b"twelve bytes"
    assert (b"content-length", b"12") in exchange.sent[0]["headers"]
    [record] = recorded(aegis)
    assert (record.method, record.route, record.response_bytes) == ("HEAD", "/page", 0)


async def test_pathsend_and_zerocopysend_complete_the_response(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Server extensions that send files end the response and count bytes where known."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock)

    async def pathsend_app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        clock.advance(0.003)
        await send({"type": "http.response.pathsend", "path": "/dev/null"})
        clock.advance(1.0)

    async def zerocopy_app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(
            {"type": "http.response.zerocopysend", "file": 0, "count": 10, "more_body": True}
        )
        clock.advance(0.004)
        await send({"type": "http.response.zerocopysend", "file": 0, "count": 5})
        clock.advance(1.0)

    await call(AegisMiddleware(pathsend_app, aegis=aegis), http_scope("/file"))
    await call(AegisMiddleware(zerocopy_app, aegis=aegis), http_scope("/zero"))
    by_path = {record.path: record for record in recorded(aegis)}
    assert by_path["/file"].duration_ms == pytest.approx(3.0)
    assert (by_path["/zero"].duration_ms, by_path["/zero"].response_bytes) == (
        pytest.approx(4.0),
        15,
    )


async def test_unknown_methods_fold_and_long_paths_are_cut(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Methods outside the standard set become _OTHER; paths are truncated to max_path_length."""
    aegis = make_aegis(max_path_length=64)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b""))

    wrapped = AegisMiddleware(app, aegis=aegis)
    await call(wrapped, http_scope("/coffee", method="BREW"))
    await call(wrapped, http_scope("/" + "a" * 5000))
    await call(wrapped, http_scope("/ok", method="PATCH"))
    records = recorded(aegis)
    assert [record.method for record in records] == ["_OTHER", "GET", "PATCH"]
    assert records[1].path == "/" + "a" * 63


async def test_contextvars_behave_as_without_the_middleware(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Values set around the app are visible inside it, and values the app sets
    are visible to the caller afterwards, exactly as with no middleware."""
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(variable.get())
        variable.set("set by app")
        await send(START_200)
        await send(body(b""))

    async def run(target: Any) -> str:
        variable.set("set by server")
        await call(target, http_scope("/ctx"))
        return variable.get()

    bare_after = await run(app)
    wrapped_after = await run(AegisMiddleware(app, aegis=make_aegis()))
    assert seen == ["set by server", "set by server"]
    assert wrapped_after == bare_after == "set by app"


async def test_the_app_and_server_see_one_scope_and_a_stable_receive(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The scope object is passed on as is (routers write into it)."""
    received_scope: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received_scope.append(scope)
        await send(START_200)
        await send(body(b""))

    scope = http_scope("/same")
    await call(AegisMiddleware(app, aegis=make_aegis()), scope)
    assert received_scope == [scope] and received_scope[0] is scope


async def test_ten_thousand_unmatched_paths_stay_bounded(make_aegis: Callable[..., Aegis]) -> None:
    """Distinct unmatched paths all share one route value; nothing grows with them."""
    from fastapi import FastAPI

    aegis = make_aegis(batch_size=1000)
    app = FastAPI()

    @app.get("/known/{thing}")
    async def known(thing: str) -> dict[str, str]:
        return {"thing": thing}

    app.add_middleware(AegisMiddleware, aegis=aegis)
    for number in range(10_000):
        await call(app, http_scope(f"/random/{number}/{number * 7}"))
    records = recorded(aegis)
    assert len(records) == 10_000
    assert {record.route for record in records} == {"<unmatched>"}
    assert {record.status for record in records} == {404}
    assert aegis.finalizer.routes.known == {"<unmatched>"}
    assert len(aegis.aggregates.ring) == 128


async def test_route_cap_folds_overflow_and_counts_it(make_aegis: Callable[..., Aegis]) -> None:
    """Past max_routes distinct templates, new ones become <overflow>, counted exactly."""
    aegis = make_aegis(max_routes=10)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = f"/template/{scope['path']}"  # a framework naming every path apart
        await send(START_200)
        await send(body(b""))

    wrapped = AegisMiddleware(app, aegis=aegis)
    for number in range(25):
        await call(wrapped, http_scope(f"/{number}"))
    routes = [record.route for record in recorded(aegis)]
    assert routes[:10] == [f"/template//{n}" for n in range(10)]
    assert routes[10:] == ["<overflow>"] * 15
    assert aegis.stats().route_overflow == 15


async def test_request_body_bytes_are_counted_as_they_pass(
    make_aegis: Callable[..., Aegis],
) -> None:
    """request_bytes sums the body chunks the app actually read; bodies are not buffered."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    aegis = make_aegis()

    async def upload(request: Any) -> JSONResponse:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"size": size})

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    chunks = [b"a" * 1000, b"b" * 2000, b"c" * 500]
    inbound = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    inbound.append({"type": "http.request", "body": b"", "more_body": False})
    exchange = await call(app, http_scope("/upload", method="POST"), Exchange(inbound))
    assert exchange.body == b'{"size":3500}'
    [record] = recorded(aegis)
    assert (record.route, record.request_bytes, record.response_bytes) == ("/upload", 3500, 13)


async def test_failing_to_deliver_the_last_body_message_is_499(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The end is stamped as the last message goes to the server; if the server then
    fails to deliver it (the client left), the request is 499, not a completed 200."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b"the end"))

    async def send_fails_at_the_end(message: Any) -> None:
        if message["type"] == "http.response.body":
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await AegisMiddleware(app, aegis=aegis)(
            http_scope("/last"), Exchange().receive, send_fails_at_the_end
        )
    [record] = recorded(aegis)
    assert (record.status, record.error) == (499, "")

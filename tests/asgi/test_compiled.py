"""The compiled HTTP request path (``_hotpath_c/``) against the pure-Python one.

The Python path is the reference: every scenario below runs through both and
must give the same messages to the server, the same exception to the caller,
the same records and the same realtime figures. Then what only the compiled
path has: its inbox item type, its clock, how it forwards ``send``, ``throw``
and ``close`` to the app's coroutine, and that it keeps no memory per request.
"""

from __future__ import annotations

import gc
import inspect
import sys
import threading
import time
import tracemalloc
import warnings
import weakref
from collections import UserDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.core import aggregates
from aegis_mw.core.items import END, ERROR, START, TTFB
from aegis_mw.core.outcome import NO_RESPONSE
from aegis_mw.speedups import load as load_compiled
from aegis_mw.testing import FakeClock, recorded
from tests.conftest import compiled_module
from tests.core.faulty_sinks import frozen
from tests.harness import Exchange, call, http_scope

RING = aggregates.__file__
START_200 = {"type": "http.response.start", "status": 200, "headers": []}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def zerocopy(count: Any, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.zerocopysend", "file": 3, "count": count, "more_body": more}


# -- one scenario, two paths -------------------------------------------------


@dataclass
class Scenario:
    """An app (given the fake clock), the request, and what the server does."""

    app: Callable[[FakeClock], Any]
    path: str = "/things/1"
    method: str = "GET"
    inbound: list[dict[str, Any]] = field(
        default_factory=lambda: [{"type": "http.request", "body": b""}]
    )
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    client: tuple[str, int] | None = ("127.0.0.1", 50000)
    send_fails: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    mapping_scope: bool = False  # a Mapping that is not a dict
    clock_fails_at: int | None = None  # the n-th clock reading raises
    records: int = 1  # how many the reference records


class FailingClock(FakeClock):
    """A FakeClock whose n-th monotonic reading raises (once)."""

    def __init__(self, fails_at: int) -> None:
        super().__init__()
        self.readings = 0
        self.fails_at = fails_at

    def monotonic(self) -> float:
        self.readings += 1
        if self.readings == self.fails_at:
            raise RuntimeError("the clock failed")
        return super().monotonic()


def _ok(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(0.002)
        await send(START_200)
        clock.advance(0.003)
        await send(body(b"hello"))

    return app


def _stream(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        for chunk in (b"a", b"bb", b"ccc"):
            clock.advance(0.01)
            await send(body(chunk, more=True))
        await send(body(b""))

    return app


def _raise_before(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(0.001)
        raise ValueError("before the response")

    return app


def _raise_after_start(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        clock.advance(0.001)
        raise KeyError("mid-body")

    return app


def _raise_after_end(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b"done"))
        clock.advance(0.004)
        raise RuntimeError("after the last byte")

    return app


def _disconnect_first(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        clock.advance(0.002)

    return app


def _send_to_a_gone_client(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b"lost"))

    return app


def _no_response(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.advance(0.001)

    return app


def _mid_body(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b"half", more=True))

    return app


def _file_messages(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        if scope["path"] == "/pathsend":
            await send({"type": "http.response.pathsend", "path": "/etc/hostname"})
            return
        await send(
            {"type": "http.response.zerocopysend", "file": 3, "count": 10, "more_body": True}
        )
        clock.advance(0.002)
        await send({"type": "http.response.zerocopysend", "file": 3, "count": 5})

    return app


def _read_body(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({**START_200, "status": HTTPStatus.CREATED})
        await send(body(b"{}"))

    return app


def _template_in_scope(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = "/things/{thing_id}"
        await send(START_200)
        await send(body(b"ok"))

    return app


def _not_awaitable(clock: FakeClock) -> Any:
    def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    return app


def _raises_when_called(clock: FakeClock) -> Any:
    def app(scope: Any, receive: Any, send: Any) -> None:
        raise LookupError("raised by the call itself")

    return app


def _sends(*messages: Any, keyword: bool = False) -> Callable[[FakeClock], Any]:
    """An app that sends these messages (as send(message=...) when keyword)."""

    def make(clock: FakeClock) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            for message in messages:
                clock.advance(0.001)
                await (send(message=message) if keyword else send(message))

        return app

    return make


class OddBody:
    """A body that is not bytes and empties the message when its truth is asked."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message

    def __bool__(self) -> bool:
        self.message.pop("body", None)
        return True

    def __len__(self) -> int:
        return 30


class Unanswerable:
    def __bool__(self) -> bool:
        raise ValueError("no truth here")


def _odd_body(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        message: dict[str, Any] = {"type": "http.response.body"}
        message["body"] = OddBody(message)
        await send(message)

    return app


def _receive_with_arguments(clock: FakeClock) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive("unexpected")

    return app


def _returns_a_bare_iterator(clock: FakeClock) -> Any:
    class Awaitable:
        def __await__(self) -> Any:
            return 42

    def app(scope: Any, receive: Any, send: Any) -> Any:
        return Awaitable()

    return app


SCENARIOS = {
    "ok": Scenario(_ok),
    "stream": Scenario(_stream),
    "raise-before": Scenario(_raise_before),
    "raise-after-start": Scenario(_raise_after_start),
    "raise-after-end": Scenario(_raise_after_end),
    "disconnect-first": Scenario(_disconnect_first, inbound=[{"type": "http.disconnect"}]),
    "send-to-a-gone-client": Scenario(_send_to_a_gone_client, send_fails=True),
    "no-response": Scenario(_no_response),
    "mid-body": Scenario(_mid_body),
    "head": Scenario(_ok, method="HEAD"),
    "unknown-method-long-path": Scenario(_ok, method="BREW", path="/" + "x" * 700),
    "pathsend": Scenario(_file_messages, path="/pathsend"),
    "zerocopysend": Scenario(_file_messages, path="/zerocopy"),
    "request-body": Scenario(
        _read_body,
        method="POST",
        inbound=[
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.request", "body": b"defgh", "more_body": False},
        ],
    ),
    "template-in-scope": Scenario(_template_in_scope),
    "excluded": Scenario(
        _ok, path="/static/app.css", options={"exclude_paths": ["/static/*"]}, records=0
    ),
    "trusted-proxy": Scenario(
        _ok,
        headers=[(b"x-forwarded-for", b"203.0.113.9, 10.0.0.2")],
        client=("10.0.0.1", 443),
        options={"trusted_proxies": ["10.0.0.0/8"]},
    ),
    "no-client": Scenario(_ok, client=None),
    "not-awaitable": Scenario(_not_awaitable),
    "raises-when-called": Scenario(_raises_when_called),
    "await-returns-a-non-iterator": Scenario(_returns_a_bare_iterator),
    "message-without-type": Scenario(_sends({})),
    "start-without-status": Scenario(_sends({"type": "http.response.start"}, body(b"x"))),
    "mapping-messages": Scenario(
        _sends(MappingProxyType(START_200), MappingProxyType(body(b"abc")))
    ),
    "keyword-messages": Scenario(_sends(START_200, body(b"abc"), keyword=True)),
    "bytearray-body": Scenario(_sends(START_200, body(bytearray(b"abcd")))),  # type: ignore[arg-type]
    "int-body": Scenario(_sends(START_200, {"type": "http.response.body", "body": 123})),
    "more-body-without-truth": Scenario(
        _sends(START_200, {"type": "http.response.body", "body": b"x", "more_body": Unanswerable()})
    ),
    "more-body-as-int": Scenario(
        _sends(START_200, {"type": "http.response.body", "body": b"x", "more_body": 0})
    ),
    "negative-zerocopy-count": Scenario(
        _sends(START_200, {"type": "http.response.zerocopysend", "file": 3, "count": -4})
    ),
    # Counts a 64-bit integer cannot hold, or that are not ints: forwarded and added
    # up as Python adds them, never an error raised in the app's send.
    "zerocopy-count-past-64-bits": Scenario(
        _sends(START_200, {"type": "http.response.zerocopysend", "file": 3, "count": 2**63})
    ),
    "zerocopy-count-past-64-bits-then-a-body": Scenario(
        _sends(
            START_200,
            {"type": "http.response.zerocopysend", "file": 3, "count": 2**64 + 5, "more_body": 1},
            body(b"tail"),
        )
    ),
    # (The flusher sets a record with a float count aside as invalid, on both paths.)
    "zerocopy-count-float": Scenario(
        _sends(START_200, {"type": "http.response.zerocopysend", "file": 3, "count": 2.5}),
        records=0,
    ),
    "body-adds-past-64-bits": Scenario(
        _sends(
            START_200,
            zerocopy(2**63 - 2, more=True),
            body(b"abc", more=True),
            zerocopy(2**63 - 1, more=True),
            body(b""),
        )
    ),
    "zerocopy-counts-add-past-64-bits": Scenario(
        _sends(START_200, zerocopy(2**63 - 1, more=True), zerocopy(2**63 - 1))
    ),
    "odd-body-object": Scenario(_odd_body),
    "receive-with-arguments": Scenario(_receive_with_arguments),
    "mapping-scope": Scenario(_template_in_scope, mapping_scope=True),
    "clock-fails-at-start": Scenario(_ok, clock_fails_at=1, records=0),
    "clock-fails-at-ttfb": Scenario(_ok, clock_fails_at=2),
    "clock-fails-at-end": Scenario(_ok, clock_fails_at=3),
}


async def _outcome(scenario: Scenario, make_aegis: Callable[..., Aegis], speedups: bool) -> Any:
    clock = (
        FakeClock() if scenario.clock_fails_at is None else FailingClock(scenario.clock_fails_at)
    )
    aegis = make_aegis(clock=clock, speedups=speedups, **scenario.options)
    middleware = AegisMiddleware(scenario.app(clock), aegis=aegis)
    assert middleware.compiled is speedups
    exchange = Exchange(scenario.inbound)

    async def send(message: dict[str, Any]) -> None:
        if scenario.send_fails and message["type"] == "http.response.body":
            raise ConnectionResetError("client went away")
        await exchange.send(message)

    scope: Any = http_scope(
        scenario.path, method=scenario.method, headers=scenario.headers, client=scenario.client
    )
    if scenario.mapping_scope:
        scope = UserDict(scope)
    raised = None
    try:
        await middleware(scope, exchange.receive, send)
    except Exception as exc:
        raised = (type(exc), str(exc))
    records = [record._replace(request_id="") for record in recorded(aegis)]
    return exchange.sent, raised, records, aegis.realtime(), aegis.stats().dropped


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_both_paths_record_the_same(name: str, make_aegis: Callable[..., Aegis]) -> None:
    """Same messages to the server, same exception, same records, same realtime figures."""
    compiled_module()
    scenario = SCENARIOS[name]
    python = await _outcome(scenario, make_aegis, speedups=False)
    fast = await _outcome(scenario, make_aegis, speedups=True)
    assert fast == python
    _sent, _raised, records, _realtime, _dropped = python
    assert len(records) == scenario.records


# -- the path is chosen as configured ------------------------------------------


async def _empty_app(scope: Any, receive: Any, send: Any) -> None:
    await send(START_200)
    await send(body(b""))


def test_the_fixture_chooses_the_path(make_aegis: Callable[..., Aegis], hot_path: str) -> None:
    middleware = AegisMiddleware(_empty_app, aegis=make_aegis())
    assert middleware.compiled is (hot_path == "compiled")


def test_speedups_off_takes_the_python_path(make_aegis: Callable[..., Aegis]) -> None:
    assert AegisMiddleware(_empty_app, aegis=make_aegis(speedups=False)).compiled is False
    environ = {"AEGIS_SPEEDUPS": "off"}
    aegis = make_aegis(environ=environ)
    assert AegisMiddleware(_empty_app, aegis=aegis).compiled is False


def test_speedups_on_takes_the_compiled_path_where_built(make_aegis: Callable[..., Aegis]) -> None:
    compiled_module()
    assert AegisMiddleware(_empty_app, aegis=make_aegis()).compiled is True


# -- the compiled inbox item -------------------------------------------------------


@pytest.mark.anyio
async def test_compiled_items_index_like_lists_and_cost_the_collector_nothing(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The item is read and written by index as the flusher and the slow paths do;
    the garbage collector does not track it, so a full inbox costs it nothing."""
    compiled_module()
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600)
    await call(AegisMiddleware(_ok(clock), aegis=aegis), http_scope("/item"))
    [item] = list(aegis.recorder.inbox)
    assert type(item).__name__ == "HttpItem"
    assert not gc.is_tracked(item)
    assert len(item) == 14
    (method, route, path, status, start, ttfb, end, request_bytes, response_bytes,
     client, forwarded, error, disconnected, trace) = item  # fmt: skip
    assert (method, route, path, status) == ("GET", "<unmatched>", "/item", 200)
    assert (ttfb - start, end - start) == (pytest.approx(0.002), pytest.approx(0.005))
    assert (request_bytes, response_bytes, client, forwarded, error, disconnected, trace) == (
        0, 5, ("127.0.0.1", 50000), None, "", False, None,
    )  # fmt: skip
    assert item[-2] is False and item[-1] is None and item[-14] == "GET"
    assert repr(item).startswith("HttpItem(['GET', '<unmatched>', '/item', 200, ")

    item[ERROR] = "TimeoutError: slow"
    item[TTFB] = None
    item[END] = 7
    assert (item[ERROR], item[TTFB], item[END]) == ("TimeoutError: slow", None, 7.0)
    with pytest.raises(TypeError):
        item[START] = "soon"
    with pytest.raises(TypeError):
        item[START] = None
    with pytest.raises(TypeError):
        del item[0]
    with pytest.raises(IndexError):
        item[14]
    with pytest.raises(IndexError):
        item[14] = 1
    # Byte counts hold what a list holds: past 64 bits, or not an int.
    item[7] = 1.5
    item[8] = 2**70
    assert (item[7], item[8]) == (1.5, 2**70)
    assert not gc.is_tracked(item)
    item[7] = [0]
    assert gc.is_tracked(item)  # it may now be part of a cycle
    item[7], item[8] = 3, 5
    assert (item[7], item[8]) == (3, 5)
    assert aegis.force_flush() is True
    assert [r.error for r in recorded(aegis)] == ["TimeoutError: slow"]


def test_the_compiled_clock_is_perf_counter() -> None:
    """With the default clock the compiled path reads CLOCK_MONOTONIC itself: the
    same clock, units and rounding as time.perf_counter (which the flusher reads)."""
    module = compiled_module()
    if not module.NATIVE_MONOTONIC:
        pytest.skip("no native clock on this platform: the Python clock is called")
    for _ in range(1000):
        before = time.perf_counter()
        reading = module.monotonic()
        after = time.perf_counter()
        assert before <= reading <= after


# -- what the app is given ------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_receive_gives_a_real_coroutine(make_aegis: Callable[..., Aegis]) -> None:
    """Frameworks that check for a coroutine (trio's start_soon, asyncio.create_task)
    accept what the app's receive() returns; send() returns the server's own awaitable."""
    seen: list[Any] = []
    aegis = make_aegis()
    exchange = Exchange()
    server_awaitables: list[Any] = []

    async def server_send(message: dict[str, Any]) -> None:
        await exchange.send(message)

    def send_recording(message: dict[str, Any]) -> Any:
        awaitable = server_send(message)
        server_awaitables.append(awaitable)
        return awaitable

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pending = receive()
        seen.append(inspect.iscoroutine(pending))
        seen.append(await pending)
        returned = send(START_200)
        seen.append(returned is server_awaitables[-1])
        await returned
        await send(body(b""))

    await AegisMiddleware(app, aegis=aegis)(http_scope("/"), exchange.receive, send_recording)
    assert seen == [True, {"type": "http.request", "body": b""}, True]


# -- send, throw and close reach the app's coroutine ------------------------------


class Suspend:
    """Suspends the coroutine that awaits it; resumes with whatever is sent in."""

    def __await__(self) -> Generator[str, Any, Any]:
        return (yield "suspended")


def _drive_to_suspension(middleware: AegisMiddleware) -> Any:
    exchange = Exchange()
    coroutine = middleware(http_scope("/held"), exchange.receive, exchange.send)
    assert coroutine.send(None) == "suspended"
    return coroutine, exchange


def _held_app(sent_back: list[Any]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        try:
            value = await Suspend()
        except LookupError as exc:
            await send(body(f"recovered from {exc!r}".encode()))
            return
        sent_back.append(value)
        await send(body(b"resumed"))

    return app


@pytest.mark.usefixtures("hot_path")
def test_a_value_sent_in_reaches_the_app(make_aegis: Callable[..., Aegis]) -> None:
    """As trio resumes tasks: a value sent into the middleware's coroutine is what
    the app's await returns."""
    sent_back: list[Any] = []
    aegis = make_aegis()
    coroutine, exchange = _drive_to_suspension(AegisMiddleware(_held_app(sent_back), aegis=aegis))
    assert aegis.realtime().in_flight == 1
    with pytest.raises(StopIteration):
        coroutine.send({"resume": 1})
    assert sent_back == [{"resume": 1}]
    assert exchange.body == b"resumed"
    assert [(r.status, r.error) for r in recorded(aegis)] == [(200, "")]
    assert aegis.realtime().in_flight == 0


@pytest.mark.usefixtures("hot_path")
def test_a_thrown_exception_the_app_handles(make_aegis: Callable[..., Aegis]) -> None:
    """As asyncio cancels: an exception thrown in reaches the app's await; an app that
    handles it and returns ends the request normally."""
    aegis = make_aegis()
    coroutine, exchange = _drive_to_suspension(AegisMiddleware(_held_app([]), aegis=aegis))
    with pytest.raises(StopIteration):
        coroutine.throw(KeyError("k"))
    assert exchange.body == b"recovered from KeyError('k')"
    assert [(r.status, r.error) for r in recorded(aegis)] == [(200, "")]


@pytest.mark.usefixtures("hot_path")
def test_a_thrown_exception_the_app_lets_through(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis()
    coroutine, _ = _drive_to_suspension(AegisMiddleware(_held_app([]), aegis=aegis))
    thrown = ZeroDivisionError("thrown in")
    with pytest.raises(ZeroDivisionError) as info:
        coroutine.throw(thrown)
    assert info.value is thrown
    assert [(r.status, r.error) for r in recorded(aegis)] == [(200, "ZeroDivisionError: thrown in")]
    assert aegis.realtime().in_flight == 0


@pytest.mark.usefixtures("hot_path")
def test_closing_a_suspended_request_records_it_once(
    make_aegis: Callable[..., Aegis],
) -> None:
    """close() (a task torn down) closes the app's coroutine and records the request as
    one nobody got an answer to; closing again changes nothing."""
    aegis = make_aegis()
    coroutine, _ = _drive_to_suspension(AegisMiddleware(_held_app([]), aegis=aegis))
    coroutine.close()
    coroutine.close()
    assert [r.status for r in recorded(aegis)] == [499]
    assert aegis.realtime().in_flight == 0


@pytest.mark.usefixtures("hot_path")
def test_a_discarded_request_is_recorded(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis()
    coroutine, _ = _drive_to_suspension(AegisMiddleware(_held_app([]), aegis=aegis))
    del coroutine
    gc.collect()
    assert [r.status for r in recorded(aegis)] == [499]
    assert aegis.realtime().in_flight == 0


# -- no memory kept -------------------------------------------------------------------


@pytest.mark.anyio
async def test_requests_in_a_reference_cycle_are_collected(
    make_aegis: Callable[..., Aegis],
) -> None:
    """An app that keeps its receive and send in the scope makes a cycle through the
    compiled path's objects; the garbage collector still frees them all."""
    module = compiled_module()
    kinds: set[str] = set()
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        kinds.update({type(receive).__name__, type(send).__name__})
        scope["state"]["keep"] = (scope, receive, send)
        await send(START_200)
        await send(body(b"x"))

    middleware = AegisMiddleware(app, aegis=aegis)
    for _ in range(10):
        await call(middleware, http_scope("/cycle"))
    assert len(recorded(aegis)) == 10
    gc.collect()
    assert kinds == {"Sender", "Receiver"}
    per_request = [
        type(o).__name__
        for o in gc.get_objects()
        if type(o).__module__ == module.__name__ and type(o) is not module.HttpPath
    ]
    assert per_request == []


@pytest.mark.anyio
async def test_no_memory_is_kept_per_request(make_aegis: Callable[..., Aegis]) -> None:
    """Twenty thousand requests of every kind (ordinary, body read, app error, no
    response) leave no memory behind: a leak of one small object per request would
    show as hundreds of kilobytes."""
    compiled_module()
    aegis = make_aegis(sink=lambda batch: None, flush_interval=3600)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        kind = scope["path"]
        if kind == "/body":
            await receive()
        elif kind == "/error":
            raise ValueError("boom")
        elif kind == "/nothing":
            return
        await send(START_200)
        await send(body(b"hello"))

    middleware = AegisMiddleware(app, aegis=aegis)
    paths = ("/ok", "/body", "/error", "/nothing")
    scopes = [http_scope(path, method="POST") for path in paths]
    request = {"type": "http.request", "body": b"payload"}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        return None

    async def burst(count: int) -> None:
        for index in range(count):
            try:
                await middleware(dict(scopes[index % 4]), receive, send)
            except ValueError:
                pass
        assert aegis.force_flush() is True
        gc.collect()

    await burst(4000)  # warm every cache first
    tracemalloc.start()
    try:
        await burst(1000)
        baseline = retained_memory()
        await burst(20000)
        grown = retained_memory() - baseline
    finally:
        tracemalloc.stop()
    assert aegis.stats().offered == 25000
    assert grown < 100_000, f"{grown} bytes kept after 20000 requests"


@pytest.mark.anyio
async def test_requests_waiting_for_the_pipeline_start_no_collections(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Twenty thousand requests, their items waiting in the inbox and their
    records for the sink, start (almost) no garbage collection: items and
    records come from the compiled module's free lists, so they do not count
    toward the young generation's threshold (700). Allocated the usual way,
    they started one collection per ~350 requests."""
    compiled_module()
    batches: list[int] = []
    aegis = make_aegis(sink=lambda batch: batches.append(len(batch)), flush_interval=3600)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await send(body(b"hello"))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        return None

    middleware = AegisMiddleware(app, aegis=aegis)
    scope = http_scope("/ok")

    async def burst(count: int) -> None:
        for _ in range(count):
            await middleware(dict(scope), receive, send)
        assert aegis.force_flush() is True

    await burst(5000)  # warm caches; fills the free lists
    collections: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        for _ in range(4):
            await burst(5000)
    finally:
        gc.callbacks.remove(count)
    assert sum(batches) == 25000
    assert len(collections) <= 5, collections


@pytest.mark.anyio
async def test_an_item_from_the_free_list_starts_as_a_new_one(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A request that leaves most of its item's fields at their defaults (no
    response: no status, no first byte, no body) records the same whether its
    item is new or one given back holding every field set."""
    module = compiled_module()
    aegis = make_aegis(sink=lambda batch: None, flush_interval=3600)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    middleware = AegisMiddleware(app, aegis=aegis)
    module.clear_free_lists()
    await call(middleware, http_scope("/nothing"))
    [new] = aegis.recorder.inbox
    aegis.recorder.inbox.clear()
    del new
    used = module.item_from_fields(
        ["POST", "/r", "/x", 503, 1.0, 2.0, 3.0, 2**70, 1.5, ("h", 2), "1.2.3.4", "E", True,
         b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    )  # fmt: skip
    address = id(used)
    module.clear_free_lists()
    del used  # the one item in the list
    await call(middleware, http_scope("/nothing"))
    [reused] = aegis.recorder.inbox
    assert id(reused) == address
    await call(middleware, http_scope("/nothing"))  # one more, new
    fresh = aegis.recorder.inbox[1]
    for item in (reused, fresh):
        fields = list(item)
        assert fields[START] <= fields[END]
        del fields[END], fields[START]  # times of the request itself
        assert fields == ["GET", "<unmatched>", "/nothing", 500, None, 0, 0,
                          ("127.0.0.1", 50000), None,
                          "RuntimeError: app returned without sending a response", False,
                          None]  # fmt: skip


def retained_memory() -> int:
    """Memory allocated since tracemalloc started and still held, except the realtime
    ring's per-second slots: the flusher fills the ring as wall-clock seconds pass
    (a bounded 128 slots), so on a slow machine a long run would count them. The
    compiled module's free lists of items and records (bounded, a few MB at most)
    are emptied first: what they keep is not growth, and an object kept alive by
    a leak is never in them, so it still counts."""
    module = load_compiled()
    if module is not None:
        module.clear_free_lists()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, RING)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


# -- the inbox: bound, shutdown, wake-up (the request path's side of Recorder.offer) --


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_a_full_inbox_refuses_exactly_the_excess(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(max_buffer=3, batch_size=1000, flush_interval=3600)
    middleware = AegisMiddleware(_empty_app, aegis=aegis)
    with frozen(aegis):  # the flusher, woken at the bound, cannot drain meanwhile
        for index in range(5):
            await call(middleware, http_scope(f"/{index}"))
        assert [item[2] for item in aegis.recorder.inbox] == ["/0", "/1", "/2"]
        assert aegis.recorder.dropped["buffer_full"] == 2
    assert [r.path for r in recorded(aegis)] == ["/0", "/1", "/2"]
    assert aegis.realtime().in_flight == 0


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_requests_after_shutdown_are_counted_then_recorded_after_restart(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis()
    middleware = AegisMiddleware(_empty_app, aegis=aegis)
    aegis.shutdown()
    await call(middleware, http_scope("/late"))
    assert aegis.stats().dropped["shutdown"] == 1
    aegis.start()
    await call(middleware, http_scope("/again"))
    assert [r.path for r in recorded(aegis)] == ["/again"]


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_batch_size_waiting_requests_wake_the_flusher(
    make_aegis: Callable[..., Aegis],
) -> None:
    """With an hour-long interval, the batch_size-th waiting request wakes the flusher."""
    written = threading.Event()

    def sink(batch: Any) -> None:
        if len(batch.requests) == 4:
            written.set()

    aegis = make_aegis(sink=sink, batch_size=4, flush_interval=3600)
    middleware = AegisMiddleware(_empty_app, aegis=aegis)
    for index in range(4):
        await call(middleware, http_scope(f"/{index}"))
    assert written.wait(10)


# -- what a buggy app or reader does to the request path ---------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
@pytest.mark.parametrize("misuse", ["await", "next", "throw", "close"])
async def test_an_app_misusing_its_send_gets_an_error_not_a_crash(
    make_aegis: Callable[..., Aegis], misuse: str
) -> None:
    """The app's send is a plain callable on both paths (the compiled path keeps the
    object it awaits out of the app's reach): awaiting, iterating, throwing into or
    closing it raises as it would for a function, and the request goes on unharmed."""
    aegis = make_aegis()
    caught: list[type] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        try:
            if misuse == "await":
                await send
            elif misuse == "next":
                next(send)
            elif misuse == "throw":
                send.throw(KeyError("into send"))
            else:
                send.close()
        except Exception as exc:
            caught.append(type(exc))
        await send(body(b"still fine"))

    exchange = await call(AegisMiddleware(app, aegis=aegis), http_scope("/misuse"))
    assert exchange.body == b"still fine"
    # A plain callable, on both paths: not awaitable, no iterator, no throw/close.
    assert caught == [TypeError if misuse in ("await", "next") else AttributeError]
    assert [(r.status, r.error) for r in recorded(aegis)] == [(200, "")]
    assert aegis.realtime().in_flight == 0


class Abort(BaseException):
    """Not an Exception: like KeyboardInterrupt or a cancellation, never swallowed."""


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_a_base_exception_while_finishing_propagates(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A failure of ours while finishing a request is counted, unless it is not an
    Exception: that propagates, as the Python path's `except Exception` lets it."""
    calls: list[str] = []

    def reader(scope: Any) -> str:
        calls.append(scope["path"])
        if scope["path"] == "/abort":
            raise Abort
        raise LookupError("reader failed")

    aegis = make_aegis()
    middleware = AegisMiddleware(_empty_app, aegis=aegis, route_reader=reader)
    await call(middleware, http_scope("/lookup"))
    with pytest.raises(Abort):
        await call(middleware, http_scope("/abort"))
    assert calls == ["/lookup", "/abort"]
    assert recorded(aegis) == []
    stats = aegis.stats()
    assert stats.dropped["internal_error"] == 1
    assert aegis.realtime().in_flight == 0


@pytest.mark.anyio
async def test_an_item_in_a_cycle_through_its_status_is_collected(
    make_aegis: Callable[..., Aegis],
) -> None:
    """What the app puts in the item (here a status object that refers back to the
    request's send) keeps the item visible to the garbage collector."""
    compiled_module()
    markers: list[weakref.ref[Any]] = []

    class Status(int):
        keep: Any

    class Marker:
        pass

    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = Status(200)
        status.keep = (send, Marker())
        markers.append(weakref.ref(status.keep[1]))
        await send({**START_200, "status": status})
        await send(body(b"x"))

    aegis = make_aegis(flush_interval=3600)
    middleware = AegisMiddleware(app, aegis=aegis)
    for _ in range(3):
        await call(middleware, http_scope("/cycle"))
    assert [r.status for r in recorded(aegis)] == [200] * 3
    gc.collect()
    assert [marker() for marker in markers] == [None, None, None]


@pytest.mark.usefixtures("hot_path")
def test_stop_iteration_thrown_into_a_bare_iterator_app(make_aegis: Callable[..., Aegis]) -> None:
    """An app awaitable whose iterator has no throw(): the exception surfaces at the
    middleware's await. Up to Python 3.11 it is recorded and leaves as RuntimeError
    (PEP 479); since 3.12 a StopIteration thrown there is what the await returns, so
    the app returned, without a response."""

    class Held:
        def __await__(self) -> Any:
            return iter(["suspended"])

    def app(scope: Any, receive: Any, send: Any) -> Any:
        return Held()

    aegis = make_aegis()
    exchange = Exchange()
    coroutine = AegisMiddleware(app, aegis=aegis)(
        http_scope("/bare"), exchange.receive, exchange.send
    )
    assert coroutine.send(None) == "suspended"
    stop = StopIteration("thrown in")
    if sys.version_info >= (3, 12):
        with pytest.raises(StopIteration) as returned:
            coroutine.throw(stop)
        assert returned.value.value is None  # the middleware returns None
        assert [(r.status, r.error) for r in recorded(aegis)] == [(500, NO_RESPONSE)]
        return
    with pytest.raises(RuntimeError, match="coroutine raised StopIteration") as info:
        coroutine.throw(stop)
    assert info.value.__cause__ is stop
    assert [(r.status, r.error) for r in recorded(aegis)] == [(500, "StopIteration: thrown in")]


@pytest.mark.usefixtures("hot_path")
def test_invalid_throw_arguments_are_thrown_into_the_app(
    make_aegis: Callable[..., Aegis],
) -> None:
    """As CPython does for `await`: the TypeError for bad throw() arguments is raised
    at the app's await, where the app could handle it; here it does not."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await Suspend()

    aegis = make_aegis()
    coroutine, _ = _drive_to_suspension(AegisMiddleware(app, aegis=aegis))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="instance exception may not have a separate value"):
            coroutine.throw(KeyError("k"), 5)
    # The (type, value) form is deprecated since 3.12: one warning, the caller's own
    # throw()'s, none from the app's coroutine.
    deprecated = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecated) == (1 if sys.version_info >= (3, 12) else 0), deprecated
    assert [(r.status, r.error) for r in recorded(aegis)] == [
        (200, "TypeError: instance exception may not have a separate value")
    ]
    assert aegis.realtime().in_flight == 0


class Bare:
    """An awaitable whose iterator has no throw(): a thrown exception is raised at the
    await itself."""

    def __await__(self) -> Any:
        return iter(["suspended"])


class OwnThrow:
    """An awaitable with a throw() of its own, which sees the arguments as given: for
    a KeyError it returns (StopIteration), anything else it raises."""

    def __await__(self) -> Any:
        return self

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> str:
        return "suspended"

    def throw(self, *args: Any) -> Any:
        if args[0] is KeyError or isinstance(args[0], KeyError):
            raise StopIteration(f"{len(args)} arguments")
        raise args[0]


def _awaits(awaitable: Callable[[], Any], catching: bool = False, nested: bool = False) -> Any:
    async def inner() -> Any:
        return await awaitable()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        try:
            value = await (inner() if nested else awaitable())
        except BaseException as exc:
            await send(body(repr(exc).encode()))
            if not catching or not isinstance(exc, Exception):
                raise
            return
        await send(body(repr(value).encode()))

    return app


def _traceback() -> Any:
    try:
        raise ValueError("for its traceback")
    except ValueError as exc:
        return exc.__traceback__


THROWN_INTO: dict[str, Callable[..., Any]] = {
    "returns-a-bare-awaitable": lambda scope, receive, send: Bare(),
    "returns-an-awaitable-with-its-own-throw": lambda scope, receive, send: OwnThrow(),
    "awaits-a-bare-awaitable": _awaits(Bare),
    "awaits-and-catches": _awaits(Bare, catching=True),
    "awaits-through-a-coroutine": _awaits(Bare, catching=True, nested=True),
    "awaits-one-with-its-own-throw": _awaits(OwnThrow, catching=True),
}
THROWN: dict[str, Callable[[], tuple[Any, ...]]] = {
    "instance": lambda: (KeyError("k"),),
    "class": lambda: (KeyError,),
    "class-and-value": lambda: (KeyError, "v"),
    "class-and-arguments": lambda: (LookupError, ("a", "b")),
    "class-and-traceback": lambda: (ValueError, None, _traceback()),
    "stop-iteration": lambda: (StopIteration("s"),),
    "stop-iteration-class": lambda: (StopIteration,),
    "generator-exit": lambda: (GeneratorExit(),),
    "keyboard-interrupt": lambda: (KeyboardInterrupt(),),
    "not-an-exception": lambda: (42,),
    "instance-and-value": lambda: (KeyError("k"), 5),
    "not-a-traceback": lambda: (KeyError, None, 5),
}


def _thrown_outcome(make_aegis: Callable[..., Aegis], app: Any, thrown: Any, compiled: bool) -> Any:
    aegis = make_aegis(speedups=compiled)
    exchange = Exchange()
    coroutine = AegisMiddleware(app, aegis=aegis)(
        http_scope("/thrown"), exchange.receive, exchange.send
    )
    assert coroutine.send(None) == "suspended"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome: tuple[Any, ...] = ("yielded", coroutine.throw(*thrown()))
        except BaseException as exc:
            outcome = (
                type(exc).__name__, str(exc), type(exc.__cause__).__name__,
                exc.value if isinstance(exc, StopIteration) else None,
            )  # fmt: skip
    coroutine.close()
    records = [(r.status, r.error) for r in recorded(aegis)]
    warned = [str(w.message) for w in caught]
    return outcome, warned, exchange.sent, records, aegis.realtime().in_flight


@pytest.mark.parametrize("thrown", sorted(THROWN))
@pytest.mark.parametrize("app", sorted(THROWN_INTO))
def test_throw_into_a_suspended_request_as_the_python_path(
    make_aegis: Callable[..., Aegis], app: str, thrown: str
) -> None:
    """throw() with every form of arguments CPython takes (and some it refuses) into
    a request suspended at an await, as asyncio and trio throw cancellations in: the
    same exception leaves, the same warnings, messages and records, on each Python
    version (the arguments reach the app's own throw() as given; the ones that cannot
    be raised fail throw() where CPython fails it; a StopIteration at a bare await is
    what it returns since 3.12)."""
    compiled_module()
    python = _thrown_outcome(make_aegis, THROWN_INTO[app], THROWN[thrown], compiled=False)
    fast = _thrown_outcome(make_aegis, THROWN_INTO[app], THROWN[thrown], compiled=True)
    assert fast == python
    assert python[-1] == 0


@pytest.mark.usefixtures("hot_path")
def test_a_thrown_exception_keeps_its_own_context(make_aegis: Callable[..., Aegis]) -> None:
    """Throwing while the caller handles another exception does not chain the two."""
    aegis = make_aegis()
    coroutine, _ = _drive_to_suspension(AegisMiddleware(_held_app([]), aegis=aegis))
    thrown = ZeroDivisionError("z")
    try:
        raise ValueError("being handled by the caller")
    except ValueError:
        with pytest.raises(ZeroDivisionError) as info:
            coroutine.throw(thrown)
    assert info.value is thrown
    assert thrown.__context__ is None


@pytest.mark.usefixtures("hot_path")
def test_closing_when_the_close_lookup_fails(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As CPython's close(): a failing lookup of the awaited iterator's close() is
    reported as unraisable, and the request is closed and recorded anyway."""

    class Iterator:
        def __iter__(self) -> Any:
            return self

        def __next__(self) -> str:
            return "suspended"

        def __getattr__(self, name: str) -> Any:
            if name == "close":
                raise ValueError("no close for you")
            raise AttributeError(name)

    class Held:
        def __await__(self) -> Any:
            return Iterator()

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    aegis = make_aegis()
    exchange = Exchange()
    middleware = AegisMiddleware(lambda scope, receive, send: Held(), aegis=aegis)
    coroutine = middleware(http_scope("/held"), exchange.receive, exchange.send)
    assert coroutine.send(None) == "suspended"
    assert coroutine.close() is None
    assert [str(u.exc_value) for u in unraisable] == ["no close for you"]
    assert [r.status for r in recorded(aegis)] == [499]


@pytest.mark.anyio
async def test_a_status_set_after_queueing_keeps_the_item_collectable(
    make_aegis: Callable[..., Aegis],
) -> None:
    """An item leaves the collector's lists when queued with atoms only; a send after
    the app returned that stores a non-atom status puts it back."""
    compiled_module()
    kept: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        kept.append(send)
        await send(START_200)
        await send(body(b""))

    aegis = make_aegis(flush_interval=3600)
    await call(AegisMiddleware(app, aegis=aegis), http_scope("/late"))
    [item] = list(aegis.recorder.inbox)
    assert not gc.is_tracked(item)

    class Status(int):
        pass

    late = kept[0]({**START_200, "status": Status(201)})
    late.close()  # the server's coroutine, never awaited
    assert gc.is_tracked(item)


# -- the compiled objects -----------------------------------------------------------


def init_arguments(middleware: Callable[[], Any], type_name: str) -> dict[str, Any]:
    """The arguments the compiled type ``type_name`` is built with by ``middleware()``."""
    module = compiled_module()
    real = getattr(module, type_name)
    captured: dict[str, Any] = {}

    def capture(**arguments: Any) -> Any:
        captured.update(arguments)
        return real(**arguments)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, type_name, capture)
        middleware()
    return captured


@pytest.mark.anyio
async def test_the_compiled_path_cannot_be_initialised_again(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Its requests in flight rely on what it was built with: __init__ again refuses,
    and the path serves on unchanged."""
    compiled_module()
    aegis = make_aegis()
    middleware = AegisMiddleware(_empty_app, aegis=aegis)
    arguments = init_arguments(
        lambda: AegisMiddleware(_ok(FakeClock()), aegis=make_aegis()), "HttpPath"
    )
    with pytest.raises(RuntimeError, match="already initialised"):
        middleware._compiled.__init__(**arguments)  # type: ignore[union-attr,misc]
    await call(middleware, http_scope("/after"))
    assert [r.path for r in recorded(aegis)] == ["/after"]

"""How servers and task runners take the middleware, on both request paths.

Servers must detect an ASGI 3 app (uvicorn by ``asyncio.iscoroutinefunction``,
Hypercorn by ``inspect.iscoroutinefunction`` of ``__call__``, asgiref by its
own check); every way of running it (awaited, an asyncio task, an anyio or
trio task) must serve and record the request once; and what goes wrong
before the app runs must be raised when the result is awaited, not by the
call, as from any coroutine.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import warnings
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import trio
import uvicorn
from asgiref.compatibility import guarantee_single_callable

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded
from tests.conftest import compiled_module
from tests.harness import Exchange, http_scope

START_200 = {"type": "http.response.start", "status": 200, "headers": []}


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send(START_200)
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def middleware(request: pytest.FixtureRequest) -> Any:
    aegis = Aegis(sink="memory://", speedups=request.param, environ={})
    yield AegisMiddleware(app, aegis=aegis)
    aegis.shutdown(timeout=5)


def test_servers_detect_an_asgi_3_app(middleware: AegisMiddleware) -> None:
    """As uvicorn (asyncio.iscoroutinefunction of __call__), Hypercorn
    (inspect.iscoroutinefunction of __call__) and asgiref decide."""
    assert inspect.iscoroutinefunction(middleware.__call__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.14
        assert asyncio.iscoroutinefunction(middleware.__call__)
    assert guarantee_single_callable(middleware) is middleware
    config = uvicorn.Config(middleware, lifespan="off", proxy_headers=False, log_config=None)
    config.load()
    assert config.interface == "asgi3"
    assert config.loaded_app is middleware  # not wrapped in uvicorn's ASGI2Middleware


def run_asyncio_task(middleware: AegisMiddleware, exchange: Exchange) -> None:
    async def main() -> None:
        await asyncio.create_task(middleware(http_scope("/t"), exchange.receive, exchange.send))

    asyncio.run(main())


def run_anyio_task(backend: str) -> Any:
    def run(middleware: AegisMiddleware, exchange: Exchange) -> None:
        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(middleware, http_scope("/t"), exchange.receive, exchange.send)

        anyio.run(main, backend=backend)

    return run


def run_trio_nursery(middleware: AegisMiddleware, exchange: Exchange) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(middleware, http_scope("/t"), exchange.receive, exchange.send)

    trio.run(main)


@pytest.mark.parametrize(
    "run",
    [run_asyncio_task, run_anyio_task("asyncio"), run_anyio_task("trio"), run_trio_nursery],
    ids=["asyncio task", "anyio on asyncio", "anyio on trio", "trio nursery"],
)
def test_every_task_runner_serves_and_records_the_request(
    middleware: AegisMiddleware, run: Any
) -> None:
    """Run as a task rather than awaited: the app answers, and the request
    is recorded once."""
    exchange = Exchange()
    run(middleware, exchange)
    assert [message["type"] for message in exchange.sent] == [
        "http.response.start",
        "http.response.body",
    ]
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [("/t", 200)]


def test_what_the_call_raises_is_raised_when_awaited(middleware: AegisMiddleware) -> None:
    """A scope without its type, an app that raises when called: the call
    returns, the await raises the same exception; the request of the app
    that raised is recorded as a 500."""

    def raises_when_called(scope: Any, receive: Any, send: Any) -> Any:
        raise LookupError("at the call")

    exchange = Exchange()
    no_type = {key: value for key, value in http_scope("/").items() if key != "type"}
    pending = middleware(no_type, exchange.receive, exchange.send)
    with pytest.raises(KeyError, match="type"):
        pending.send(None)

    failing = AegisMiddleware(raises_when_called, aegis=middleware.aegis)
    pending = failing(http_scope("/raised"), exchange.receive, exchange.send)
    with pytest.raises(LookupError, match="at the call"):
        pending.send(None)
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [
        ("/raised", 500)
    ]


def test_the_compiled_path_is_called_directly(middleware: AegisMiddleware) -> None:
    """Compiled, a call (scope, receive, send) returns the compiled request itself
    (no coroutine of ours around it); the class and its ``__call__`` are what
    they always were, so introspection sees an ordinary ASGI 3 app."""
    assert type(middleware) is AegisMiddleware
    assert inspect.iscoroutinefunction(type(middleware).__call__)
    assert list(inspect.signature(middleware).parameters) == ["scope", "receive", "send"]
    exchange = Exchange()
    pending = middleware(http_scope("/direct"), exchange.receive, exchange.send)
    if middleware.compiled:
        assert f"{type(pending).__module__}.{type(pending).__name__}" == (
            f"{compiled_module().__name__}.Exchange"
        )
    else:
        assert inspect.iscoroutine(pending)
    with pytest.raises(StopIteration):
        pending.send(None)
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [
        ("/direct", 200)
    ]


def test_a_call_by_keyword_serves_and_records(middleware: AegisMiddleware) -> None:
    """As Daphne calls an app (scope=, receive=, send=): served and recorded
    once, on either path; a call Python would refuse is refused the same way."""
    exchange = Exchange()

    async def main() -> None:
        await asyncio.ensure_future(
            middleware(scope=http_scope("/keyword"), receive=exchange.receive, send=exchange.send)
        )

    asyncio.run(main())
    assert exchange.status == 200
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [
        ("/keyword", 200)
    ]
    with pytest.raises(TypeError, match="unexpected keyword argument 'sent'"):
        middleware(scope=http_scope("/"), receive=exchange.receive, sent=exchange.send)
    with pytest.raises(TypeError, match="positional argument"):
        middleware(http_scope("/"), exchange.receive)


def test_a_subclass_with_its_own_call_keeps_it(middleware: AegisMiddleware) -> None:
    """A subclass's own __call__ is what an instance runs, on either path."""
    calls: list[str] = []

    class Counting(AegisMiddleware):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append(scope["path"])
            await super().__call__(scope, receive, send)

    counting = Counting(app, aegis=middleware.aegis)
    assert counting.compiled == middleware.compiled
    exchange = Exchange()
    asyncio.run(counting(http_scope("/sub"), exchange.receive, exchange.send))
    assert calls == ["/sub"]
    assert exchange.status == 200
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [
        ("/sub", 200)
    ]


class Watched:
    """An app that notes whether it was called."""

    def __init__(self) -> None:
        self.called = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called += 1
        await app(scope, receive, send)


def watched_middleware(middleware: AegisMiddleware) -> tuple[AegisMiddleware, Watched]:
    watched = Watched()
    return AegisMiddleware(watched, aegis=middleware.aegis), watched


def test_nothing_runs_before_the_call_is_awaited(middleware: AegisMiddleware) -> None:
    """As a coroutine's body: the call itself starts nothing, a value other
    than None cannot start it, and its first step runs the app."""
    served, watched = watched_middleware(middleware)
    exchange = Exchange()
    pending = served(http_scope("/later"), exchange.receive, exchange.send)
    assert watched.called == 0
    assert middleware.aegis.aggregates.in_flight_now() == 0
    with pytest.raises(TypeError, match="non-None"):
        pending.send("value")
    assert watched.called == 0
    with pytest.raises(StopIteration):
        pending.send(None)
    assert watched.called == 1
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [
        ("/later", 200)
    ]
    with pytest.raises(RuntimeError, match="reuse"):
        pending.send(None)


def test_a_call_closed_or_thrown_into_before_its_first_step_never_runs(
    middleware: AegisMiddleware,
) -> None:
    """close() drops it; throw() raises the exception right there (arguments
    that cannot be raised are refused first, and leave it as it was); either
    way the app never runs and nothing is recorded."""
    served, watched = watched_middleware(middleware)
    exchange = Exchange()
    closed = served(http_scope("/closed"), exchange.receive, exchange.send)
    assert closed.close() is None
    with pytest.raises(RuntimeError, match="reuse"):
        closed.send(None)

    thrown = served(http_scope("/thrown"), exchange.receive, exchange.send)
    with pytest.raises(TypeError, match="BaseException"):
        thrown.throw(42)  # type: ignore[call-overload]
    with pytest.raises(LookupError, match="into the call"):
        thrown.throw(LookupError("into the call"))
    with pytest.raises(RuntimeError, match="reuse"):
        thrown.send(None)
    assert watched.called == 0
    assert exchange.sent == []
    assert recorded(middleware.aegis) == []
    assert middleware.aegis.aggregates.in_flight_now() == 0


def test_a_call_never_awaited_warns_as_a_coroutine_does(middleware: AegisMiddleware) -> None:
    """Dropped before its first step, without close(): the RuntimeWarning a
    coroutine never awaited gives, with its text, and nothing runs or is
    recorded; one closed first, or awaited, does not warn."""
    served, watched = watched_middleware(middleware)
    exchange = Exchange()
    with pytest.warns(RuntimeWarning) as caught:
        served(http_scope("/never"), exchange.receive, exchange.send)  # dropped at once
    with pytest.warns(RuntimeWarning) as taken:  # its awaitable taken, never stepped
        served(http_scope("/never"), exchange.receive, exchange.send).__await__()
    assert [str(warning.message) for warning in [*caught, *taken]] == [
        "coroutine 'AegisMiddleware.__call__' was never awaited"
    ] * 2
    closed = served(http_scope("/closed"), exchange.receive, exchange.send)
    closed.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del closed
        one_step(served, "/awaited")
        gc.collect()
    assert watched.called == 1
    assert [record.path for record in recorded(middleware.aegis)] == ["/awaited"]
    assert middleware.aegis.aggregates.in_flight_now() == 0


def one_step(served: AegisMiddleware, path: str) -> Any:
    """What a call of ``served`` returned, run to its end in one step."""
    exchange = Exchange()
    pending = served(http_scope(path), exchange.receive, exchange.send)
    with pytest.raises(StopIteration):
        pending.send(None)
    return pending


#: The (type, value, traceback) form of throw() warns since 3.12, once.
DEPRECATIONS = 1 if sys.version_info >= (3, 12) else 0


def suspended_call(served: AegisMiddleware, path: str) -> Any:
    """A call of ``served``, stepped until the app first suspends."""
    exchange = Exchange()
    pending = served(http_scope(path), exchange.receive, exchange.send)
    assert pending.send(None) == "suspended"
    return pending


def deprecations(
    throw: Callable[[], Any], error: type[BaseException], match: str
) -> list[warnings.WarningMessage]:
    """The DeprecationWarnings of ``throw()``, which raises ``error``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(error, match=match):
            throw()
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


class Held:
    """An app's awaitable: a plain iterator that suspends once, with no throw()."""

    def __await__(self) -> Any:
        return iter(["suspended"])


def test_throw_arguments_refused_at_a_plain_iterator_leave_the_request_as_it_was(
    middleware: AegisMiddleware,
) -> None:
    """The server throws arguments no throw() accepts while the app's awaitable is
    a plain iterator: the TypeError goes back to the server, and the request
    stays suspended and in flight, then finishes when resumed (on both paths:
    the server's throw() is the middleware call's own)."""

    def held(scope: Any, receive: Any, send: Any) -> Any:
        return Held()

    pending = suspended_call(AegisMiddleware(held, aegis=middleware.aegis), "/held")
    deprecated = deprecations(
        lambda: pending.throw(KeyError("k"), 5),
        TypeError,
        "instance exception may not have a separate value",
    )
    assert len(deprecated) == DEPRECATIONS, deprecated
    assert middleware.aegis.aggregates.in_flight_now() == 1
    with pytest.raises(StopIteration):
        pending.send(None)
    assert middleware.aegis.aggregates.in_flight_now() == 0
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [
        ("/held", 500)
    ]


class Suspend:
    """Suspends the coroutine awaiting it, as waiting on the network does."""

    def __await__(self) -> Any:
        return (yield "suspended")


class Awaiting(AegisMiddleware):
    """A subclass whose own __call__ awaits the middleware's."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)


@pytest.mark.parametrize("kind", [AegisMiddleware, Awaiting], ids=["called", "awaited"])
def test_a_throw_of_the_deprecated_form_warns_once(
    middleware: AegisMiddleware, kind: type[AegisMiddleware]
) -> None:
    """throw(type, value, traceback) warns as a coroutine's does since 3.12, once,
    whether the server calls the middleware's call itself or a coroutine of a
    subclass awaits it; the app sees the exception at its await."""

    async def suspended(scope: Any, receive: Any, send: Any) -> None:
        await send(START_200)
        await Suspend()

    pending = suspended_call(kind(suspended, aegis=middleware.aegis), "/thrown")
    deprecated = deprecations(
        lambda: pending.throw(KeyError, KeyError("thrown"), None), KeyError, "thrown"
    )
    assert len(deprecated) == DEPRECATIONS, deprecated
    assert [(record.path, record.status) for record in recorded(middleware.aegis)] == [
        ("/thrown", 200)
    ]


def test_subclasses_made_after_the_call_slot_was_set(middleware: AegisMiddleware) -> None:
    """A subclass without a __call__ of its own is called through the compiled
    path as AegisMiddleware is; one with its own __call__ (made after the slot
    of its base was set) runs that; both record each request once."""
    calls: list[str] = []

    class Plain(AegisMiddleware):
        pass

    class Own(Plain):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append(scope["path"])
            await super().__call__(scope, receive, send)

    plain = Plain(app, aegis=middleware.aegis)
    own = Own(app, aegis=middleware.aegis)
    assert inspect.iscoroutine(one_step(plain, "/plain")) is not middleware.compiled
    assert inspect.iscoroutine(one_step(own, "/own"))
    assert calls == ["/own"]
    assert sorted((record.path, record.status) for record in recorded(middleware.aegis)) == [
        ("/own", 200),
        ("/plain", 200),
    ]


def test_a_patched_call_is_what_every_call_runs(middleware: AegisMiddleware) -> None:
    """A __call__ patched on the class (an instrumentation, a test's mock) runs
    for every call, of instances built before and after the patch; once it is
    restored the compiled path is called directly again."""
    seen: list[str] = []
    own = AegisMiddleware.__call__

    async def wrapped(self: AegisMiddleware, scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await own(self, scope, receive, send)

    before = AegisMiddleware(app, aegis=middleware.aegis)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AegisMiddleware, "__call__", wrapped)
        after = AegisMiddleware(app, aegis=middleware.aegis)
        for served, path in ((before, "/before"), (after, "/after")):
            exchange = Exchange()
            asyncio.run(served(http_scope(path), exchange.receive, exchange.send))
    assert seen == ["/before", "/after"]
    again = AegisMiddleware(app, aegis=middleware.aegis)
    assert inspect.iscoroutine(one_step(again, "/again")) is not middleware.compiled
    assert seen == ["/before", "/after"]
    assert [record.path for record in recorded(middleware.aegis)] == ["/before", "/after", "/again"]


def test_an_instance_on_the_python_path_beside_a_compiled_one() -> None:
    """The class's call slot set by a compiled instance, an instance with
    speedups off still runs its Python __call__, with Python's own errors for
    a call it refuses."""
    aegis = Aegis(sink="memory://", environ={})
    compiled = AegisMiddleware(app, aegis=aegis)
    python = AegisMiddleware(app, aegis=Aegis(sink="memory://", speedups=False, environ={}))
    assert python.compiled is False
    assert inspect.iscoroutine(one_step(python, "/python"))
    assert [record.path for record in recorded(python.aegis)] == ["/python"]
    exchange = Exchange()
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'send'"):
        python(http_scope("/"), exchange.receive)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'send'"):
        compiled(http_scope("/"), exchange.receive)
    python.aegis.shutdown(timeout=5)
    aegis.shutdown(timeout=5)

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
import inspect
import warnings
from typing import Any

import anyio
import pytest
import trio
import uvicorn
from asgiref.compatibility import guarantee_single_callable

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded
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

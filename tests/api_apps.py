"""An app under the middleware over ASGI or WSGI, for the API's tests: a
Starlette app with ``install`` or a Flask app with the extension, each with
the routes ``/boom`` (an error), ``/unavailable`` (a 503) and ``/ok``; the
roles of ACCESS; a ``Served`` client for it that never sees a 500 from the
API; ``serving``, which makes a test module's ``serve`` fixture (each test
runs on both); and the checks of what every endpoint answers alike."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import Aegis
from aegis_mw.contrib.starlette import install

API = "/api/metrics"
VIEWER, EDITOR, ADMIN = "viewer-token-1", "editor-token-1", "admin-token-1"
ACCESS = {"api": {"tokens": [VIEWER], "editor_tokens": [EDITOR], "admin_tokens": [ADMIN]}}


def iso(timestamp: float, *, zulu: bool = False) -> str:
    text = datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()
    return text.replace("+00:00", "Z") if zulu else text


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"authorization": f"Bearer {token}"}


# -- the apps ---------------------------------------------------------------------------


def starlette_app() -> Starlette:
    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("kaboom")

    async def unavailable(request: Request) -> PlainTextResponse:
        return PlainTextResponse("later", status_code=503)

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/boom", boom), Route("/unavailable", unavailable), Route("/ok", ok)]
    )


def flask_app() -> Any:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.get("/boom")  # type: ignore[untyped-decorator]
    def boom() -> str:
        raise RuntimeError("kaboom")

    @app.get("/unavailable")  # type: ignore[untyped-decorator]
    def unavailable() -> tuple[str, int]:
        return "later", 503

    @app.get("/ok")  # type: ignore[untyped-decorator]
    def ok() -> str:
        return "ok"

    return app


class Served:
    """One app under the middleware, over ASGI or WSGI, and a client for it
    (each test module's subclass adds the calls of its endpoints)."""

    def __init__(
        self,
        aegis: Aegis,
        kind: str,
        asgi: httpx.AsyncClient | None = None,
        wsgi: httpx.Client | None = None,
    ) -> None:
        self.aegis, self.kind, self._asgi, self._wsgi = aegis, kind, asgi, wsgi

    async def request(
        self, method: str, path: str, *, token: str | None = None, **options: Any
    ) -> httpx.Response:
        headers = {**bearer(token), **options.pop("headers", {})}
        if self._asgi is not None:
            response = await self._asgi.request(method, path, headers=headers, **options)
        else:
            assert self._wsgi is not None
            call = functools.partial(self._wsgi.request, method, path, headers=headers, **options)
            response = await anyio.to_thread.run_sync(call)
        assert response.status_code != 500 or not path.startswith(API), response.text
        return response

    async def flush(self) -> None:
        """force_flush waits on the flusher thread: never on the event loop."""
        assert await anyio.to_thread.run_sync(self.aegis.force_flush, 10.0)


S = TypeVar("S", bound=Served)


def held(aegis: Aegis) -> None:
    """Queued events do not wake the flusher (it runs only when asked)."""
    if aegis.flusher.flush_interval >= 3600:
        aegis.recorder.events.wake_at = 2**62


def serving(served: type[S]) -> Any:
    """A ``serve`` fixture, run with each kind of app ("asgi" and "wsgi"),
    that builds the app with the given options (a memory sink, the roles of
    ACCESS and a flusher that runs only when asked, unless told: events queued
    do not wake it either) and answers a ``served`` for it; the clients are
    closed and the pipelines shut down after the test."""

    @pytest.fixture(params=["asgi", "wsgi"])
    async def serve(
        request: pytest.FixtureRequest, make_aegis: Callable[..., Aegis]
    ) -> AsyncIterator[Callable[..., Awaitable[S]]]:
        kind = str(request.param)
        clients: list[httpx.AsyncClient | httpx.Client] = []
        pipelines: list[Aegis] = []

        async def build(**options: Any) -> S:
            options.setdefault("sink", "memory://")
            options.setdefault("access", ACCESS)
            options.setdefault("flush_interval", 3600)
            options.setdefault("metrics_registry", "none")
            options.setdefault("environ", {})
            if kind == "asgi":
                aegis = make_aegis(**options)
                held(aegis)
                app = starlette_app()
                install(app, aegis=aegis)
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                asgi = httpx.AsyncClient(transport=transport, base_url="http://testserver")
                clients.append(asgi)
                made = served(aegis, kind, asgi=asgi)
            else:
                from aegis_mw.contrib.flask import Aegis as FlaskAegis

                app = flask_app()
                pipeline = FlaskAegis(app, **options).pipeline
                assert pipeline is not None
                held(pipeline)
                pipelines.append(pipeline)
                wsgi = httpx.Client(
                    transport=httpx.WSGITransport(app=app), base_url="http://testserver"
                )
                clients.append(wsgi)
                made = served(pipeline, kind, wsgi=wsgi)
            await made.flush()  # the flusher's first cycle is behind us
            return made

        yield build
        for client in clients:
            if isinstance(client, httpx.AsyncClient):
                await client.aclose()
            else:
                client.close()
        for pipeline in pipelines:
            await anyio.to_thread.run_sync(pipeline.shutdown, 5.0)

    return serve


# -- what every endpoint answers alike ----------------------------------------------------

Write = Callable[..., Awaitable[httpx.Response]]


async def refused_below_the_editor(write: Write) -> httpx.Response:
    """``write(token)`` sends a write: without a token or with an unknown one it
    is a 401, with the viewer's a 403 (forbidden). Answers the viewer's 403."""
    nobody = await write(None)
    assert nobody.status_code == 401, nobody.text
    wrong = await write("not-a-token-at-all")
    assert wrong.status_code == 401, wrong.text
    viewer = await write(VIEWER)
    assert viewer.status_code == 403, viewer.text
    assert viewer.json()["error"]["code"] == "forbidden"
    return viewer


async def refused_from_another_site(write: Write) -> None:
    """``write(headers)`` sends a write with an admin's token: from another
    site's page it is refused whoever the credential is."""
    for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
        elsewhere = await write(headers)
        assert elsewhere.status_code == 403, elsewhere.text
        assert elsewhere.json()["error"]["code"] == "cross_site"


def assert_bad_field(answer: httpx.Response, field: str) -> None:
    """A 400 in JSON naming the bad ``field`` of a body, and saying why."""
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert (error["code"], error["field"]) == ("invalid_field", field)
    assert error["message"]


def assert_bad_parameter(response: httpx.Response, parameter: str) -> None:
    """A 400 naming the bad ``parameter`` of a query string, and saying why."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "parameter"}
    assert error["parameter"] == parameter
    assert error["message"]

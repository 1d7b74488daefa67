"""An app that has its own route on one of our paths keeps it: it answers
exactly as without the middleware, its requests are recorded as the app's,
and the log names the clash and the option that moves ours."""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from flask import Flask
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.contrib.flask import Aegis as FlaskAegis
from aegis_mw.testing import recorded
from tests.harness import OPEN_MONITORING


def _fastapi_with_its_own_routes() -> FastAPI:
    app = FastAPI()

    @app.get("/dashboard")
    async def dashboard() -> JSONResponse:
        return JSONResponse({"detail": "staff only"}, status_code=403)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse("app_own_metric 1\n")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"app": "healthy"}

    return app


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _clashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "has its own route" in r.getMessage()]


@pytest.mark.anyio
async def test_fastapi_routes_stay_the_apps(
    make_aegis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    aegis = make_aegis(sink="memory://", access={})
    app = _fastapi_with_its_own_routes()
    app.add_middleware(AegisMiddleware, aegis=aegis)
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        async with _client(app) as client:
            dashboard = await client.get("/dashboard")
            assert (dashboard.status_code, dashboard.json()) == (403, {"detail": "staff only"})
            assert (await client.get("/metrics")).text == "app_own_metric 1\n"
            assert (await client.get("/health")).json() == {"app": "healthy"}
            # Ours where the app has none.
            assert (await client.get("/health/live")).status_code == 200
            assert (await client.get("/api/metrics/overview")).status_code == 401  # private
    messages = _clashes(caplog)
    assert len(messages) == 3
    assert any("/dashboard" in m and "dashboard_path" in m for m in messages)
    assert any("/metrics " in m and "metrics_path" in m for m in messages)
    assert any("/health " in m and "health_path" in m for m in messages)
    aegis.force_flush(timeout=10)
    routes = sorted(record.route for record in recorded(aegis))
    assert routes == ["/dashboard", "/health", "/metrics"]


@pytest.mark.anyio
async def test_a_root_mount_is_not_a_clash(
    make_aegis: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "index.html").write_text("static")
    app = Starlette(routes=[Mount("/", app=StaticFiles(directory=tmp_path, html=True))])
    aegis = make_aegis(sink="memory://")
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        async with _client(AegisMiddleware(app, aegis=aegis)) as client:
            assert (await client.get("/")).text == "static"
            assert (await client.get("/metrics")).text.startswith("# HELP")
    assert _clashes(caplog) == []


@pytest.mark.anyio
async def test_a_mounted_sub_app_owns_its_prefix(
    make_aegis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    inner = FastAPI()

    @inner.get("/")
    async def index() -> dict[str, str]:
        return {"app": "admin dashboard"}

    app = Starlette(routes=[Mount("/dashboard", app=inner)])
    aegis = make_aegis(sink="memory://", access=OPEN_MONITORING)
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        async with _client(AegisMiddleware(app, aegis=aegis)) as client:
            answer = await client.get("/dashboard/")
            assert answer.json() == {"app": "admin dashboard"}
    assert len(_clashes(caplog)) == 1


@pytest.mark.anyio
async def test_routes_clash_only_with_their_own_kind(
    make_aegis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A WebSocket route takes no HTTP request, so ``/metrics`` over HTTP stays
    ours beside the app's ``@app.websocket("/metrics")``; the app's HTTP route
    on the stream's path takes no handshake, so that leaves the stream ours."""
    app = FastAPI()

    @app.websocket("/metrics")
    async def live_metrics(websocket: WebSocket) -> None:
        await websocket.close()

    @app.get("/ws/metrics")
    async def about_the_stream() -> dict[str, str]:
        return {"app": "about the stream"}

    aegis = make_aegis(sink="memory://")
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        async with _client(AegisMiddleware(app, aegis=aegis)) as client:
            assert (await client.get("/metrics")).text.startswith("# HELP")
            # Plain HTTP there is the app's, recorded as its request.
            answer = await client.get("/ws/metrics")
            assert answer.json() == {"app": "about the stream"}
    assert _clashes(caplog) == []
    assert [record.route for record in recorded(aegis)] == ["/ws/metrics"]


def test_flask_routes_added_after_the_extension_stay_the_apps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Flask(__name__)
    app.config.update(AEGIS_SINK="memory://", AEGIS_METRICS_REGISTRY="none")
    extension = FlaskAegis(app)  # before the routes: the usual extension style

    @app.get("/dashboard")
    def dashboard() -> tuple[str, int]:
        return "staff only", 403

    try:
        with caplog.at_level(logging.WARNING, logger="aegis_mw"):
            client = app.test_client()
            with client.get("/dashboard") as answer:  # closed: the record is queued
                assert (answer.status_code, answer.text) == (403, "staff only")
            with client.get("/health/live") as answer:
                assert answer.status_code == 200
        assert [m for m in _clashes(caplog) if "dashboard_path" in m]
        # Recorded as the app's from then on (the first request may have been
        # read as ours already: the clash is found as that request starts).
        with client.get("/dashboard") as answer:
            assert answer.status_code == 403
        pipeline: Aegis = extension.pipeline  # type: ignore[assignment]
        pipeline.force_flush(timeout=10)
        routes = [r.route for r in recorded(pipeline)]
        assert routes in (["/dashboard"], ["/dashboard", "/dashboard"])
    finally:
        assert extension.pipeline is not None
        extension.pipeline.shutdown(timeout=5)


def test_a_django_projects_own_route_stays_its_own(caplog: pytest.LogCaptureFixture) -> None:
    django = pytest.importorskip("django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")
    django.setup()
    from django.test import Client, override_settings

    with (
        override_settings(ROOT_URLCONF="tests.contrib.django_project.own_routes"),
        caplog.at_level(logging.WARNING, logger="aegis_mw"),
    ):
        answer = Client().get("/metrics")
        assert answer.content == b"the project's own metrics"
    assert [m for m in _clashes(caplog) if "metrics_path" in m]

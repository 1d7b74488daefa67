"""Route templates read from Starlette and FastAPI after routing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded
from tests.harness import call, http_scope

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("hot_path")]


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def routes_of(
    aegis: Aegis, app: Any, *paths: str, method: str = "GET", **scope: Any
) -> list[tuple[str, int]]:
    for path in paths:
        await call(app, http_scope(path, method=method, **scope))
    return [(record.route, record.status) for record in recorded(aegis)]


async def test_starlette_routes_mounts_and_hosts(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Nested mounts join their prefixes, convertors are dropped (http.route style), and
    a mounted app without a matching route of its own reports ``/mount/{path}``."""
    (tmp_path / "style.css").write_text("body {}")
    aegis = make_aegis()
    app = Starlette(
        routes=[
            Route("/", ok),
            Route("/users/{user_id:int}", ok),
            Mount(
                "/api",
                routes=[
                    Mount("/v2", routes=[Route("/orders/{order_id}", ok)]),
                    Route("/health", ok),
                ],
            ),
            Mount("/static", app=StaticFiles(directory=tmp_path)),
            Host("admin.example.org", app=Router(routes=[Route("/panel", ok)])),
        ]
    )
    app.add_middleware(AegisMiddleware, aegis=aegis)
    assert await routes_of(
        aegis, app, "/", "/users/42", "/api/v2/orders/abc", "/api/health", "/static/style.css",
        "/static/missing.css", "/api/nope", "/nowhere",
    ) == [
        ("/", 200),
        ("/users/{user_id}", 200),
        ("/api/v2/orders/{order_id}", 200),
        ("/api/health", 200),
        ("/static/{path}", 200),
        ("/static/{path}", 404),
        ("/api/{path}", 404),
        ("<unmatched>", 404),
    ]  # fmt: skip


async def test_host_routing(make_aegis: Callable[..., Aegis]) -> None:
    """Routes behind a Host router keep their own path as template."""
    aegis = make_aegis()
    app = Starlette(routes=[Host("admin.example.org", app=Router(routes=[Route("/panel", ok)]))])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    await call(app, http_scope("/panel", headers=[(b"host", b"admin.example.org")]))
    assert [(r.route, r.status) for r in recorded(aegis)] == [("/panel", 200)]


async def test_method_not_allowed_keeps_the_template(make_aegis: Callable[..., Aegis]) -> None:
    """A partial match (405) is reported under the route it matched."""
    aegis = make_aegis()
    app = Starlette(routes=[Route("/only-get", ok, methods=["GET"])])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    assert await routes_of(aegis, app, "/only-get", method="DELETE") == [("/only-get", 405)]


async def test_fastapi_included_routers_and_mounted_apps(make_aegis: Callable[..., Aegis]) -> None:
    """Included routers carry their prefixes; a mounted FastAPI app its mount path."""
    aegis = make_aegis()
    app = FastAPI()
    inner = APIRouter(prefix="/items")
    outer = APIRouter(prefix="/v1")

    @inner.get("/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    outer.include_router(inner)
    app.include_router(outer)
    sub = FastAPI()

    @sub.get("/status/{name}")
    async def status(name: str) -> dict[str, str]:
        return {"name": name}

    app.mount("/sub", sub)
    app.add_middleware(AegisMiddleware, aegis=aegis)
    assert await routes_of(
        aegis, app, "/v1/items/3", "/v1/items/not-int", "/sub/status/x", "/v2"
    ) == [
        ("/v1/items/{item_id}", 200),
        ("/v1/items/{item_id}", 422),
        ("/sub/status/{name}", 200),
        ("<unmatched>", 404),
    ]


async def test_wrapping_the_app_from_outside(make_aegis: Callable[..., Aegis]) -> None:
    """AegisMiddleware(app) around a Starlette app reads the same templates."""
    aegis = make_aegis()
    app = Starlette(routes=[Mount("/m", routes=[Route("/r/{x}", ok)])])
    assert await routes_of(aegis, AegisMiddleware(app, aegis=aegis), "/m/r/1") == [
        ("/m/r/{x}", 200)
    ]


async def test_server_root_path_is_not_part_of_the_template(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Behind a proxy prefix (root_path), templates stay relative to the app."""
    aegis = make_aegis()
    app = Starlette(routes=[Route("/things/{n}", ok)])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    records = await routes_of(aegis, app, "/prefix/things/1", root_path="/prefix")
    assert records == [("/things/{n}", 200)]


async def test_routes_added_after_the_first_request(make_aegis: Callable[..., Aegis]) -> None:
    """A route registered at run time is found (the tree is walked again)."""
    aegis = make_aegis()
    app = Starlette(routes=[Route("/first", ok)])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    await call(app, http_scope("/first"))
    app.router.routes.append(Mount("/late", routes=[Route("/{n}", ok)]))
    await call(app, http_scope("/late/5"))
    assert [(r.route, r.status) for r in recorded(aegis)] == [("/first", 200), ("/late/{n}", 200)]


async def test_a_custom_route_reader(make_aegis: Callable[..., Aegis]) -> None:
    """Frameworks without Starlette routing can pass their own reader."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["my_route"] = "/custom/{id}"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = AegisMiddleware(
        app, aegis=aegis, route_reader=lambda scope: scope.get("my_route", "?")
    )
    assert await routes_of(aegis, wrapped, "/custom/9") == [("/custom/{id}", 204)]


async def test_a_template_string_in_the_scope_is_taken_as_is(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Any framework may write the template into scope['route'] itself."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = "/orders/{order_id}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    assert await routes_of(aegis, AegisMiddleware(app, aegis=aegis), "/orders/1") == [
        ("/orders/{order_id}", 200)
    ]


async def test_one_router_included_under_two_prefixes(make_aegis: Callable[..., Aegis]) -> None:
    """FastAPI shares one route object between inclusions; each keeps its own template."""
    aegis = make_aegis()
    app = FastAPI()
    shared = APIRouter()

    @shared.get("/ping/{n}")
    async def ping(n: int) -> dict[str, int]:
        return {"n": n}

    app.include_router(shared, prefix="/a")
    app.include_router(shared, prefix="/b")
    app.add_middleware(AegisMiddleware, aegis=aegis)
    assert await routes_of(aegis, app, "/a/ping/1", "/b/ping/2", "/a/ping/3", "/b/ping/4") == [
        ("/a/ping/{n}", 200),
        ("/b/ping/{n}", 200),
        ("/a/ping/{n}", 200),
        ("/b/ping/{n}", 200),
    ]


async def test_one_router_mounted_under_two_prefixes(make_aegis: Callable[..., Aegis]) -> None:
    """The same route objects under /v1 and /v2 keep their own prefixes, request by request."""
    aegis = make_aegis()
    common = [Route("/users/{user_id}", ok)]
    app = Starlette(routes=[Mount("/v1", routes=common), Mount("/v2", routes=common)])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    assert await routes_of(
        aegis, app, "/v1/users/1", "/v2/users/2", "/v2/users/3", "/v1/users/4"
    ) == [
        ("/v1/users/{user_id}", 200),
        ("/v2/users/{user_id}", 200),
        ("/v2/users/{user_id}", 200),
        ("/v1/users/{user_id}", 200),
    ]


def fastapi_sub_app() -> FastAPI:
    sub = FastAPI()
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    sub.include_router(users)
    return sub


@pytest.mark.parametrize("root_path", ["", "/proxy"])
async def test_fastapi_sub_app_with_an_included_router(
    make_aegis: Callable[..., Aegis], root_path: str
) -> None:
    """FastAPI's own sub-application pattern: the mount prefix is kept, with or without
    a server root_path in front."""
    aegis = make_aegis()
    app = FastAPI()
    app.mount("/v1", fastapi_sub_app())
    app.add_middleware(AegisMiddleware, aegis=aegis)
    records = await routes_of(aegis, app, f"{root_path}/v1/users/7", root_path=root_path)
    assert records == [("/v1/users/{user_id}", 200)]


async def test_a_parameterised_mount_is_reported_as_its_template(
    make_aegis: Callable[..., Aegis],
) -> None:
    """/{tenant}/api mounts: every tenant's request gets the same template, never the
    first tenant's name."""
    aegis = make_aegis()
    app = Starlette(routes=[Mount("/{tenant}/api", app=fastapi_sub_app())])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    records = await routes_of(aegis, app, "/acme/api/users/1", "/globex/api/users/2")
    assert records == [("/{tenant}/api/users/{user_id}", 200)] * 2


async def test_a_status_given_as_an_int_enum_is_stored(make_aegis: Callable[..., Aegis]) -> None:
    """Starlette passes HTTPStatus (an IntEnum) through as the status: stored as 201."""
    from http import HTTPStatus

    from starlette.responses import JSONResponse

    aegis = make_aegis()

    async def create(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=HTTPStatus.CREATED)

    app = Starlette(routes=[Route("/things", create, methods=["POST"])])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    await call(app, http_scope("/things", method="POST"))
    [record] = recorded(aegis)
    assert (record.route, record.status, type(record.status)) == ("/things", 201, int)
    assert aegis.stats().dropped["invalid"] == 0

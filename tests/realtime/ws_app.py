"""The app the /ws/metrics tests serve with uvicorn; options come from AEGIS_* variables."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import AegisMiddleware


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def fail(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=500)


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.path_params["item_id"]))


app = Starlette(
    routes=[Route("/ok", ok), Route("/fail", fail), Route("/items/{item_id:int}", item)],
    middleware=[Middleware(AegisMiddleware, sink="memory://")],
)

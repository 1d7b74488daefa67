"""The app the storage-outage tests serve with uvicorn; options come from AEGIS_*
variables. ``/plain`` is a plain ``def`` endpoint: Starlette runs it in the
server's shared thread pool, the capacity monitoring reads must never take."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import AegisMiddleware


def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("plain")


app = Starlette(routes=[Route("/plain", plain)], middleware=[Middleware(AegisMiddleware)])

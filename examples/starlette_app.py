"""A Starlette app with aegis_mw, including a mounted sub-application.

Run it:
    uvicorn examples.starlette_app:app --port 8000
Requests to /api/v1/users/7 are recorded with route "/api/v1/users/{user_id}".
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from aegis_mw.contrib.starlette import install


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def user(request: Request) -> JSONResponse:
    return JSONResponse({"user_id": request.path_params["user_id"]})


app = Starlette(
    routes=[
        Route("/", homepage),
        Mount("/api/v1", routes=[Route("/users/{user_id:int}", user)]),
    ],
)
# Outermost of the app's middleware (add yours before this call).
aegis = install(app, sink="sqlite:///aegis.db")

"""install(app): one call puts the middleware outermost, so an error raised by
another middleware is recorded; twice is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from aegis_mw import Aegis
from aegis_mw.contrib.fastapi import install
from aegis_mw.testing import recorded
from tests.harness import call, http_scope

pytestmark = pytest.mark.anyio


class Refusing:
    """A middleware of the app's that raises for one path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") == "/guarded":
            raise PermissionError("refused by another middleware")
        await self.app(scope, receive, send)


async def test_outermost_and_once(make_aegis: Callable[..., Aegis]) -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return {"item_id": item_id}

    app.add_middleware(Refusing)
    aegis = install(app, aegis=make_aegis(metrics_registry="none"))
    assert (await call(app, http_scope("/items/1"))).status == 200
    with pytest.raises(PermissionError):
        await call(app, http_scope("/guarded"))
    ok, refused = recorded(aegis)
    assert (ok.route, ok.status) == ("/items/{item_id}", 200)
    assert (refused.status, refused.error) == (
        500,
        "PermissionError: refused by another middleware",
    )
    with pytest.raises(RuntimeError, match="installed on this app already"):
        install(app, aegis=aegis)

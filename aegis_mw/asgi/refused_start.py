"""What an ASGI app whose aegis_mw options were refused answers.

The lifespan startup fails with the option's message, so the server logs it
and refuses to start (uvicorn exits non-zero). A server that runs without
lifespan cannot be stopped from here: each HTTP request then answers 500 with
the message in a JSON body, and the log carries it once, not per request.
"""

from __future__ import annotations

import json
import logging

from ..types import Receive, Scope, Send
from .middleware import AegisMiddleware

logger = logging.getLogger("aegis_mw")


def startup_message(error: Exception) -> str:
    """The error as a user reads it: a ConfigError's text already names the
    option, its value, where it came from and what is allowed."""
    from ..core.errors import ConfigError

    if isinstance(error, ConfigError):
        return str(error)
    return f"aegis_mw could not start: {type(error).__name__}: {error}"


class RefusedStart(AegisMiddleware):
    """An ``AegisMiddleware`` whose options were refused (it becomes one in
    ``__init__``): the server is told at startup, and without lifespan every
    request hears why."""

    startup_error: Exception
    _told = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await refuse_start(self, scope, receive, send)


async def refuse_start(owner: RefusedStart, scope: Scope, receive: Receive, send: Send) -> None:
    message = startup_message(owner.startup_error)
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": message})
                return
            if event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if not owner._told:
        owner._told = True
        logger.error("%s; every request answers 500 until it is fixed", message)
    if kind == "http":
        body = json.dumps({"error": {"code": "misconfigured", "message": message}}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif kind == "websocket":
        await send({"type": "websocket.close", "code": 1011})

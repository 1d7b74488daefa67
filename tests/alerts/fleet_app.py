"""The app tests/alerts/test_fleet.py serves with gunicorn: every worker builds
its own Aegis from the settings file the test names in ``AEGIS_CONFIG`` (the
PostgreSQL sink, the alert rule, the webhook channel), as a deployed app would.

``/fail`` answers 500, any other path 200; each answer's body is the pid of
the worker that served it.
"""

from __future__ import annotations

import os
from typing import Any

from aegis_mw import Aegis, AegisMiddleware

# Built at import, in each worker (no --preload): the settings come from the
# environment the test gave gunicorn (AEGIS_CONFIG).
aegis = Aegis()


async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = str(os.getpid()).encode()
    status = 500 if scope["path"] == "/fail" else 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = AegisMiddleware(endpoint, aegis=aegis)

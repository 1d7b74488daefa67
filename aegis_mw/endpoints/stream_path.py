"""Plain HTTP requests on the stream's path (``ws_path``).

A server without WebSocket support (uvicorn with ``--ws none``, or with
neither ``websockets`` nor ``wsproto`` installed, as after a bare
``pip install uvicorn``) passes a WebSocket handshake on to the app as an
ordinary HTTP request. The app has no route there and answers 404, which
tells the person at the dashboard nothing. Here such a request gets a 426
naming what to install, and the log says so once: the server's support does
not change while it runs, so one line is the whole story and a page retrying
every few seconds must not repeat it.

Once a handshake has arrived this way, a plain ``GET`` of the path (which a
page can send, unlike a handshake) is told the same, so the dashboard can
show why it polls. Example::

    answers = StreamPathAnswers("/ws/metrics", fix=ASGI_FIX)
    response = answers.respond(upgrade="websocket")  # 426 websocket_unsupported
"""

from __future__ import annotations

import logging

from .response import Response

logger = logging.getLogger("aegis_mw.realtime")

#: What an ASGI app's user can do about it.
ASGI_FIX = (
    "install uvicorn[standard] (or websockets) and restart; with uvicorn, do not pass --ws none"
)
#: A WSGI server has no WebSockets at all: the stream needs a port of its own.
WSGI_FIX = "set the ws_port option so the stream is served on a port of its own"


class StreamPathAnswers:
    """The answers to HTTP requests on ``ws_path``, for one pipeline."""

    def __init__(self, ws_path: str, *, fix: str) -> None:
        self.ws_path = ws_path
        self.fix = fix
        #: A WebSocket handshake has arrived as plain HTTP: the server cannot
        #: take one. Set once, never cleared (a server does not gain support).
        self.unsupported = False

    def respond(self, upgrade: str) -> Response:
        """The 426 answer; ``upgrade`` is the request's ``Upgrade`` header."""
        if "websocket" in upgrade.lower() and not self.unsupported:
            # A race between two threads costs at most one more line.
            self.unsupported = True
            logger.warning(
                "aegis: a WebSocket handshake for %s arrived as a plain HTTP request: "
                "the server has no WebSocket support, so the live stream cannot open "
                "and the dashboard polls the JSON API instead. To fix it: %s (logged once)",
                self.ws_path,
                self.fix,
            )
        if self.unsupported:
            return Response.error(
                426,
                "websocket_unsupported",
                f"{self.ws_path} is a WebSocket stream, but the server has no WebSocket "
                f"support: {self.fix}",
                upgrade="websocket",
            )
        return Response.error(
            426,
            "upgrade_required",
            f"{self.ws_path} is a WebSocket stream: open it with a WebSocket client",
            upgrade="websocket",
        )

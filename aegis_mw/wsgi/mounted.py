"""The routes the middleware serves itself, inside a WSGI app: ``/metrics``,
the health routes, the JSON API and ``/dashboard``, with the same access
rules as under ASGI (``asgi/mounted.py`` decides; this module only speaks
WSGI). Health checks are async functions run by anyio: each probe runs them
in a short event loop of its own (WSGI has none).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..asgi.mounted import MountedRoutes
from ..endpoints.alert_writes import MAX_BODY, too_large
from ..endpoints.app_routes import HasRoute, report
from ..endpoints.dashboard import render as render_dashboard
from ..endpoints.reads import CHECKS, RENDER, STORE
from ..endpoints.response import Response
from ..endpoints.stream_path import WSGI_FIX, StreamPathAnswers
from .realtime import RealtimeServer, require_websockets

if TYPE_CHECKING:
    from ..aegis import Aegis

_STATUS_TEXT = {200: "OK", 201: "Created", 303: "See Other", 304: "Not Modified",
                400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
                415: "Unsupported Media Type", 426: "Upgrade Required", 429: "Too Many Requests",
                500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


#: Access group -> read lane: history reads, health checks, the rest rendered.
_LANES = {"api": STORE, "health": CHECKS}


def scope_of(environ: dict[str, Any], scheme: str | None = None) -> dict[str, Any]:
    """The parts of an ASGI scope the access rules read, from a WSGI environ
    (``scheme``, when given, wins over ``wsgi.url_scheme``)."""
    headers = [
        (
            name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1"),
            str(value).encode("latin-1"),
        )
        for name, value in environ.items()
        # And the two headers WSGI gives without the prefix.
        if name.startswith("HTTP_") or name in ("CONTENT_TYPE", "CONTENT_LENGTH")
    ]
    client = environ.get("REMOTE_ADDR")
    return {
        "type": "http",
        "scheme": scheme or environ.get("wsgi.url_scheme", "http"),
        "path": environ.get("PATH_INFO", ""),
        "headers": headers,
        "query_string": str(environ.get("QUERY_STRING", "")).encode("latin-1"),
        "client": (client, int(environ.get("REMOTE_PORT") or 0)) if client else None,
    }


def read_body(environ: dict[str, Any], read: Callable[[int], bytes] | None) -> bytes | Response:
    """A write's body, at most MAX_BODY bytes (else 413): ``read`` or
    ``wsgi.input``, as long as ``CONTENT_LENGTH`` says (none: no body,
    unless the server marks the input as ending by itself)."""
    length = str(environ.get("CONTENT_LENGTH") or "").strip()
    if length.isdigit():
        if int(length) > MAX_BODY:
            return too_large()
        wanted = int(length)
    elif read is not None or environ.get("wsgi.input_terminated"):
        wanted = MAX_BODY + 1  # the stream ends by itself: read past the bound to see it
    else:
        return b""  # a read without a length could wait for ever (PEP 3333)
    if read is None:
        stream = environ.get("wsgi.input")
        if stream is None:
            return b""
        read = stream.read
    body = b""
    while len(body) < wanted:
        chunk = read(wanted - len(body))
        if not chunk:
            break
        body += chunk
    return too_large() if len(body) > MAX_BODY else body


class WSGIRoutes:
    """Path -> a synchronous handler, for the routes the settings switch on."""

    def __init__(self, aegis: Aegis) -> None:
        self.aegis = aegis
        self.shared = MountedRoutes(aegis)  # access rules, the API, the paths
        aegis.health.watch_loop = False  # no app event loop to watch
        settings = aegis.settings
        handlers: dict[str, Callable[[dict[str, Any]], Response]] = {
            settings.metrics_path: self._metrics,
            settings.health_path: lambda scope: self._run(aegis.health.report),
            settings.liveness_path: lambda scope: aegis.health.liveness(),
            settings.readiness_path: lambda scope: self._run(aegis.health.readiness),
            settings.dashboard_path: self._dashboard,
        }
        if self.shared.api is not None:
            prefix = settings.api_path + "/"
            for path in self.shared.handlers:
                if path.startswith(prefix):
                    handlers[path] = functools.partial(self._api, path[len(prefix) :])
        self.handlers = {path: handler for path, handler in handlers.items() if path}
        self._page: Response | None = None
        #: The stream's own server (``ws_port``), started by the first request
        #: of each process; None when the settings ask for none.
        self.realtime: RealtimeServer | None = None
        if settings.ws_port and settings.ws_path:
            require_websockets(settings.ws_port, settings.sources.get("ws_port", ""))
            self.realtime = RealtimeServer(self.shared, settings.ws_host, settings.ws_port)
        #: Plain HTTP on the stream's path (a WSGI server takes no handshake).
        self.stream_path: StreamPathAnswers | None = None
        if settings.ws_path:
            fix = (
                f"open the stream on port {settings.ws_port}, where it is served"
                if self.realtime is not None
                else WSGI_FIX
            )
            self.stream_path = StreamPathAnswers(settings.ws_path, fix=fix)
            self.handlers[settings.ws_path] = self._stream

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self.handlers)

    def yield_to_app(self, has_route: HasRoute) -> list[str]:
        """Drop our routes where the app has its own; the paths given up, logged.
        (The stream is on a port of its own: no path of the app's to yield.)"""
        given_up = [path for path in list(self.handlers) if has_route(path)]
        for path in given_up:
            self.handlers.pop(path, None)
            self.shared.handlers.pop(path, None)
        report(self.aegis.settings, given_up)
        return given_up

    def lane(self, path: str) -> str:
        """The read lane (``aegis.reads``) a mounted path's answer runs in, where
        the server has an event loop (Django under ASGI)."""
        route = self.shared.handlers.get(path)
        return RENDER if route is None else _LANES.get(route[0], RENDER)

    def serve(self, app: Any, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """An excluded path: ours if it is a mounted route, else the app's, unrecorded."""
        response = self.respond(environ)
        if response is None:
            result: Iterable[bytes] = app(environ, start_response)
            return result
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            *response.headers,
        ]
        reason = _STATUS_TEXT.get(response.status, "Unknown")
        start_response(f"{response.status} {reason}", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else response.body]

    def respond(
        self,
        environ: dict[str, Any],
        scheme: str | None = None,
        read: Callable[[int], bytes] | None = None,
    ) -> Response | None:
        """The answer of the mounted route at ``PATH_INFO`` (refusals and the
        dashboard's token traded for a cookie included), or None when no route
        is mounted there; ``scheme`` is the request's when the framework knows
        better than ``wsgi.url_scheme``, ``read`` reads its body when the
        framework holds it (Django's ``request.read``). Blocking: never on an
        event loop."""
        handler = self.handlers.get(environ.get("PATH_INFO", ""))
        if handler is None:
            return None
        scope = scope_of(environ, scheme)
        route = self.shared.handlers.get(scope["path"])
        if route is None:  # the stream's path: no data there, so no access rule
            return handler(scope)
        group = route[0]
        method = environ.get("REQUEST_METHOD", "GET")
        early, decision = self.shared.admit(group, scope, method)
        if early is not None:
            return early
        if method in ("GET", "HEAD"):
            return handler(scope)
        try:
            body = read_body(environ, read)
        except (OSError, ValueError):  # the client left mid-body (Django's UnreadablePostError)
            return Response.error(400, "body_unreadable", "the request's body could not be read")
        if isinstance(body, Response):
            return body
        shared = self.shared
        return shared.writes.respond(
            method, shared.endpoints[scope["path"]], scope["query_string"], body,
            shared.actor(scope, decision), shared.idempotency(scope, decision),
        )  # fmt: skip

    def _api(self, endpoint: str, scope: dict[str, Any]) -> Response:
        api = self.shared.api
        if api is None:  # never: the API's paths are mounted with it
            return Response.error(404, "not_found", "the JSON API is switched off")
        return api.respond(endpoint, scope["query_string"])

    def _stream(self, scope: dict[str, Any]) -> Response:
        assert self.stream_path is not None  # mounted only with it
        return self.stream_path.respond(
            dict(scope["headers"]).get(b"upgrade", b"").decode("latin-1")
        )

    def _metrics(self, scope: dict[str, Any]) -> Response:
        headers = dict(scope["headers"])
        accept = headers.get(b"accept", b"").decode("latin-1")
        encoding = headers.get(b"accept-encoding", b"").decode("latin-1")
        return self.aegis.metrics.endpoint.respond(accept, encoding)

    def _dashboard(self, scope: dict[str, Any]) -> Response:
        realtime = self.realtime
        if realtime is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            if host:
                realtime.served_to(host)  # its page may open the stream on its port
        if self._page is None:
            if realtime is not None:
                page = render_dashboard(self.aegis.settings, ws_port=realtime.port)
            else:
                page = render_dashboard(self.aegis.settings, ws_path="")  # the page polls
            self._page = page
        return self._page

    @staticmethod
    def _run(check: Callable[[], Any]) -> Response:
        import anyio

        response: Response = anyio.run(check)
        return response

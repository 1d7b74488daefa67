"""The routes the middleware answers itself, before the app sees the request.

``/metrics``, ``/health``, ``/health/live``, ``/health/ready``, the JSON API
under ``/api/metrics/`` and the ``/dashboard`` page: matched on the exact
``scope["path"]``, never recorded as app traffic (they are added to the
excluded paths), and answered whatever the app has on the same path, so a
scraper or a probe never depends on the app's routing. Blocking work (reading
the aggregates under the flusher's lock, rendering, reading history) runs in
worker threads of our own lanes (``aegis.reads``), never under the server's
shared limiter the app's ``def`` endpoints need. A token in the dashboard's
URL is traded for a cookie at once (see :mod:`aegis_mw.endpoints.token_cookie`),
so it is not in the access log line of every page load.

The API's writes (events, alert rules, silences, a test notice, a dry run:
see :mod:`aegis_mw.endpoints.writes`) need the editor role, a JSON body
of at most ``MAX_BODY`` bytes, and a same-site request: a browser's
``Origin`` (or ``Sec-Fetch-Site``) naming another site is refused, and a
write authorised by the page's cookie alone must carry its own host's
``Origin`` (a form another site posts cannot); JSON bodies cannot be sent
across sites without a CORS preflight we never grant.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from ..access.check import ADMIN, EDITOR, Decision, decide
from ..core.access_rules import AccessRule
from ..endpoints.alert_writes import MAX_BODY, too_large
from ..endpoints.api import PARAMETERS, MetricsAPI
from ..endpoints.app_routes import HasRoute, report
from ..endpoints.dashboard import render as render_dashboard
from ..endpoints.reads import RENDER, STORE
from ..endpoints.response import Response
from ..endpoints.stream_path import ASGI_FIX, StreamPathAnswers
from ..endpoints.token_cookie import TOKEN_COOKIE, cookie_paths, token_login
from ..endpoints.writes import READ_ROLES, WRITES, ApiWrites, write_role
from ..types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from ..aegis import Aegis

Handler = Callable[[Scope], Awaitable[Response]]
_READ_METHODS = ("GET", "HEAD")
OPEN = Decision(True, "viewer")
#: The write methods whose requests carry a JSON body.
_BODY_METHODS = ("POST", "PUT", "PATCH")


def header(scope: Scope, name: bytes) -> str:
    """All values of one request header, joined by commas (latin-1, as HTTP is)."""
    values = [value for key, value in scope.get("headers") or () if key.lower() == name]
    return b",".join(values).decode("latin-1")


async def send_response(send: Send, response: Response, *, head: bool) -> None:
    headers = [
        (b"content-type", response.content_type.encode("latin-1")),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", b"no-store"),
        *((name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


def query_token(scope: Scope) -> str:
    """The ``token`` query parameter, or ""."""
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    for name, value in parse_qsl(query):
        if name == "token" and value:
            return str(value)
    return ""


def cookie_token(scope: Scope) -> str:
    """The ``aegis_token`` cookie, or ""."""
    cookies = header(scope, b"cookie")
    if cookies:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookies)
        except CookieError:
            return ""
        morsel = jar.get(TOKEN_COOKIE)
        if morsel is not None:
            return str(morsel.value)
    return ""


def token_of(scope: Scope) -> str:
    """A token from the ``token`` query parameter or the ``aegis_token`` cookie."""
    return query_token(scope) or cookie_token(scope)


def origin_allowed(scope: Scope, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the app's own host, or an allowed origin."""
    origin = header(scope, b"origin").strip().lower()
    if not origin:
        return True
    if "*" in allowed or origin in allowed:
        return True
    host = header(scope, b"host").strip().lower()
    # The page's own host: same host and port, whatever the scheme (a TLS
    # terminating proxy turns https into http before the app sees it).
    return bool(host) and origin.partition("://")[2] == host


def write_refusal(
    scope: Scope, method: str, decision: Decision, role: str = EDITOR
) -> Response | None:
    """Why a write is refused, or None: it needs ``role`` (editor or admin), a JSON
    body (a form cannot send one), and no sign of another site: an
    ``Origin`` other than the request's own host, ``Sec-Fetch-Site`` saying
    cross-site, or (for a write a cookie authorises, which a browser adds
    by itself, whatever else the request carries) no ``Origin`` at all."""
    if not decision.may(role):
        given = "admin_tokens or admin_basic" if role == ADMIN else (
            "editor_tokens, editor_basic, admin_tokens or admin_basic"
        )  # fmt: skip
        return Response.error(
            403, "forbidden",
            f"{method} needs the {role} role: give the api group {given}, and use one of them",
        )  # fmt: skip
    site = header(scope, b"sec-fetch-site").strip().lower()
    if site and site not in ("same-origin", "none"):
        return Response.error(403, "cross_site", f"a write from a {site} page is refused")
    if not origin_allowed(scope, ()):  # the app's own host only
        return Response.error(403, "cross_site", "a write from another origin is refused")
    if not header(scope, b"origin").strip() and not decision.by_header:
        return Response.error(
            403, "cross_site",
            "a write authorised by the cookie needs its page's Origin header; scripts send "
            "Authorization instead",
        )  # fmt: skip
    if method in _BODY_METHODS:
        kind = header(scope, b"content-type").partition(";")[0].strip().lower()
        if kind != "application/json":
            return Response.error(
                415,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)",
            )
    return None


async def receive_body(receive: Receive, length: str) -> bytes | Response | None:
    """The request's body, at most MAX_BODY bytes (else 413 at once, the
    rest unread); None when the client disconnects first."""
    if length.strip().isdigit() and int(length) > MAX_BODY:
        return too_large()
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > MAX_BODY:
            return too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class MountedRoutes:
    """Path -> handler for the routes the settings switch on."""

    def __init__(self, aegis: Aegis) -> None:
        settings = aegis.settings
        self.aegis = aegis
        self.rules: dict[str, AccessRule] = aegis.access_rules
        #: path -> (access group, handler)
        self.handlers: dict[str, tuple[str, Handler]] = {}
        routes: list[tuple[str, str, Handler]] = [
            (settings.metrics_path, "metrics", self._metrics),
            (settings.health_path, "health", self._health),
            (settings.liveness_path, "liveness", self._liveness),
            (settings.readiness_path, "health", self._readiness),
            (settings.dashboard_path, "dashboard", self._dashboard),
        ]
        self.api: MetricsAPI | None = None
        self.writes = ApiWrites(aegis)
        self._page: Response | None = None  # the dashboard, rendered on first request
        #: API path -> its endpoint ("silences"), for the methods it takes.
        self.endpoints: dict[str, str] = {}
        if settings.api_path:
            self.api = MetricsAPI(aegis)
            for endpoint in dict.fromkeys((*PARAMETERS, *WRITES)):
                handler = functools.partial(self._api, endpoint)
                path = f"{settings.api_path}/{endpoint}"
                routes.append((path, "api", handler))
                self.endpoints[path] = endpoint
        self.handlers.update((path, (group, handler)) for path, group, handler in routes if path)
        #: Plain HTTP on the stream's path: a handshake the server could not
        #: take comes this way (see :mod:`aegis_mw.endpoints.stream_path`).
        self.stream_path = (
            StreamPathAnswers(settings.ws_path, fix=ASGI_FIX) if settings.ws_path else None
        )
        #: Where a handshake opens the stream; None when switched off or the
        #: app has its own WebSocket route there.
        self.ws_path: str | None = settings.ws_path or None

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths answered here over HTTP (the stream's path included)."""
        stream = self.stream_path
        return (*self.handlers, *((stream.ws_path,) if stream is not None else ()))

    def yield_to_app(
        self, has_route: HasRoute, has_websocket_route: HasRoute | None = None
    ) -> list[str]:
        """Drop our routes where the app has its own; the paths given up, logged.
        The stream is given up to the app's WebSocket route on its path (an
        HTTP route there takes no handshake), and plain HTTP on that path to
        the app as well then, or to its HTTP route there."""
        given_up = [path for path in list(self.handlers) if has_route(path)]
        for path in given_up:
            self.handlers.pop(path, None)
        stream = self.stream_path
        if stream is not None:
            if has_websocket_route is not None and has_websocket_route(stream.ws_path):
                self.ws_path = None
                given_up.append(stream.ws_path)
            if self.ws_path is None or has_route(stream.ws_path):
                self.stream_path = None  # not excluded: the app's, recorded
        report(self.aegis.settings, given_up)
        return given_up

    async def pass_through(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """An excluded path: ours if it is a mounted route, else the app's, untouched."""
        route = self.handlers.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            stream = self.stream_path
            if stream is not None and scope["type"] == "http" and scope["path"] == stream.ws_path:
                # No data in this answer, so no access rule: it says only what
                # the server lacks, and the page needs it to say why it polls.
                response = stream.respond(header(scope, b"upgrade"))
                await send_response(send, response, head=scope.get("method") == "HEAD")
                return
            await app(scope, receive, send)
            return
        group, handler = route
        method = scope.get("method", "GET")
        early, decision = self.admit(group, scope, method)
        if early is not None:
            response = early
        elif method in _READ_METHODS:
            response = await handler(scope)
        else:
            body = await receive_body(receive, header(scope, b"content-length"))
            if body is None:
                return  # the client left: nobody to answer
            response = (
                body
                if isinstance(body, Response)
                else await self.write(scope, method, body, decision)
            )
        await send_response(send, response, head=method == "HEAD")

    async def write(self, scope: Scope, method: str, body: bytes, decision: Decision) -> Response:
        """A write's answer, from a thread of the ``store`` lane."""
        return await self.aegis.reads.threads.respond(
            STORE, self.writes.respond, method, self.endpoints[scope["path"]],
            bytes(scope.get("query_string", b"")), body, self.actor(scope, decision),
            self.idempotency(scope, decision),
        )  # fmt: skip

    def actor(self, scope: Scope, decision: Decision) -> str:
        """Who writes, for the audit: the credential's name and the address."""
        return f"{decision.actor or decision.role} via api from {self.client_ip(scope) or '?'}"

    def idempotency(self, scope: Scope, decision: Decision) -> tuple[str, str] | None:
        """A write's ``Idempotency-Key`` header (None without one), and whose
        credential sent it: a key is the credential's, from any address."""
        if not any(name.lower() == b"idempotency-key" for name, _ in scope.get("headers") or ()):
            return None
        return header(scope, b"idempotency-key"), decision.actor or decision.role

    def admit(self, group: str, scope: Scope, method: str) -> tuple[Response | None, Decision]:
        """The answer given instead of the route's own: a refusal (401/403 by
        the group's rule, 405 for a method the route does not take, a write
        refused by :func:`write_refusal`), or the dashboard's URL token traded
        for a cookie (303); None to serve the route. With the group's
        decision (who asks). Shared with the WSGI side."""
        # The page's token may come from its URL or a cookie: a browser
        # opening a link cannot send an Authorization header. The page's own
        # API calls carry the cookie the URL's token was traded for.
        token = ""
        if group == "dashboard":
            token = token_of(scope)
        elif group == "api":
            token = cookie_token(scope)
        decision = self.authorize(group, scope, token=token)
        if not decision.allowed:
            response = Response.error(decision.status, decision.code, decision.message)
            response.headers.extend(decision.headers)
            return response, decision
        endpoint = self.endpoints.get(scope["path"]) if group == "api" else None
        reads = _READ_METHODS if endpoint is None or endpoint in PARAMETERS else ()
        writes = WRITES.get(endpoint, ()) if endpoint is not None else ()
        if method in writes:
            return write_refusal(scope, method, decision, write_role(endpoint or "")), decision
        needs = READ_ROLES.get(endpoint or "") if method in reads else None
        if needs is not None and not decision.may(needs):
            message = (
                f"reading this needs the {needs} role: give the api group admin_tokens "
                "or admin_basic, and use one of them"
            )
            return Response.error(403, "forbidden", message), decision
        if method not in reads:
            allowed = ", ".join((*reads, *writes))
            message = f"{method} is not allowed here; use {allowed}"
            return Response.error(405, "method_not_allowed", message, allow=allowed), decision
        if group == "dashboard":
            return self._token_login(scope), decision
        return None, decision

    def _token_login(self, scope: Scope) -> Response | None:
        token = query_token(scope)
        # Traded only when it is a credential some rule of the page's routes
        # takes: a token nobody asked for is left alone.
        if not token or not any(
            self.admits_token(group, scope, token) for group in ("dashboard", "api", "websocket")
        ):
            return None
        secure = scope.get("scheme") in ("https", "wss")
        settings = self.aegis.settings
        return token_login(
            token,
            settings.dashboard_path,
            bytes(scope.get("query_string", b"")),
            cookie_paths(settings),
            secure=secure,
        )

    def admits_token(self, group: str, scope: Scope, token: str) -> bool:
        """Whether ``token`` itself is a credential the group's rule takes (an
        Authorization header the request may carry does not count)."""
        rule = self.rules.get(group)
        if rule is None or not rule.needs_credentials:
            return False
        client_ip = self.client_ip(scope)
        return decide(rule, authorization="", client_ip=client_ip, token=token).allowed

    def authorize(self, group: str, scope: Scope, *, token: str = "") -> Decision:
        """The group's rule against this request (the client address after
        trusted proxies); ``token`` is one taken from a cookie or the query."""
        rule = self.rules.get(group)
        if rule is None:
            return OPEN
        return decide(
            rule,
            authorization=header(scope, b"authorization"),
            client_ip=self.client_ip(scope),
            token=token,
        )

    def client_ip(self, scope: Scope) -> str | None:
        """The client's address, after trusted proxies."""
        client = scope.get("client")
        peer = str(client[0]) if client else None
        addresses = self.aegis.client_addresses
        if addresses.enabled and addresses.peer_is_trusted(peer):
            forwarded = addresses.forwarded_value(scope.get("headers") or ())
            return addresses.resolve(peer, forwarded, strict=True)
        return peer

    async def read_history(self, endpoint: str, query_string: bytes) -> Response:
        """The JSON API's answer, from a thread of the ``store`` lane (shared
        with the stream's ``get``)."""
        api = self.api
        if api is None:  # never: the API's routes are mounted with it
            return Response.error(404, "not_found", "the JSON API is switched off")
        return await self.aegis.reads.threads.respond(STORE, api.respond, endpoint, query_string)

    async def _metrics(self, scope: Scope) -> Response:
        endpoint = self.aegis.metrics.endpoint
        accept, encoding = header(scope, b"accept"), header(scope, b"accept-encoding")
        return await self.aegis.reads.threads.respond(RENDER, endpoint.respond, accept, encoding)

    async def _api(self, endpoint: str, scope: Scope) -> Response:
        return await self.read_history(endpoint, scope.get("query_string", b""))

    async def _dashboard(self, scope: Scope) -> Response:
        page = self._page
        if page is None:
            threads = self.aegis.reads.threads
            page = await threads.respond(RENDER, render_dashboard, self.aegis.settings)
            if page.status == 200:  # not a "busy" answer
                self._page = page
        return page

    async def _health(self, scope: Scope) -> Response:
        return await self.aegis.health.report()

    async def _liveness(self, scope: Scope) -> Response:
        return self.aegis.health.liveness()

    async def _readiness(self, scope: Scope) -> Response:
        return await self.aegis.health.readiness()

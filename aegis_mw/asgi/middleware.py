"""``AegisMiddleware``: pure ASGI, one record per request, nothing else changed.

HTTP requests take the compiled path (``compiled.py``, ``_hotpath_c/``) where
it was built. The pure-Python path below is the reference and the fallback:
both must record the same thing, and the tests run both. ``__call__`` itself
stays an ``async def`` either way, so servers detect an ASGI 3 app.

With the compiled path, a call ``(scope, receive, send)`` of an instance does
not run ``__call__`` at all: the class's call slot hands it to the compiled
object (``compiled.call_directly``). ``__call__`` is the Python path, a call by
keyword, and what a subclass's own ``__call__`` reaches through ``super()``.

The Python path is written inline in ``__call__`` on purpose: every call,
attribute lookup and allocation here is paid by every request of its users,
and ``bench/`` measures each one. The request's inbox item (a list, layout in
``core/items.py``) is built once when the request starts and *is* the
per-request state: the ``send`` and ``receive`` wrappers (``observers.py``)
write status, times and byte counts into it, and at the end it is queued as
is. Nothing per request lives on ``self``. The closures live in
``observers.py`` rather than here so that ``__call__`` has no cell variables.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..aegis import Aegis
from ..core.outcome import settle
from ..core.trace_context import asgi_trace
from ..endpoints.app_routes import starlette_routes
from ..types import ASGIApp, Receive, RouteReader, Scope, Send
from . import compiled
from .lifespan import run_lifespan
from .mounted import MountedRoutes
from .observers import observe_receive, observe_send
from .routing import ScopeRouteReader
from .websocket import record_session


class AegisMiddleware:
    """Records every HTTP request and WebSocket session of an ASGI app.

    Use it either way::

        app.add_middleware(AegisMiddleware, sink="sqlite:///aegis.db")
        app = AegisMiddleware(app, sink="memory://")

    Pass ``aegis=Aegis(...)`` to keep a handle on the pipeline (for
    ``force_flush``/``stats``), or options to build one. Lifespan events pass
    through; on ``lifespan.shutdown`` the buffers are flushed off the event
    loop before the server is told shutdown is complete.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        aegis: Aegis | None = None,
        route_reader: RouteReader | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        try:
            self._build(aegis, route_reader, options)
        except Exception as error:
            # Starlette builds its middleware on its first call, the lifespan:
            # raised there, the error reads as "lifespan unsupported" to the
            # server, which then starts and answers every request 500. Kept
            # instead, it is reported as lifespan.startup.failed, so the server
            # refuses to start with the message.
            from .refused_start import RefusedStart

            self.__class__ = RefusedStart
            self.startup_error = error

    def _build(
        self, aegis: Aegis | None, route_reader: RouteReader | None, options: dict[str, Any]
    ) -> None:
        if aegis is not None and options:
            raise TypeError("pass either aegis=Aegis(...) or options, not both")
        self.aegis = aegis if aegis is not None else Aegis(**options)
        if self.aegis.asgi_lifespan is None:
            self.aegis.asgi_lifespan = False
        reader = route_reader if route_reader is not None else ScopeRouteReader()
        self.route_reader = reader
        # The default reader's cache is looked up inline (see __call__); with a
        # reader of the user's it stays empty and every request asks the reader.
        self._templates: dict[int, str] = (
            reader.templates if isinstance(reader, ScopeRouteReader) else {}
        )
        # A bound method is cheaper to call than an instance's __call__.
        self._read_route = reader.read if isinstance(reader, ScopeRouteReader) else reader
        self._excluded = self.aegis.excluded_paths
        # Routes answered here (/metrics, health): excluded from recording, and
        # every excluded path goes through pass_through, which serves them.
        self._mounted = MountedRoutes(self.aegis)
        # The app's own routes on our paths stay the app's (endpoints/app_routes.py).
        has_route = starlette_routes(self.app)
        if has_route is not None:
            self._mounted.yield_to_app(has_route, starlette_routes(self.app, websocket=True))
        # The realtime stream (None: switched off, or the app's): never recorded.
        self._ws_path = self._mounted.ws_path
        self.aegis.exclude(*self._mounted.paths)
        self._recorder = self.aegis.recorder
        self._inbox = self.aegis.recorder.inbox
        self._aggregates = self.aegis.aggregates
        self._monotonic = self.aegis.clock.monotonic
        self._addresses = self.aegis.client_addresses
        self._check_forwarded = self._addresses.enabled
        #: Read by the compiled path too (recording.c): None, or where to look.
        self.trace_source = self.aegis.trace_source
        self._error_limit = self.aegis.settings.max_error_length
        self._compiled = compiled.build(self) if self.aegis.settings.speedups else None
        if self.aegis.settings.tracing:
            from .tracing import attach_tracing

            attach_tracing(self)
        # Only while __call__ is this module's own: one patched or wrapped (an
        # instrumentation, a test's mock) is what every call must run.
        if self._compiled is not None and type(self).__call__ is _OWN_CALL:
            compiled.call_directly(type(self))
        self.aegis.attached("compiled" if self._compiled is not None else "python")

    @property
    def compiled(self) -> bool:
        """Whether HTTP requests take the compiled path (see the ``speedups`` option)."""
        return self._compiled is not None

    def forwarded(self, scope: Scope) -> str | None:
        """The forwarded-for header, only when the peer is a trusted proxy."""
        client = scope.get("client")
        addresses = self._addresses
        if addresses.peer_is_trusted(client[0] if client else None):
            return addresses.forwarded_value(scope.get("headers") or ())
        return None

    def route_of(self, scope: Scope) -> str:
        template = self._templates.get(id(scope.get("route")))
        return template if template is not None else self._read_route(scope)

    async def serve_other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A scope other than HTTP: a WebSocket session, the lifespan, or one
        the middleware does not know (passed on)."""
        if scope["type"] == "websocket":
            if scope["path"] == self._ws_path:
                # Imported on first use: importing aegis_mw must not import anyio.
                from .realtime_ws import serve

                await serve(self._mounted, scope, receive, send)
            else:
                await record_session(self, scope, receive, send)
        elif scope["type"] == "lifespan":
            await run_lifespan(self.aegis, self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Called with (scope, receive, send), an instance with a compiled path
        # does not come here (compiled.call_directly): this is the Python
        # path, a call by keyword, and a subclass's own __call__'s super().
        if scope["type"] != "http":
            await self.serve_other(scope, receive, send)
            return
        fast = self._compiled
        if fast is not None:
            await fast(scope, receive, send)
            return
        path = scope["path"]
        excluded = self._excluded
        if path in excluded.literal or (excluded.match is not None and excluded.match(path)):
            await self.pass_through(scope, receive, send)
            return

        clock = self._monotonic
        # Indexes below are those of core/items.py, written as literals: a
        # constant is cheaper than a global on this path.
        item: list[Any] = [
            scope["method"], None, path, 0, clock(), None, None, 0, 0, scope.get("client"),
            None, "", False, None,
        ]  # fmt: skip
        if self.trace_source is not None:
            item[13] = asgi_trace(self.trace_source, scope)

        send_wrapper = observe_send(item, clock, send, self.trace_source)
        receive_wrapper = partial(observe_receive, item, receive)

        aggregates = self._aggregates
        aggregates.in_flight += 1
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException as exc:  # recorded, then re-raised unchanged
            aggregates.in_flight -= 1
            self._queue_failed(scope, item, exc)
            raise
        aggregates.in_flight -= 1
        try:
            if item[6] is None:
                settle(item, None, clock, self._error_limit)
            template = self._templates.get(id(scope.get("route")))  # route_of, inlined
            item[1] = template if template is not None else self._read_route(scope)
            if self._check_forwarded:
                item[10] = self.forwarded(scope)
            # Recorder.offer, inlined.
            inbox = self._inbox
            recorder = self._recorder
            queued = len(inbox)
            if queued < recorder.limit:
                inbox.append(item)
                if queued >= recorder.wake_at:
                    recorder.wake_flusher()
            else:
                recorder.refuse()
        except Exception:  # a bug of ours must not turn a served request into an error
            self._recorder.dropped["internal_error"] += 1

    async def pass_through(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An excluded path: a route the middleware serves, or the app, unrecorded."""
        await self._mounted.pass_through(self.app, scope, receive, send)

    def _settle_unfinished(self, item: list[Any]) -> None:
        """The app returned without finishing its response (compiled path)."""
        settle(item, None, self._monotonic, self._error_limit)

    def _internal_error(self) -> None:
        """A request the compiled path failed to record (a bug of ours)."""
        self._recorder.dropped["internal_error"] += 1

    def _queue_failed(self, scope: Scope, item: list[Any], failure: BaseException) -> None:
        """Record a request whose app raised; never raises itself, so the app's
        exception is the one that propagates."""
        try:
            settle(item, failure, self._monotonic, self._error_limit)
            item[1] = self.route_of(scope)
            if self._check_forwarded:
                item[10] = self.forwarded(scope)
            self._recorder.offer(item)
        except Exception:
            self._recorder.dropped["internal_error"] += 1


#: AegisMiddleware's own ``__call__``, as this module defined it.
_OWN_CALL = AegisMiddleware.__dict__["__call__"]

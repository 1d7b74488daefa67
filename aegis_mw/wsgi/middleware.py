"""``AegisWSGIMiddleware``: the records of the ASGI middleware, for WSGI apps.

The clock stops when the server calls ``close()`` on the response iterable
(PEP 3333), so a streamed body is timed to its last chunk; TTFB is the first
non-empty chunk (or the first ``write()``). Bytes are counted as they pass,
both ways. An exception from the app, or from iterating its response, is
recorded and re-raised unchanged; ``close()`` is forwarded to the app's
iterable exactly once, even when iteration raised. A response of the
server's ``wsgi.file_wrapper`` is handed back as it is (so ``sendfile()``
still works), with only its ``close()`` replaced. The item queued has the
layout the ASGI middleware queues (``core/items.py``), so records, metric
names and rollups are the same for every framework.

The route template comes from ``environ["aegis.route"]`` (where an
integration may leave it), else from ``route_reader`` (an
:class:`~aegis_mw.wsgi.routing.ObjectRouteReader` for Flask), else
``<unmatched>``: a raw path never becomes a label. A framework that turns
the app's exception into a response of its own (Flask outside debug mode)
never lets it reach the middleware; its integration may leave the text at
``environ["aegis.error"]``, which is recorded when the request has no error
of its own.

Requests take the compiled path (``_hotpath_c/wsgi_path.c``) where it was
built and the ``speedups`` option is on; the Python code below is the
reference it matches and the fallback.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..aegis import Aegis
from ..core.client_address import ClientAddressResolver
from ..core.outcome import settle
from ..core.record import UNMATCHED_ROUTE
from ..core.trace_context import environ_trace, response_trace
from ..endpoints.app_routes import HasRoute
from . import compiled
from .mounted import WSGIRoutes
from .responses import (
    Recorded,
    RecordedSized,
    count_chunk,
    counting_input,
    iteration_failed,
    watch_file,
)

StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
#: Where a framework integration may leave the matched route template.
ROUTE_KEY = "aegis.route"
#: Where it may leave the error of an exception the framework answered itself.
ERROR_KEY = "aegis.error"


class AegisWSGIMiddleware:
    """Records every request of a WSGI app and serves the mounted routes.

    Example::

        app.wsgi_app = AegisWSGIMiddleware(app.wsgi_app, sink="sqlite:///aegis.db")

    Pass ``aegis=Aegis(...)`` to keep a handle on the pipeline, or options to
    build one; ``route_reader(environ)`` may name the route template when no
    integration sets ``environ["aegis.route"]``.
    """

    def __init__(
        self,
        app: WSGIApp,
        /,
        *,
        aegis: Aegis | None = None,
        route_reader: Callable[[dict[str, Any]], str | None] | None = None,
        has_route: HasRoute | None = None,
        **options: Any,
    ) -> None:
        if aegis is not None and options:
            raise TypeError("pass either aegis=Aegis(...) or options, not both")
        self.app = app
        self.aegis = aegis if aegis is not None else Aegis(**options)
        self.route_reader = route_reader
        self._routes = WSGIRoutes(self.aegis)
        # The app's own routes on our paths stay the app's; asked again at the
        # first request, for routes the app added after this (Flask's style).
        self._has_route = has_route
        if has_route is not None:
            self._routes.yield_to_app(has_route)
        self.aegis.exclude(*self._routes.paths)
        self._excluded = self.aegis.excluded_paths
        self._recorder = self.aegis.recorder
        self._aggregates = self.aegis.aggregates
        self._monotonic = self.aegis.clock.monotonic
        self._addresses = self.aegis.client_addresses
        self._error_limit = self.aegis.settings.max_error_length
        # A WSGI server has no lifespan: the flusher (and the stream's server)
        # start with the first request of each process.
        self._started = False
        #: Read by the compiled path too (recording.c): None, or where to look.
        self.trace_source = self.aegis.trace_source
        self._compiled = compiled.build(self) if self.aegis.settings.speedups else None
        if self.aegis.settings.tracing:
            from .tracing import attach_tracing

            attach_tracing(self)
        self.aegis.attached("compiled" if self._compiled is not None else "python")
        if hasattr(os, "register_at_fork"):
            # By weak reference: a hook must not keep a discarded app alive.
            os.register_at_fork(after_in_child=functools.partial(_forked, weakref.ref(self)))

    @property
    def compiled(self) -> bool:
        """Whether requests take the compiled path (see the ``speedups`` option)."""
        return self._compiled is not None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        fast = self._compiled
        if fast is not None:
            answer: Iterable[bytes] = fast(environ, start_response)
            return answer
        return self.call_python(environ, start_response)

    def call_python(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """The pure-Python request path (also for an environ that is not a dict)."""
        if not self._started:
            self._start()
        path = environ.get("PATH_INFO", "") or "/"
        excluded = self._excluded
        if path in excluded.literal or (excluded.match is not None and excluded.match(path)):
            return self.serve_excluded(environ, start_response)
        clock = self._monotonic
        item: list[Any] = [
            environ.get("REQUEST_METHOD", "GET"), None, environ.get("SCRIPT_NAME", "") + path,
            0, clock(), None, None, 0, 0, client_of(environ), None, "", False, None,
        ]  # fmt: skip
        if self.trace_source is not None:
            item[13] = environ_trace(self.trace_source, environ)
        stream = environ.get("wsgi.input")
        if stream is not None and (
            environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING")
        ):
            environ["wsgi.input"] = counting_input(stream, item)

        source = self.trace_source
        tracing = source if source is not None and source[0] is not None else None
        server_write: Callable[[bytes], object] = _not_started
        sent_headers: list[tuple[str, str]] | None = None

        def write(data: bytes) -> None:  # the legacy write() callable, counted too
            count_chunk(item, data, clock)
            server_write(data)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal server_write, sent_headers
            item[3] = status_code(status)
            if tracing is not None:  # a span made current inside ours (Flask's instrumentation)
                item[13] = response_trace(tracing, item[13])
            sent_headers = headers
            server_write = start_response(status, headers, exc_info)
            return write

        self._aggregates.in_flight += 1
        try:
            result = self.app(environ, start)
        except BaseException as exc:  # recorded, then re-raised unchanged
            self._aggregates.in_flight -= 1
            self._queue(environ, item, exc)
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        try:
            # The isinstance() too: a wrapper's metaclass may raise, and that
            # must not fail the app's answer nor leave it in flight for ever.
            watched = (
                watch_file(self, environ, item, result, sent_headers)
                if isinstance(file_wrapper, type) and isinstance(result, file_wrapper)
                else None
            )
        except BaseException as exc:
            # Nothing will record it now: not in flight. An Exception is ours
            # (odd headers, an odd wrapper), counted, and the answer goes out
            # unrecorded; anything else propagates (as on the compiled path).
            self._aggregates.in_flight -= 1
            self._abandoned(environ)
            if not isinstance(exc, Exception):
                raise
            self._recorder.dropped["internal_error"] += 1
            return result
        if watched is not None:
            return watched  # type: ignore[no-any-return]
        # A server may size the response by its length. Asked of the type, as len()
        # does (and the compiled path): an instance's __getattr__ cannot raise here.
        if hasattr(type(result), "__len__"):
            return RecordedSized(self, environ, item, result)
        return Recorded(self, environ, item, result)

    def serve_excluded(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """A mounted route, answered here, or an excluded path of the app, unrecorded."""
        return self._routes.serve(self.app, environ, start_response)

    def _start(self) -> None:
        if self._has_route is not None:
            given_up = self._routes.yield_to_app(self._has_route)
            if given_up:
                self.aegis.excluded_paths.discard(*given_up)  # recorded as the app's
        self.aegis.start()
        if self._routes.realtime is not None:
            self._routes.realtime.start(os.getpid())
        self._started = True
        if self._compiled is not None:
            self._compiled.started = True

    def _closed(self, environ: dict[str, Any], item: Any, failure: BaseException | None) -> None:
        """The server closed a response of the Python path: the clock stops, queued."""
        self._aggregates.in_flight -= 1
        try:
            item[6] = self._monotonic()
        except Exception:
            self._recorder.dropped["internal_error"] += 1
            self._abandoned(environ)
            return
        self._queue(environ, item, failure)

    def _abandoned(self, environ: Any) -> None:
        """A request's record was given up (our failure): nothing to do here;
        with ``tracing`` on, its span ends (wsgi/tracing.py)."""

    def _queue(self, environ: Any, item: Any, failure: BaseException | None) -> None:
        """Queue a finished request; never raises (the app's exception must win)."""
        try:
            if failure is not None or item[6] is None:
                settle(item, failure, self._monotonic, self._error_limit)
            if item[0] == "HEAD":
                item[8] = 0
            route = environ.get(ROUTE_KEY)
            if route is None and self.route_reader is not None:
                route = self.route_reader(environ)
            item[1] = route if route else UNMATCHED_ROUTE
            if not item[11]:
                noted = environ.get(ERROR_KEY)
                if isinstance(noted, str) and noted:
                    item[11] = noted
            client = item[9]
            if self._addresses.enabled:  # a client without an address: a Unix socket
                item[10] = self._forwarded(environ, client)
            self._recorder.offer(item)
        except Exception:
            self._recorder.dropped["internal_error"] += 1

    def _forwarded(self, environ: dict[str, Any], client: tuple[str, int] | None) -> str | None:
        return forwarded_for(self._addresses, environ, client)

    def _iteration_failed(self, item: Any, failure: BaseException) -> None:
        iteration_failed(item, failure, self._error_limit)

    def _watch_file(
        self, environ: dict[str, Any], item: Any, result: Any, headers: Any
    ) -> Any | None:
        """A file response of the compiled path, which has stopped counting it
        as in flight: from here on it is the Python path's."""
        self._aggregates.in_flight += 1
        try:
            watched = watch_file(self, environ, item, result, headers)
        except BaseException:  # the compiled path counts it, as call_python does
            self._aggregates.in_flight -= 1
            raise
        if watched is None:
            self._aggregates.in_flight -= 1
        return watched

    def _internal_error(self) -> None:
        """A request the compiled path failed to record (a bug of ours)."""
        self._recorder.dropped["internal_error"] += 1


def forwarded_for(
    addresses: ClientAddressResolver, environ: dict[str, Any], client: tuple[str, int] | None
) -> str | None:
    """The forwarded-for header of the environ, only when the peer (None: a Unix
    socket) is a trusted proxy."""
    if not addresses.peer_is_trusted(client[0] if client else None):
        return None
    value = environ.get(addresses.environ_key)
    return str(value) if value is not None else None


def client_of(environ: dict[str, Any]) -> tuple[str, int] | None:
    """``(REMOTE_ADDR, REMOTE_PORT)``, or None without an address."""
    client = environ.get("REMOTE_ADDR")
    return (client, number_or_zero(environ.get("REMOTE_PORT"))) if client else None


def number_or_zero(value: Any) -> int:
    """A number a server put in the environ as text (``REMOTE_PORT``,
    ``CONTENT_LENGTH``); 0 when it is absent, empty or not a number."""
    try:
        return int(value) if value else 0
    except (TypeError, ValueError):
        return 0


def status_code(status: Any) -> int:
    """The code of a WSGI status line (``"200 OK"``); 500 when it has none."""
    try:
        return int(status[:3])
    except (TypeError, ValueError):
        return 500


def start_arguments(status: Any, headers: Any, exc_info: Any = None) -> tuple[Any, Any, Any]:
    """The arguments of a start_response call, bound as call_python's ``start``
    binds them; a call it cannot bind raises its TypeError, word for word. The
    compiled start_response asks it for calls with keywords or a wrong count."""
    return status, headers, exc_info


def write_arguments(data: Any) -> Any:
    """The same for call_python's ``write``."""
    return data


# Named as the functions they stand for: CPython's TypeErrors quote the name.
start_arguments.__name__ = "start"
start_arguments.__qualname__ = f"{AegisWSGIMiddleware.call_python.__qualname__}.<locals>.start"
write_arguments.__name__ = "write"
write_arguments.__qualname__ = f"{AegisWSGIMiddleware.call_python.__qualname__}.<locals>.write"


def _forked(ref: weakref.ReferenceType[AegisWSGIMiddleware]) -> None:
    middleware = ref()
    if middleware is not None:  # threads do not survive a fork: start again
        middleware._started = False
        if middleware._compiled is not None:
            middleware._compiled.started = False


def _not_started(data: bytes) -> None:
    raise AssertionError("write() before start_response()")

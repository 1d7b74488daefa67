"""``AegisWSGIMiddleware``: the records of the ASGI middleware, for WSGI apps.

The clock stops when the server calls ``close()`` on the response iterable
(PEP 3333), so a streamed body is timed to its last chunk; TTFB is the first
non-empty chunk (or the first ``write()``). Bytes are counted as they pass,
both ways. An exception from the app, or from iterating its response, is
recorded and re-raised unchanged; ``close()`` is forwarded to the app's
iterable exactly once, even when iteration raised. The item queued is the
same list the ASGI middleware queues (``core/items.py``), so records, metric
names and rollups are the same for every framework.

The route template comes from ``environ["aegis.route"]`` (set by the Flask
and Django integrations after URL matching), else from ``route_reader``,
else ``<unmatched>``: a raw path never becomes a label.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..aegis import Aegis
from ..core.labels import describe_error
from ..core.outcome import settle
from ..core.record import UNMATCHED_ROUTE
from .mounted import WSGIRoutes

StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
#: Where a framework integration leaves the matched route template.
ROUTE_KEY = "aegis.route"


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
        **options: Any,
    ) -> None:
        if aegis is not None and options:
            raise TypeError("pass either aegis=Aegis(...) or options, not both")
        self.app = app
        self.aegis = aegis if aegis is not None else Aegis(**options)
        self.route_reader = route_reader
        self._routes = WSGIRoutes(self.aegis)
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
        if hasattr(os, "register_at_fork"):
            # By weak reference: a hook must not keep a discarded app alive.
            os.register_at_fork(after_in_child=functools.partial(_forked, weakref.ref(self)))

    def _start(self) -> None:
        self.aegis.start()
        if self._routes.realtime is not None:
            self._routes.realtime.start(os.getpid())
        self._started = True

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self._started:
            self._start()
        path = environ.get("PATH_INFO", "") or "/"
        excluded = self._excluded
        if path in excluded.literal or (excluded.match is not None and excluded.match(path)):
            return self._routes.serve(self.app, environ, start_response)
        clock = self._monotonic
        client = environ.get("REMOTE_ADDR")
        item: list[Any] = [
            environ.get("REQUEST_METHOD", "GET"), None, environ.get("SCRIPT_NAME", "") + path,
            0, clock(), None, None, 0, 0,
            (client, int(environ.get("REMOTE_PORT") or 0)) if client else None, None, "", False,
        ]  # fmt: skip
        stream = environ.get("wsgi.input")
        if stream is not None and (
            environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING")
        ):
            environ["wsgi.input"] = _CountingInput(stream, item)

        server_write: Callable[[bytes], object] = _not_started

        def write(data: bytes) -> None:  # the legacy write() callable, counted too
            if data and item[5] is None:
                item[5] = clock()
            item[8] += len(data)
            server_write(data)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal server_write
            try:
                item[3] = int(status[:3])
            except ValueError:
                item[3] = 500
            server_write = start_response(status, headers, exc_info)
            return write

        self._aggregates.in_flight += 1
        try:
            result = self.app(environ, start)
        except BaseException as exc:  # recorded, then re-raised unchanged
            self._finish(environ, item, exc)
            raise
        if hasattr(result, "__len__"):  # a server may size the response by it
            return _RecordedSized(self, environ, item, result)
        return _Recorded(self, environ, item, result)

    def _finish(
        self, environ: dict[str, Any], item: list[Any], failure: BaseException | None
    ) -> None:
        """Queue a finished request; never raises (the app's exception must win)."""
        try:
            self._aggregates.in_flight -= 1
            if failure is not None or item[6] is None:
                settle(item, failure, self._monotonic, self._error_limit)
            if item[0] == "HEAD":
                item[8] = 0
            route = environ.get(ROUTE_KEY)
            if route is None and self.route_reader is not None:
                route = self.route_reader(environ)
            item[1] = route if route else UNMATCHED_ROUTE
            addresses = self._addresses
            client = item[9]
            if addresses.enabled and client and addresses.peer_is_trusted(client[0]):
                item[10] = _forwarded(environ, addresses.header)
            self._recorder.offer(item)
        except Exception:
            self._recorder.dropped["internal_error"] += 1


def _forked(ref: weakref.ReferenceType[AegisWSGIMiddleware]) -> None:
    middleware = ref()
    if middleware is not None:
        middleware._started = False  # threads do not survive a fork: start again


def _not_started(data: bytes) -> None:
    raise AssertionError("write() before start_response()")


def _forwarded(environ: dict[str, Any], header: str) -> str | None:
    value = environ.get("HTTP_" + header.upper().replace("-", "_"))
    return str(value) if value is not None else None


class _Recorded:
    """The app's response iterable, timed to ``close()`` and counted as it passes."""

    __slots__ = ("_closed", "_environ", "_item", "_middleware", "_result")

    def __init__(
        self, middleware: AegisWSGIMiddleware, environ: dict[str, Any], item: list[Any],
        result: Iterable[bytes],
    ) -> None:  # fmt: skip
        self._middleware = middleware
        self._environ = environ
        self._item = item
        self._result = result
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        item = self._item
        clock = self._middleware._monotonic
        try:
            for chunk in self._result:
                if chunk and item[5] is None:
                    item[5] = clock()
                item[8] += len(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            if not item[11]:
                item[11] = describe_error(exc, self._middleware._error_limit)
            if not self._item[3]:
                self._item[3] = 500
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        item = self._item
        failure: BaseException | None = None
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            item[6] = self._middleware._monotonic()
            self._middleware._finish(self._environ, item, failure)


class _RecordedSized(_Recorded):
    """For a response that has a length (a list, say): servers such as wsgiref
    set Content-Length for a one-item response, so the length must show
    through, as it would without the middleware."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


class _CountingInput:
    """``wsgi.input``, counting the request body bytes the app reads."""

    __slots__ = ("_item", "_stream")

    def __init__(self, stream: Any, item: list[Any]) -> None:
        self._stream = stream
        self._item = item

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size) if size is not None else self._stream.read()
        self._item[7] += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data: bytes = self._stream.readline(size)
        self._item[7] += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(hint)
        self._item[7] += sum(map(len, lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._item[7] += len(line)
            yield line

    def __getattr__(self, name: str) -> Any:  # anything else a server's stream offers
        return getattr(self._stream, name)

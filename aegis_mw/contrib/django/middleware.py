"""``AegisMiddleware`` for Django's ``MIDDLEWARE``, sync and async.

Each request's item (``core/items.py``) is queued when Django closes the
response (``HttpResponse.close()``, which both the WSGI and the ASGI handler
call once the body is sent), so a streamed body is timed to its end. The
route is the resolver match's pattern in the ``{name}`` style; an exception
a view raised is recorded with the 500 Django answers. A file response
(``FileResponse``) is left as it is, so the server can still ``sendfile()``
it; its bytes are its Content-Length.

Under WSGI (a sync handler) Django holds the compiled path
(``_hotpath_c/django_path.c``) where it was built and ``speedups`` is on:
constructing ``AegisMiddleware`` then returns that object, whose slow paths
are this class's methods. The Python code below is the reference it matches,
and serves async handlers (ASGI) and builds without the extension.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.apps import apps
from django.http import HttpRequest, HttpResponse

from ...aegis import Aegis
from ...core.labels import describe_error
from ...core.outcome import settle
from ...core.record import UNMATCHED_ROUTE
from ...core.trace_context import environ_trace
from ...endpoints.app_routes import django_routes
from ...endpoints.response import Response
from ...wsgi.middleware import client_of, forwarded_for, number_or_zero
from ...wsgi.mounted import WSGIRoutes
from ...wsgi.responses import content_length, counted, iteration_failed
from ...wsgi.routing import MAX_CACHED_ROUTES
from . import compiled

_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_NAMED_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>(?:[^()]|\([^()]*\))*\)")
#: Where the request keeps its item, for process_exception.
ITEM_ATTRIBUTE = "_aegis_item"


@functools.lru_cache(maxsize=4096)  # a project has a bounded set of patterns
def route_template(pattern: str) -> str:
    """``items/<int:item_id>`` -> ``/items/{item_id}``; ``^a/(?P<y>[0-9]{4})/$`` -> ``/a/{y}/``."""
    text = _NAMED_GROUP.sub(r"{\1}", pattern)  # first: a group's name is in <...> too
    text = _CONVERTER.sub(r"{\1}", text).replace("^", "").replace("$", "").replace("\\", "")
    return "/" + text.lstrip("/")


class AegisMiddleware:
    """Put it first in ``MIDDLEWARE`` (outermost), so it sees every answer."""

    sync_capable = True
    async_capable = True

    def __new__(cls, get_response: Callable[[HttpRequest], Any]) -> Any:
        middleware = super().__new__(cls)
        middleware._setup(get_response)
        # Django calls whatever this returns for every request: the compiled
        # path's own object, when there is one, costs no Python frame of ours.
        return middleware._compiled if middleware._compiled is not None else middleware

    def _setup(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.aegis: Aegis = apps.get_app_config("aegis_mw").pipeline
        self.routes = WSGIRoutes(self.aegis)
        self.routes.yield_to_app(django_routes())  # the project's own routes stay its own
        self.aegis.exclude(*self.routes.paths)
        self._excluded = self.aegis.excluded_paths
        self._clock = self.aegis.clock.monotonic
        self._error_limit = self.aegis.settings.max_error_length
        self._addresses = self.aegis.client_addresses
        self._aggregates = self.aegis.aggregates
        #: pattern -> template, read by the compiled path too.
        self.templates: dict[str, str] = {}
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        # A subclass with a __call__ of its own keeps it: the compiled path
        # would bypass it.
        if self.aegis.settings.tracing:
            from .tracing import attach_tracing

            attach_tracing(self)  # a class of its own, with a __call__ of its own
        fast = self.aegis.settings.speedups and not self.is_async
        own_call = type(self).__call__ is AegisMiddleware.__call__
        #: Read by the compiled path too (recording.c): None, or where to look.
        self.trace_source = self.aegis.trace_source
        self._compiled = compiled.build(self) if fast and own_call else None
        self.aegis.attached("compiled" if self._compiled is not None else "python")
        self.aegis.start()
        self._start_stream()

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        path = request.path_info
        if path in self.routes.handlers:
            return self.serve_mounted(request)
        if self._excluded.excluded(path):
            return self.get_response(request)  # never recorded
        item = self._begin(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            self._aggregates.in_flight -= 1
            self._raised(request, item, exc)
            raise
        return self._watch(request, item, response)

    async def _acall(self, request: HttpRequest) -> Any:
        path = request.path_info
        if path in self.routes.handlers:
            # Blocking reads (health checks run their own loop): in a thread of
            # the pipeline's own lanes, never the loop's shared executor, which
            # the app's sync_to_async calls need; 503 busy when a lane is full.
            threads = self.aegis.reads.threads
            answer = await threads.respond(self.routes.lane(path), self._mounted, request)
            return _django_response(answer)
        if self._excluded.excluded(path):
            return await self.get_response(request)  # never recorded
        item = self._begin(request)
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            self._aggregates.in_flight -= 1
            self._raised(request, item, exc)
            raise
        self._watch(request, item, response, errors_watched=True)
        return response

    def _closed_once(self, once: _Once) -> None:
        taken = once.take()
        if taken is not None:
            self._closed(*taken)

    def _cancelled(self, once: _Once, task: Any) -> None:
        """The request's task ended: if it was cancelled, the response will
        never be closed."""
        if task.cancelled():
            taken = once.take()
            if taken is not None:
                self._aggregates.in_flight -= 1
                self._raised(taken[0], taken[1], asyncio.CancelledError())

    def serve_mounted(self, request: HttpRequest) -> HttpResponse:
        """``/metrics``, the health routes, the JSON API and ``/dashboard``."""
        return _django_response(self._mounted(request))

    def _start_stream(self) -> None:
        """Under WSGI with ``ws_port``, the stream's server thread of this
        process (a no-op when it runs; again after a fork, threads do not
        survive one). Under ASGI the stream is on the app's own port."""
        if self.routes.realtime is not None and not self.is_async:
            self.routes.realtime.start(os.getpid())

    def _mounted(self, request: HttpRequest) -> Response:
        # The page served here connects to the stream next: it must be up in
        # this process (its handler may have been built before a fork).
        self._start_stream()
        # request.scheme: https behind a proxy too, per SECURE_PROXY_SSL_HEADER.
        answer = self.routes.respond(request.META, request.scheme, request.read)
        if answer is None:  # not a mounted path: never, the callers check first
            return Response.error(404, "not_found", "no route of ours here")
        return answer

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """A view raised: keep its text for the record (Django answers 500 itself)."""
        item = getattr(request, ITEM_ATTRIBUTE, None)
        if item is not None and not item[11]:
            item[11] = describe_error(exception, self._error_limit)

    def _begin(self, request: HttpRequest) -> list[Any]:
        meta = request.META
        item: list[Any] = [
            request.method or "GET", None, request.path, 0, self._clock(), None, None,
            number_or_zero(meta.get("CONTENT_LENGTH")), 0, client_of(meta), None, "", False,
            None,
        ]  # fmt: skip
        if self.trace_source is not None:
            item[13] = environ_trace(self.trace_source, meta)
        setattr(request, ITEM_ATTRIBUTE, item)
        self._aggregates.in_flight += 1
        return item

    def _watch(
        self, request: HttpRequest, item: list[Any], response: Any, errors_watched: bool = False
    ) -> Any:
        """Count the body as it goes; queue the item when Django closes the response.

        ``errors_watched`` (async requests): Django's ASGI handler, after the
        middleware answered, still awaits its logging of an error response
        (4xx, 5xx), and cancels the request's task there when the client goes
        away; it then never closes the response. Such a request is recorded
        when its task ends (499) instead; whichever comes first, the close or
        that end, takes it, once. Nothing else is awaited after the
        outermost middleware, so other responses pay nothing for it."""
        once: _Once | None = None
        try:
            item[3] = response.status_code
            if response.streaming:
                self._watch_stream(item, response)
            else:
                item[5] = self._clock()
                # Summed from the chunks: ``response.content`` would join them
                # into a copy of the whole body on every request.
                container = getattr(response, "_container", None)
                if container is not None:
                    # A loop, not sum(map(len, ...)): map would take a
                    # StopIteration from a chunk's len() for the end of the
                    # chunks and count a short body; here it fails like any
                    # other error of len(), as on the compiled path.
                    total = 0
                    for chunk in container:
                        total += len(chunk)
                    item[8] = total
            closers = response._resource_closers  # called once by HttpResponseBase.close()
            if errors_watched and type(item[3]) is int and item[3] >= 400:
                once = _Once(request, item)
                closers.append(functools.partial(self._closed_once, once))
            else:
                closers.append(functools.partial(self._closed, request, item))
        except BaseException as exc:
            # No closer will end it: it is not in flight any more, whatever
            # failed. An Exception is ours, counted, and the response goes out
            # unrecorded rather than broken; anything else (KeyboardInterrupt)
            # propagates, as on the compiled path.
            self._aggregates.in_flight -= 1
            self._abandoned(request)
            if not isinstance(exc, Exception):
                raise
            self.aegis.recorder.dropped["internal_error"] += 1
            return response
        if once is not None:  # a closer will end it, or the task's end
            _when_cancelled(once, self._cancelled)
        return response

    def _abandoned(self, request: HttpRequest) -> None:
        """A request's record was given up (our failure): nothing to do here;
        with ``tracing`` on, its span ends (tracing.py)."""

    def _watch_stream(self, item: Any, response: Any) -> None:
        """A streamed body, counted as it goes; a file (``file_to_stream``) is
        left alone, so the server's ``wsgi.file_wrapper`` can send it, and is
        counted by its Content-Length."""
        if getattr(response, "file_to_stream", None) is not None:
            item[8] = content_length(response.items()) or 0
            return
        response.streaming_content = _counted(
            response.streaming_content, item, self._clock, self._error_limit
        )

    def _closed(self, request: HttpRequest, item: list[Any]) -> None:
        """Django closed the response: the clock stops, the item is queued."""
        self._aggregates.in_flight -= 1
        try:
            item[6] = self._clock()
            if item[0] == "HEAD":
                item[8] = 0
            item[1] = self._route_of(request)
            self._queue(request.META, item)
        except Exception:
            self.aegis.recorder.dropped["internal_error"] += 1

    def _raised(self, request: HttpRequest, item: Any, failure: BaseException) -> None:
        """``get_response`` raised (a middleware's error, or ``raise_request_exception``)."""
        try:
            settle(item, failure, self._clock, self._error_limit)
            item[1] = self._route_of(request)
            self._queue(request.META, item)
        except Exception:
            self.aegis.recorder.dropped["internal_error"] += 1

    def _route_of(self, request: HttpRequest) -> str:
        """The resolver match's pattern as a template (none: ``<unmatched>``)."""
        match = getattr(request, "resolver_match", None)
        return self._template(match.route) if match is not None else UNMATCHED_ROUTE

    def _template(self, pattern: Any) -> str:
        if pattern is None:
            return UNMATCHED_ROUTE
        template = self.templates.get(pattern)
        if template is None:
            template = route_template(str(pattern))
            if len(self.templates) < MAX_CACHED_ROUTES:  # a project's patterns are bounded
                self.templates[pattern] = template
        return template

    def _queue(self, meta: dict[str, Any], item: Any) -> None:
        client = item[9]
        if self._addresses.enabled:  # a client without an address: a Unix socket
            item[10] = self._forwarded(meta, client)
        self.aegis.recorder.offer(item)

    def _forwarded(self, meta: dict[str, Any], client: tuple[str, int] | None) -> str | None:
        return forwarded_for(self._addresses, meta, client)

    def _internal_error(self) -> None:
        """A request the compiled path failed to record (a bug of ours)."""
        self.aegis.recorder.dropped["internal_error"] += 1


class _Once:
    """An async request's end, taken once: by Django's close of the response
    (from a thread of its own), or by the end of its cancelled task (on the
    loop); ``list.pop`` is one step under the GIL. Emptied when taken, so a
    task that lives on keeps nothing of the request."""

    __slots__ = ("_held",)

    def __init__(self, request: HttpRequest, item: list[Any]) -> None:
        self._held = [(request, item)]

    def take(self) -> tuple[HttpRequest, list[Any]] | None:
        try:
            return self._held.pop()
        except IndexError:
            return None


def _when_cancelled(once: _Once, callback: Callable[[_Once, Any], None]) -> None:
    """Call ``callback(once, task)`` when the current asyncio task ends."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop (trio): not Django's handler, which cancels
        return
    if task is not None:
        task.add_done_callback(functools.partial(callback, once))


def _counted(content: Any, item: Any, clock: Callable[[], float], error_limit: int) -> Any:
    if hasattr(content, "__aiter__"):
        return _acounted(content, item, clock, error_limit)
    return counted(content, item, clock, error_limit)


async def _acounted(content: Any, item: Any, clock: Callable[[], float], error_limit: int) -> Any:
    try:
        async for chunk in content:
            if chunk and item[5] is None:
                item[5] = clock()
            item[8] += len(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        iteration_failed(item, exc, error_limit)
        raise


def _django_response(answer: Response | None) -> HttpResponse:
    if answer is None:  # never: only mounted paths get here
        answer = Response.error(404, "not_found", "no such route")
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    response["Cache-Control"] = "no-store"
    for name, value in answer.headers:
        if name.lower() == "set-cookie":
            _add_cookie(response, value)
        else:
            response[name] = value
    return response


def _add_cookie(response: HttpResponse, header: str) -> None:
    """One Set-Cookie header, kept as one even when another has the same name
    (the token's cookie is set once per path): Django writes one header per
    entry of ``response.cookies``, keyed here by name and path."""
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    for morsel in jar.values():
        response.cookies[f"{morsel.key}:{morsel['path']}"] = morsel

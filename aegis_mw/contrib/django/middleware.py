"""``AegisMiddleware`` for Django's ``MIDDLEWARE``, sync and async.

Each request's item (``core/items.py``) is queued when Django closes the
response (``HttpResponse.close()``, which both the WSGI and the ASGI handler
call once the body is sent), so a streamed body is timed to its end. The
route is the resolver match's pattern in the ``{name}`` style; an exception
a view raised is recorded with the 500 Django answers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.apps import apps
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from ...aegis import Aegis
from ...core.labels import describe_error
from ...core.record import UNMATCHED_ROUTE
from ...endpoints.response import Response
from ...wsgi.mounted import WSGIRoutes

_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_NAMED_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>(?:[^()]|\([^()]*\))*\)")
_ATTRIBUTE = "_aegis_item"


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

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.aegis: Aegis = apps.get_app_config("aegis_mw").pipeline
        self.routes = WSGIRoutes(self.aegis)
        self.aegis.exclude(*self.routes.paths)
        self._clock = self.aegis.clock.monotonic
        self._error_limit = self.aegis.settings.max_error_length
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.aegis.start()

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        if request.path_info in self.routes.handlers:
            return _django_response(self.routes.respond(request.META))
        item = self._begin(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            self._finish(request, item, None, exc)
            raise
        return self._watch(request, item, response)

    async def _acall(self, request: HttpRequest) -> Any:
        if request.path_info in self.routes.handlers:
            # Blocking reads (health checks run their own loop): in a thread.
            answer = await sync_to_async(self.routes.respond, thread_sensitive=False)(request.META)
            return _django_response(answer)
        item = self._begin(request)
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            self._finish(request, item, None, exc)
            raise
        return self._watch(request, item, response)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """A view raised: keep its text for the record (Django answers 500 itself)."""
        item = getattr(request, _ATTRIBUTE, None)
        if item is not None and not item[11]:
            item[11] = describe_error(exception, self._error_limit)

    def _begin(self, request: HttpRequest) -> list[Any]:
        meta = request.META
        client = meta.get("REMOTE_ADDR")
        item: list[Any] = [
            request.method or "GET", None, request.path, 0, self._clock(), None, None,
            int(meta.get("CONTENT_LENGTH") or 0), 0,
            (client, int(meta.get("REMOTE_PORT") or 0)) if client else None, None, "", False,
        ]  # fmt: skip
        setattr(request, _ATTRIBUTE, item)
        self.aegis.aggregates.in_flight += 1
        return item

    def _watch(self, request: HttpRequest, item: list[Any], response: HttpResponseBase) -> Any:
        """Count the body as it goes; queue the item when Django closes the response."""
        item[3] = response.status_code
        if isinstance(response, StreamingHttpResponse):
            response.streaming_content = _counted(response.streaming_content, item, self._clock)
        elif isinstance(response, HttpResponse):
            item[5] = self._clock()
            # Summed from the chunks: ``response.content`` would join them
            # into a copy of the whole body on every request.
            item[8] = sum(map(len, response._container))
        closers = response._resource_closers  # called once by HttpResponseBase.close()
        closers.append(lambda: self._finish(request, item, response, None))
        return response

    def _finish(
        self, request: HttpRequest, item: list[Any], response: Any, failure: BaseException | None
    ) -> None:
        try:
            self.aegis.aggregates.in_flight -= 1
            item[6] = self._clock()
            if failure is not None:
                item[3] = item[3] or 500
                if not item[11]:
                    item[11] = describe_error(failure, self._error_limit)
            if item[0] == "HEAD":
                item[8] = 0
            match = getattr(request, "resolver_match", None)
            pattern = getattr(match, "route", None) if match is not None else None
            item[1] = route_template(pattern) if pattern else UNMATCHED_ROUTE
            self.aegis.recorder.offer(item)
        except Exception:
            self.aegis.recorder.dropped["internal_error"] += 1


def _counted(content: Any, item: list[Any], clock: Callable[[], float]) -> Any:
    if hasattr(content, "__aiter__"):
        return _acounted(content, item, clock)
    return _scounted(content, item, clock)


def _scounted(content: Any, item: list[Any], clock: Callable[[], float]) -> Any:
    for chunk in content:
        if chunk and item[5] is None:
            item[5] = clock()
        item[8] += len(chunk)
        yield chunk


async def _acounted(content: Any, item: list[Any], clock: Callable[[], float]) -> Any:
    async for chunk in content:
        if chunk and item[5] is None:
            item[5] = clock()
        item[8] += len(chunk)
        yield chunk


def _django_response(answer: Response | None) -> HttpResponse:
    if answer is None:  # never: only mounted paths get here
        answer = Response.error(404, "not_found", "no such route")
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    response["Cache-Control"] = "no-store"
    for name, value in answer.headers:
        response[name] = value
    return response

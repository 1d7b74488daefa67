"""Django cases: a request, what the view chain answers, how the server consumes it.

A case is plain data (pickled to the worker, printed as the failing example):
the request (method, body, odd META values, a resolver match), the answer of
``get_response`` (an HttpResponse whose chunks or status are odd, a
StreamingHttpResponse over a generator with steps, a FileResponse, an
exception raised, or one handed to ``process_exception`` as Django's handler
does before its 500) and how the server consumes the response (all of it,
part, none, closed twice, never closed).
"""

from __future__ import annotations

import gc
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")
import django

django.setup()

from django.apps import apps  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from django.test import RequestFactory  # noqa: E402

from aegis_mw.contrib.django import AegisMiddleware  # noqa: E402
from aegis_mw.testing import FakeClock  # noqa: E402

from .asgi_model import EXCEPTIONS, span_of, status_values  # noqa: E402
from .normalize import fresh_pipeline, normal, pipeline_figures, raised, warnings_of  # noqa: E402
from .wsgi_model import Ctx, chunks, make_chunk  # noqa: E402

Step = tuple[Any, ...]


@dataclass(frozen=True)
class DjangoCase:
    method: str
    path: str
    body: bytes
    meta: tuple[tuple[str, Any], ...]  # extra or odd META values
    route: Any  # ("match", pattern) for a resolver match, or None for none
    answer: tuple[Any, ...]  # what get_response does: (kind, ...)
    status: Any = None  # set on the response after it is built (None: leave it)
    consume: str = "all"  # all, part, none, close-twice, no-close
    #: OpenTelemetry's span current around the call (Django's instrumentation
    #: is a middleware before ours): its ids, or None.
    span: Any = None


# -- strategies -------------------------------------------------------------------

exception_names = st.sampled_from(sorted(EXCEPTIONS))
generator_steps = st.lists(
    st.one_of(
        st.tuples(st.just("yield"), chunks),
        st.tuples(st.just("yield"), st.binary(max_size=10)),
        st.tuples(st.just("advance"), st.sampled_from([0.001, 0.5])),
        st.tuples(st.just("raise"), exception_names),
    ),
    max_size=5,
).map(tuple)
answers = st.one_of(
    st.tuples(st.just("http"), st.lists(st.binary(max_size=10), max_size=4).map(tuple)),
    st.tuples(st.just("http-odd-container"), st.lists(chunks, max_size=3).map(tuple)),
    st.tuples(st.just("streaming"), generator_steps),
    st.tuples(st.just("file"), st.binary(max_size=30)),
    st.tuples(st.just("raise"), exception_names),
    st.tuples(st.just("process_exception"), exception_names),
)
metas = st.lists(
    st.one_of(
        st.tuples(st.just("CONTENT_LENGTH"), st.sampled_from(["x", "", "-1", "9" * 25, None])),
        st.tuples(st.just("REMOTE_ADDR"), st.sampled_from(["", "10.0.0.1", None])),
        st.tuples(st.just("REMOTE_PORT"), st.sampled_from(["port", "", 8080, None])),
        st.tuples(
            st.just("HTTP_TRACEPARENT"),
            st.sampled_from(
                ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-zz", 5, None]
            ),
        ),
    ),
    max_size=2,
).map(tuple)


@st.composite
def django_cases(draw: st.DrawFn) -> DjangoCase:
    return DjangoCase(
        method=draw(st.sampled_from(["GET", "POST", "HEAD"])),
        path=draw(st.sampled_from(["/direct/", "/things/1/", "/metrics", "/health/live"])),
        body=draw(st.binary(max_size=20)),
        meta=draw(metas),
        span=draw(st.sampled_from([None, None, (0x4B, 0xA1), (0, 0)])),
        route=draw(st.sampled_from([None, ("match", "things/<int:id>/"), ("match", None),
                                    ("match", "^a/(?P<y>[0-9]{4})/$"), ("match", 7)])),
        answer=draw(answers),
        status=draw(st.one_of(st.none(), st.none(), status_values)),
        consume=draw(st.sampled_from(["all", "all", "all", "part", "none", "close-twice",
                                      "no-close"])),
    )  # fmt: skip


# -- running a case ----------------------------------------------------------------


class Match:
    """What Django's resolver leaves on the request (only its route is read)."""

    def __init__(self, route: Any) -> None:
        self.route = route


def _chunk(spec: Any, own: list[BaseException]) -> Any:
    ctx = Ctx(FakeClock())
    ctx.own = own
    return make_chunk(spec, ctx)


def _request(case: DjangoCase, clock: FakeClock) -> HttpRequest:
    request = RequestFactory().generic(case.method, case.path, case.body, "text/plain")
    for key, value in case.meta:
        if value is None:
            request.META.pop(key, None)
        else:
            request.META[key] = value
    if case.route is not None:
        request.resolver_match = Match(case.route[1])
    return request


def run(case: DjangoCase, compiled: bool) -> dict[str, Any]:
    clock = FakeClock()
    aegis = fresh_pipeline(clock, compiled)
    own: list[BaseException] = []
    events: list[Any] = []
    log: list[Any] = []
    given: list[Any] = []  # the response get_response returned
    holder: list[Any] = []  # the middleware, for process_exception

    def fail(name: str, where: str) -> BaseException:
        own.append(EXCEPTIONS[name](f"raised in {where}"))
        return own[-1]

    def stream(steps: tuple[Step, ...]) -> Any:
        try:
            for step in steps:
                if step[0] == "yield":
                    yield _chunk(step[1], own)
                elif step[0] == "advance":
                    clock.advance(step[1])
                else:
                    raise fail(step[1], "the stream")
        finally:
            events.append(("stream finally",))

    def get_response(request: HttpRequest) -> Any:
        clock.advance(0.01)
        kind, value = case.answer
        if kind == "raise":
            raise fail(value, "get_response")
        if kind == "process_exception":  # Django's handler, around a view that raised
            holder[0].process_exception(request, fail(value, "the view"))
            response: Any = HttpResponse(b"error", status=500)
        elif kind == "http":
            response = HttpResponse(b"".join(value))
            response._container = list(value)
        elif kind == "http-odd-container":
            response = HttpResponse(b"")
            response._container = [_chunk(each, own) for each in value]
        elif kind == "streaming":
            response = StreamingHttpResponse(stream(value))
        else:
            response = FileResponse(io.BytesIO(value))
        if case.status is not None:
            response.status_code = case.status
        given.append(id(response))
        return response

    config = apps.get_app_config("aegis_mw")
    saved = config.__dict__.get("_pipeline")
    config._pipeline = aegis
    try:
        middleware = AegisMiddleware(get_response)
        assert (type(middleware).__name__ == "DjangoPath") is compiled
        holder.append(middleware)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with span_of(case.span):
                _serve(case, middleware, _request(case, clock), clock, log, own, given)
            in_flight = aegis.aggregates.in_flight_now()
            events_before_collection = list(events)
            del holder[:]
            gc.collect()
    finally:
        config._pipeline = saved
    return {
        "server saw": log,
        "the app saw": events_before_collection,
        "the app saw, after a collection": events[len(events_before_collection) :],
        "in flight": in_flight,
        "warnings": warnings_of(caught),
        **pipeline_figures(aegis),
    }


def _serve(
    case: DjangoCase, middleware: Any, request: HttpRequest, clock: FakeClock, log: list[Any],
    own: list[BaseException], given: list[Any],
) -> None:  # fmt: skip
    """What Django's WSGI handler and the server do with the middleware's answer."""
    try:
        response = middleware(request)
    except BaseException as exc:
        log.append(("raised", "call", raised(exc, own)))
        return
    log.append(("the view's response", bool(given) and id(response) == given[0]))
    log.append(("status", normal(getattr(response, "status_code", None))))
    if case.consume in ("all", "part", "close-twice"):
        try:
            for index, chunk in enumerate(response):
                clock.advance(0.001)
                log.append(("chunk", normal(chunk)))
                if case.consume == "part" and index == 0:
                    break
        except BaseException as exc:
            log.append(("raised", "iteration", raised(exc, own)))
    if case.consume == "no-close":
        return
    for _ in range(2 if case.consume == "close-twice" else 1):
        clock.advance(0.002)
        try:
            response.close()
        except BaseException as exc:
            log.append(("raised", "close", raised(exc, own)))


def both_paths(case: DjangoCase) -> tuple[dict[str, Any], dict[str, Any]]:
    return run(case, compiled=False), run(case, compiled=True)

"""WSGI cases: an app's steps and its response iterable, and how the server drives it.

A case is plain data (pickled to the worker, printed as the failing example):
the request, the app's steps during its call (start_response called right,
wrongly, twice, with exc_info; write(); reading the body; raising), what it
returns (a list, a generator with steps of its own, an iterable class that
misbehaves in ``__iter__``/``__next__``/``close``/``len()``, a file wrapper,
its own start_response...) and how the server iterates and closes it.
"""

from __future__ import annotations

import gc
import io
import sys
import warnings
from dataclasses import dataclass
from typing import Any
from wsgiref.util import FileWrapper

from hypothesis import strategies as st

from aegis_mw.testing import FakeClock
from aegis_mw.wsgi import AegisWSGIMiddleware

from .asgi_model import EXCEPTIONS, span_of, split_bodies
from .normalize import fresh_pipeline, normal, pipeline_figures, raised, warnings_of

Step = tuple[Any, ...]


@dataclass(frozen=True)
class IterableSpec:
    """An iterable class of the app's, misbehaving as told."""

    chunks: tuple[Any, ...]
    iter_how: str = "self"  # self, fresh, raise:<name>, non-iterator, start_response, next-start
    next_raises: tuple[int, str] | None = None  # (at which next(), what)
    close: str = "ok"  # ok, absent, raise:<name>
    length: str = "absent"  # absent, true, lie, raise:<name>, str, negative


@dataclass(frozen=True)
class WsgiCase:
    method: str
    path: str
    body: bytes  # wsgi.input
    content_length: Any  # CONTENT_LENGTH (None: absent)
    file_wrapper: bool  # wsgi.file_wrapper in the environ (wsgiref's)
    steps: tuple[Step, ...]  # the app's, during its call
    result: tuple[Any, ...]  # what it returns: (kind, ...)
    serve: str = "normal"  # how the server drives the response
    traceparent: Any = None  # HTTP_TRACEPARENT (None: absent)
    #: OpenTelemetry's span current while the app's call runs (an
    #: instrumentation inside ours, as Flask's), or around the whole call.
    span: Any = None


# -- strategies -------------------------------------------------------------------

exception_names = st.sampled_from(sorted(EXCEPTIONS))
statuses = st.one_of(
    st.sampled_from(["200 OK", "404 Not Found", "500 Internal Server Error", "204 No Content"]),
    st.sampled_from(
        ["abc", "20", "099 Odd", b"200 OK", 200, None, "", " 40 Odd", "\u0662\u0660\u0660 OK"]
    ),
)
chunks = st.one_of(
    st.binary(max_size=12),
    st.binary(max_size=12),
    st.tuples(st.sampled_from(["bytearray", "memoryview", "str", "bytes-subclass"]),
              st.binary(max_size=6)),
    st.tuples(st.just("len-lies"), st.binary(max_size=6), st.integers(-3, 2**63)),
    st.tuples(st.just("len-raises"), exception_names),
    st.sampled_from([("int", 3), ("none",)]),
)  # fmt: skip
start_step = st.tuples(
    st.just("start"),
    statuses,
    st.sampled_from(["list", "list", "content-length", "tuple", "none"]),
    st.sampled_from(["none", "none", "none", "current", "bad"]),
    # (rarely wrong: a known divergence skips those, issue 13)
    st.sampled_from(["positional"] * 12 + ["keywords"] * 3 + ["no-args", "extra-arg"]),
)
body_step = st.one_of(
    st.tuples(st.just("write"), chunks),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.002, 1.5])),
    st.tuples(st.just("raise"), exception_names),
)
call_step = st.one_of(
    start_step,
    body_step,
    st.tuples(
        st.just("read"), st.sampled_from(["read", "read-3", "readline", "readlines", "iter"])
    ),
)
generator_step = st.one_of(st.tuples(st.just("yield"), chunks), start_step, body_step)
iterables = st.builds(
    IterableSpec,
    chunks=st.lists(chunks, max_size=5).map(tuple),
    iter_how=st.sampled_from(
        ["self", "self", "fresh", "non-iterator", "start_response", "next-start"]
        + [f"raise:{name}" for name in ("ValueError", "StopIteration", "KeyboardInterrupt")]
    ),
    next_raises=st.one_of(st.none(), st.tuples(st.integers(0, 4), exception_names)),
    close=st.sampled_from(["ok", "ok", "absent", "raise:ValueError", "raise:GeneratorExit",
                           "raise:KeyboardInterrupt"]),
    length=st.sampled_from(["absent", "absent", "true", "lie", "raise:ValueError",
                            "raise:StopIteration", "str", "negative"]),
)  # fmt: skip
results = st.one_of(
    st.tuples(st.sampled_from(["list", "tuple"]), st.lists(chunks, max_size=5).map(tuple)),
    st.tuples(st.just("list"), split_bodies(max_size=40).map(tuple)),
    st.tuples(st.just("generator"), st.lists(generator_step, max_size=6).map(tuple)),
    st.tuples(st.just("iterable"), iterables),
    st.tuples(st.just("file"), st.binary(max_size=30)),
    st.sampled_from([("start_response",), ("writer",), ("none",), ("bytes", b"abc"), ("str", "x")]),
)


@st.composite
def wsgi_cases(draw: st.DrawFn) -> WsgiCase:
    usual = draw(st.booleans())  # most apps start first, then return: bias towards it
    steps = [draw(start_step)] if usual else []
    steps += draw(st.lists(call_step, max_size=3 if usual else 5))
    body = draw(st.binary(max_size=20))
    return WsgiCase(
        method=draw(st.sampled_from(["GET", "POST", "HEAD"])),
        path=draw(st.sampled_from(["/", "/things/1", "/metrics", "/static/x.css"])),
        body=body,
        content_length=draw(st.sampled_from([None, str(len(body)), "", "x", "99999999999999999999"])),
        file_wrapper=draw(st.booleans()),
        steps=tuple(steps),
        result=draw(results),
        serve=draw(st.sampled_from(["normal", "normal", "normal", "close-twice", "next-after-close",
                                    "iterate-twice", "close-first", "partial", "no-close"])),
        traceparent=draw(st.sampled_from([None, None, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-zz", "", b"bytes"])),
        span=draw(st.sampled_from([None, None, ("inside", 0x5C, 0xB2), ("around", 0x4B, 0xA1)])),
    )  # fmt: skip


# -- the app ---------------------------------------------------------------------


class Ctx:
    """What the app and the server share: the clock, and what they saw and raised."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.events: list[Any] = []  # the app's side
        self.log: list[Any] = []  # the server's side
        self.own: list[BaseException] = []  # raised by the app or the server
        self.returned = 0  # id() of what the app returned: holding it would keep it alive

    def fail(self, name: str, where: str) -> BaseException:
        self.own.append(EXCEPTIONS[name](f"raised by the app in {where}"))
        return self.own[-1]


class OddChunk:
    """A chunk that is not bytes, whose len() lies or raises."""

    def __init__(self, ctx: Ctx, data: bytes, length: Any) -> None:
        self.ctx, self.data, self.length = ctx, data, length

    def __len__(self) -> int:
        if isinstance(self.length, str):
            raise self.ctx.fail(self.length, "a chunk's __len__")
        return int(self.length)

    def __bytes__(self) -> bytes:
        return self.data

    def __repr__(self) -> str:  # no address: Django sends str() of what is not bytes
        return f"OddChunk({self.data!r}, {self.length!r})"


class BytesSubclass(bytes):
    pass


def make_chunk(spec: Any, ctx: Ctx) -> Any:
    if isinstance(spec, bytes):
        return spec
    kind = spec[0]
    if kind == "bytearray":
        return bytearray(spec[1])
    if kind == "memoryview":
        return memoryview(spec[1])
    if kind == "str":
        return spec[1].decode("latin-1")
    if kind == "bytes-subclass":
        return BytesSubclass(spec[1])
    if kind == "len-lies":
        return OddChunk(ctx, spec[1], spec[2])
    if kind == "len-raises":
        return OddChunk(ctx, b"", spec[1])
    return spec[1] if kind == "int" else None


def start(step: Step, start_response: Any, ctx: Ctx) -> Any:
    """Call start_response as the step says; returns what it returned."""
    _, status, headers_kind, exc_info_kind, how = step
    headers: Any = {
        "list": [("Content-Type", "text/plain")],
        "content-length": [("Content-Length", "5")],
        "tuple": (("Content-Type", "text/plain"),),
        "none": None,
    }[headers_kind]
    exc_info: Any = None
    if exc_info_kind == "current":
        try:
            raise ctx.fail("ValueError", "an error handler")
        except ValueError:
            exc_info = sys.exc_info()
    elif exc_info_kind == "bad":
        exc_info = "not exc_info"
    if how == "keywords":
        return start_response(status=status, headers=headers, exc_info=exc_info)
    if how == "no-args":
        return start_response()
    if how == "extra-arg":
        return start_response(status, headers, exc_info, "extra")
    return start_response(status, headers, exc_info)


def run_step(step: Step, environ: Any, start_response: Any, writer: Any, ctx: Ctx) -> Any:
    """One step of the app (during its call or its generator); returns the writer."""
    kind = step[0]
    if kind == "start":
        return start(step, start_response, ctx)
    if kind == "write" and writer is not None:
        writer(make_chunk(step[1], ctx))
    elif kind == "advance":
        ctx.clock.advance(step[1])
    elif kind == "raise":
        raise ctx.fail(step[1], "its steps")
    elif kind == "read":
        stream = environ.get("wsgi.input")
        how = step[1]
        read = (
            stream.read() if how == "read" else stream.read(3) if how == "read-3"
            else stream.readline() if how == "readline"
            else stream.readlines() if how == "readlines" else list(stream)
        )  # fmt: skip
        ctx.events.append(("read", normal(read)))
    return writer


class AppIterable:
    """The base of an app's iterable class; ``iterable_type`` adds what the spec says."""

    def __init__(self, spec: IterableSpec, ctx: Ctx, start_response: Any) -> None:
        self.spec, self.ctx, self.start_response = spec, ctx, start_response
        self.index = 0

    def __iter__(self) -> Any:
        how = self.spec.iter_how
        self.ctx.events.append(("__iter__",))
        if how.startswith("raise:"):
            raise self.ctx.fail(how[6:], "__iter__")
        if how == "fresh":
            return iter([make_chunk(chunk, self.ctx) for chunk in self.spec.chunks])
        if how == "non-iterator":
            return 42
        if how == "start_response":
            return self.start_response
        if how == "next-start":
            try:
                self.ctx.events.append(("next(start_response)", normal(next(self.start_response))))
            except BaseException as exc:
                self.ctx.events.append(("next(start_response) raised", normal(exc)))
        return self

    def __next__(self) -> Any:
        index = self.index
        self.index += 1
        self.ctx.events.append(("__next__", index))
        if self.spec.next_raises is not None and self.spec.next_raises[0] == index:
            raise self.ctx.fail(self.spec.next_raises[1], "__next__")
        if index >= len(self.spec.chunks):
            raise StopIteration
        return make_chunk(self.spec.chunks[index], self.ctx)


def _close(self: AppIterable) -> None:
    self.ctx.events.append(("close",))
    if self.spec.close.startswith("raise:"):
        raise self.ctx.fail(self.spec.close[6:], "close")


def _length(self: AppIterable) -> Any:
    how = self.spec.length
    if how.startswith("raise:"):
        raise self.ctx.fail(how[6:], "__len__")
    return {"true": len(self.spec.chunks), "lie": 99, "str": "3", "negative": -1}[how]


def iterable_type(spec: IterableSpec) -> type[AppIterable]:
    extra: dict[str, Any] = {}
    if spec.close != "absent":
        extra["close"] = _close
    if spec.length != "absent":
        extra["__len__"] = _length
    return type("AppIterable", (AppIterable,), extra)


def make_app(case: WsgiCase, ctx: Ctx) -> Any:
    def generator(spec: tuple[Step, ...], environ: Any, start_response: Any, writer: Any) -> Any:
        try:
            for step in spec:
                if step[0] == "yield":
                    yield make_chunk(step[1], ctx)
                else:
                    writer = run_step(step, environ, start_response, writer, ctx)
        finally:
            ctx.events.append(("generator finally",))

    def app(environ: Any, start_response: Any) -> Any:
        inside = case.span is not None and case.span[0] == "inside"
        with span_of(case.span[1:] if inside else None):
            return steps(environ, start_response)

    def steps(environ: Any, start_response: Any) -> Any:
        writer = None
        for step in case.steps:
            writer = run_step(step, environ, start_response, writer, ctx)
        kind = case.result[0]
        if kind in ("list", "tuple"):
            made = [make_chunk(chunk, ctx) for chunk in case.result[1]]
            result: Any = made if kind == "list" else tuple(made)
        elif kind == "generator":
            result = generator(case.result[1], environ, start_response, writer)
        elif kind == "iterable":
            result = iterable_type(case.result[1])(case.result[1], ctx, start_response)
        elif kind == "file":
            wrapper = environ.get("wsgi.file_wrapper", FileWrapper)
            result = wrapper(io.BytesIO(case.result[1]), 8)
        elif kind == "start_response":
            result = start_response
        elif kind == "writer":
            result = writer
        elif kind == "none":
            result = None
        else:
            result = case.result[1]
        ctx.returned = id(result)
        return result

    return app


# -- the server ------------------------------------------------------------------


class Server:
    """The server's side of one request, as a WSGI server does it, logged."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.headers_sent = False

    def start_response(self, status: Any, headers: Any, exc_info: Any = None) -> Any:
        self.ctx.log.append(
            ("start_response", normal(status), normal(headers), exc_info is not None)
        )
        if exc_info is not None and self.headers_sent:  # PEP 3333: re-raise it
            raise exc_info[1].with_traceback(exc_info[2])
        return self.write

    def write(self, data: Any) -> None:
        self.ctx.log.append(("write", normal(data)))
        self.headers_sent = self.headers_sent or bool(data)

    def failed(self, where: str, exc: BaseException) -> None:
        self.ctx.log.append(("raised", where, raised(exc, self.ctx.own)))

    def call(self, middleware: Any, environ: Any) -> Any:
        try:
            result = middleware(environ, self.start_response)
        except BaseException as exc:
            self.failed("call", exc)
            return None
        if hasattr(result, "__len__"):
            try:
                self.ctx.log.append(("len", normal(len(result))))
            except BaseException as exc:
                self.failed("len", exc)
        if isinstance(result, FileWrapper):
            self.ctx.log.append(("file wrapper back", id(result) == self.ctx.returned))
        return result

    def iterate(self, result: Any, limit: int | None = None) -> Any:
        try:
            iterator = iter(result)
            for _ in range(limit if limit is not None else 50):
                self.ctx.clock.advance(0.001)
                try:
                    chunk = next(iterator)
                except StopIteration:
                    self.ctx.log.append(("end",))
                    return iterator
                self.ctx.log.append(("chunk", normal(chunk)))
                self.headers_sent = self.headers_sent or bool(chunk)
            return iterator
        except BaseException as exc:
            self.failed("iteration", exc)
            return None

    def close(self, result: Any) -> None:
        self.ctx.clock.advance(0.004)
        close = getattr(result, "close", None)
        if close is None:
            self.ctx.log.append(("no close",))
            return
        try:
            close()
        except BaseException as exc:
            self.failed("close", exc)

    def serve(self, how: str, middleware: Any, environ: Any) -> None:
        result = self.call(middleware, environ)
        if result is None:
            return
        if how == "close-first":
            self.close(result)
            self.iterate(result)
            return
        if isinstance(result, FileWrapper) and how == "normal":  # "sendfile()"
            self.ctx.log.append(("sent file", result.filelike.read()))
        else:
            iterator = self.iterate(
                result, limit=1 if how in ("partial", "next-after-close") else None
            )
            if how == "iterate-twice":
                self.iterate(result)
            if how == "next-after-close" and iterator is not None:
                self.close(result)
                self.iterate(iterator)
                return
        if how == "no-close":
            return
        self.close(result)
        if how == "close-twice":
            self.close(result)


# -- running a case ----------------------------------------------------------------


def environ_of(case: WsgiCase) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": case.method, "PATH_INFO": case.path, "SCRIPT_NAME": "",
        "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
        "wsgi.input": io.BytesIO(case.body), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }  # fmt: skip
    if case.content_length is not None:
        environ["CONTENT_LENGTH"] = case.content_length
    if case.file_wrapper:
        environ["wsgi.file_wrapper"] = FileWrapper
    if case.traceparent is not None:
        environ["HTTP_TRACEPARENT"] = case.traceparent
    return environ


def run(case: WsgiCase, compiled: bool) -> dict[str, Any]:
    clock = FakeClock()
    aegis = fresh_pipeline(clock, compiled, exclude_paths=["/static/*"])
    ctx = Ctx(clock)
    middleware = AegisWSGIMiddleware(make_app(case, ctx), aegis=aegis)
    assert middleware.compiled is compiled
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        around = case.span is not None and case.span[0] == "around"
        with span_of(case.span[1:] if around else None):
            Server(ctx).serve(case.serve, middleware, environ_of(case))
        in_flight = aegis.aggregates.in_flight_now()
        events_before_collection = list(ctx.events)
        gc.collect()
    return {
        "server saw": ctx.log,
        "the app saw": events_before_collection,
        "the app saw, after a collection": ctx.events[len(events_before_collection) :],
        "in flight": in_flight,
        "warnings": warnings_of(caught),
        **pipeline_figures(aegis),
    }


def both_paths(case: WsgiCase) -> tuple[dict[str, Any], dict[str, Any]]:
    return run(case, compiled=False), run(case, compiled=True)

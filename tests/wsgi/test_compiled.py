"""The compiled WSGI path (``_hotpath_c/wsgi_*.c``) against the pure-Python one.

``AegisWSGIMiddleware.call_python`` is the reference: every scenario below runs
through both paths with a fake clock and must give the server the same calls
(start_response, write, the chunks, what ``len()`` says, the exceptions, by
identity), the app's iterable the same ``close()`` calls, and the pipeline the
same records, realtime figures, drop counts and in-flight count. Then what only
the compiled path has: its types, the pipeline started per process, and that
it keeps no memory, references or collector work per request.
"""

from __future__ import annotations

import gc
import io
import os
import sys
import tracemalloc
import weakref
from collections import Counter, UserDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.handlers import SimpleHandler
from wsgiref.util import FileWrapper, setup_testing_defaults
from wsgiref.validate import validator

import pytest
from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper

from aegis_mw import Aegis
from aegis_mw.testing import FakeClock, recorded
from aegis_mw.wsgi import AegisWSGIMiddleware, routing
from aegis_mw.wsgi import middleware as wsgi_middleware
from aegis_mw.wsgi.routing import ObjectRouteReader
from tests.asgi.test_compiled import FailingClock, init_arguments, retained_memory
from tests.conftest import compiled_module
from tests.core.faulty_sinks import frozen
from tests.harness import SAME_BUILD

#: Marks an environ key the scenario removes.
DELETE = object()
FILE_BYTES = b"0123456789" * 100


def base_environ(path: str = "/things/1", method: str = "GET", **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }  # fmt: skip
    for key, value in extra.items():
        if value is DELETE:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


# -- the two sides of a request ------------------------------------------------


@dataclass
class Ctx:
    """What an app is given (the fake clock, a directory) and leaves for the test."""

    clock: FakeClock
    files: Path
    events: list[Any] = field(default_factory=list)
    raised: BaseException | None = None  # the app's own exception, for identity
    returned: Any = None  # what the app returned, for identity

    def fail(self, exc: BaseException) -> BaseException:
        self.raised = exc
        return exc

    def give(self, result: Any) -> Any:
        self.returned = result
        return result


class Server:
    """The server's side: start_response and write, and what it saw, in order."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.log: list[tuple[Any, ...]] = []
        self.headers_sent = False

    def start_response(self, status: Any, headers: Any, exc_info: Any = None) -> Any:
        self.log.append(("start_response", status, _copy(headers), exc_info is not None))
        if exc_info is not None and self.headers_sent:  # PEP 3333: re-raise it
            raise exc_info[1].with_traceback(exc_info[2])
        return self.write

    def write(self, data: Any) -> None:
        self.log.append(("write", bytes(data)))
        self.headers_sent = self.headers_sent or bool(data)

    def chunk(self, chunk: Any) -> None:
        self.log.append(("chunk", type(chunk).__name__, bytes(chunk)))
        self.headers_sent = self.headers_sent or bool(chunk)

    def raised(self, where: str, exc: BaseException) -> None:
        self.log.append(("raised", where, type(exc).__name__, str(exc), exc is self.ctx.raised))

    def call(self, middleware: Any, environ: Any) -> Any:
        try:
            result = middleware(environ, self.start_response)
        except BaseException as exc:
            self.raised("call", exc)
            return None
        if hasattr(result, "__len__"):
            try:
                self.log.append(("len", len(result)))
            except Exception as exc:
                self.raised("len", exc)
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(result, wrapper):
            self.log.append(("file wrapper back", result is self.ctx.returned))
        return result

    def iterate(self, iterable: Iterable[Any]) -> None:
        """Next after next, the clock moving between them, as a slow client makes it."""
        try:
            iterator = iter(iterable)
            while True:
                self.ctx.clock.advance(0.001)
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
                self.chunk(chunk)
        except BaseException as exc:
            self.raised("iteration", exc)

    def close(self, result: Any) -> None:
        self.ctx.clock.advance(0.004)
        close = getattr(result, "close", None)
        if close is None:  # an excluded path: the app's own list
            return
        try:
            close()
        except BaseException as exc:
            self.raised("close", exc)


def _copy(headers: Any) -> Any:
    return list(headers) if isinstance(headers, list) else headers


def serve_normally(server: Server, middleware: Any, environ: Any) -> None:
    result = server.call(middleware, environ)
    if result is None:
        return
    wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(wrapper, type) and isinstance(result, wrapper):  # "sendfile()"
        server.log.append(("sent file", result.filelike.read()))
    else:
        server.iterate(result)
    server.close(result)


def serve_closing_twice(server: Server, middleware: Any, environ: Any) -> None:
    result = server.call(middleware, environ)
    server.iterate(result)
    server.close(result)
    server.close(result)


def serve_next_after_close(server: Server, middleware: Any, environ: Any) -> None:
    result = server.call(middleware, environ)
    iterator = iter(result)
    server.chunk(next(iterator))
    server.close(result)
    server.iterate(iterator)


def serve_iterating_twice(server: Server, middleware: Any, environ: Any) -> None:
    result = server.call(middleware, environ)
    server.chunk(next(iter(result)))
    server.iterate(result)  # iter() again: the same pass goes on
    server.iterate(result)
    server.close(result)


def serve_on_after_an_error(server: Server, middleware: Any, environ: Any) -> None:
    result = server.call(middleware, environ)
    server.iterate(result)  # until it raises
    server.iterate(result)  # the pass is over: nothing more
    server.close(result)


def serve_next_without_iter(server: Server, middleware: Any, environ: Any) -> None:
    result = server.call(middleware, environ)
    server.chunk(next(result))  # the response is its own iterator, as a generator is
    server.iterate(result)
    server.close(result)


def serve_closing_first(server: Server, middleware: Any, environ: Any) -> None:
    result = server.call(middleware, environ)
    server.close(result)
    server.iterate(result)


# -- apps ------------------------------------------------------------------------

App = Callable[[dict[str, Any], Any], Any]


def _list(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        ctx.clock.advance(0.002)
        start_response("200 OK", [("Content-Type", "text/plain")])
        ctx.clock.advance(0.003)
        return [b"hello", b" world"]

    return app


def _returns(status: Any, chunks: Any) -> Callable[[Ctx], App]:
    def make(ctx: Ctx) -> App:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            ctx.clock.advance(0.002)
            start_response(status, [])
            return chunks() if callable(chunks) else chunks

        return app

    return make


def _generator(ctx: Ctx) -> App:
    def body() -> Iterator[bytes]:
        ctx.clock.advance(0.01)
        yield b""
        ctx.clock.advance(0.01)
        yield b"first"
        yield b""
        ctx.clock.advance(0.05)
        yield b"second"
        ctx.clock.advance(0.02)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return body()

    return app


def _lazy_start(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        ctx.clock.advance(0.01)  # the server is iterating already
        start_response("202 Accepted", [("X-Late", "1")])
        ctx.clock.advance(0.01)
        yield b"late"

    return app


def _write(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [])
        ctx.clock.advance(0.001)
        write(b"")
        ctx.clock.advance(0.002)
        write(b"legacy ")
        write(bytearray(b"write "))
        return [b"body"]

    return app


def _write_by_keyword(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [])
        ctx.clock.advance(0.001)
        write(data=b"named")
        return []

    return app


def _write_after_start_again(ctx: Ctx) -> App:
    """Two start_response calls: the write() of either goes to the latest server write."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        first = start_response("200 OK", [])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            second = start_response("500 Internal Server Error", [], sys.exc_info())
        first(b"one ")
        second(b"two")
        return []

    return app


def _exc_info_before_the_body(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise LookupError("went wrong")
        except LookupError:
            ctx.clock.advance(0.001)
            start_response("500 Internal Server Error", [("X-Error", "1")], sys.exc_info())
        return [b"error page"]

    return app


def _exc_info_after_the_body(ctx: Ctx) -> App:
    """start_response(exc_info) once the headers went out: the server re-raises it."""

    def body(start_response: Any) -> Iterator[bytes]:
        yield b"part"
        try:
            raise ctx.fail(ValueError("too late"))
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return body(start_response)

    return app


def _keywords(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(status="201 Created", headers=[("Location", "/1")], exc_info=None)
        return [b"made"]

    return app


def _some_keywords(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("203 Non-Authoritative", headers=[])
        return [b"x"]

    return app


def _bad_start_calls(ctx: Ctx) -> App:
    """Wrong start_response (and write) calls raise the same TypeError, word for word,
    on both paths (nothing reaches the server); write() returns None."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        for args, kwargs in [
            (("200 OK",), {}),
            (("200 OK", [], None, "extra"), {}),
            (("200 OK", []), {"exc_info": None, "status": "201"}),
            (("200 OK", []), {"unknown": 1}),
            ((), {}),
            ((), {"headers": []}),
            (("200 OK", [], None), {"exc_info": None}),
        ]:
            try:
                start_response(*args, **kwargs)
            except TypeError as exc:
                ctx.events.append(("TypeError", str(exc)))
        write = start_response("200 OK", [])
        for args, kwargs in [((), {}), ((b"a", b"b"), {}), ((), {"datum": b"x"})]:
            try:
                write(*args, **kwargs)
            except TypeError as exc:
                ctx.events.append(("TypeError", str(exc)))
        ctx.events.append(("write returned", write(b"w")))
        return [b"ok"]

    return app


def _reads_body(how: str) -> Callable[[Ctx], App]:
    def make(ctx: Ctx) -> App:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            stream = environ["wsgi.input"]
            if how == "read":
                data: Any = stream.read()
            elif how == "read-sized":
                data = [stream.read(2), stream.read(None), stream.read(5)]
            elif how == "readline":
                data = [stream.readline(), stream.readline(3), stream.readline()]
            elif how == "readlines":
                data = stream.readlines()
            elif how == "iterate":
                data = list(stream)
            elif how == "next":
                data = [next(stream), next(stream)]
            elif how == "into":
                buffer = bytearray(5)
                data = [stream.readinto(buffer), stream.readinto1(buffer), stream.read1(4)]
            else:  # an attribute of the server's stream, through the counting one
                data = stream.getvalue()
            ctx.events.append(("read", data))
            start_response("200 OK", [])
            return [b"read"]

        return app

    return make


def _sees_input(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        ctx.events.append(("input", type(environ.get("wsgi.input")).__name__))
        start_response("204 No Content", [])
        return []

    return app


def _raises_before_start(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        ctx.clock.advance(0.003)
        raise ctx.fail(ValueError("no database"))

    return app


def _raises_after_start(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        ctx.clock.advance(0.003)
        raise ctx.fail(KeyError("after start"))

    return app


def _raises(exc_type: type[BaseException]) -> Callable[[Ctx], App]:
    def make(ctx: Ctx) -> App:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            ctx.clock.advance(0.003)
            raise ctx.fail(exc_type("stopped"))

        return app

    return make


def _breaks_mid_body(ctx: Ctx) -> App:
    def body() -> Iterator[bytes]:
        yield b"partial"
        ctx.clock.advance(0.01)
        raise ctx.fail(ValueError("broke mid-stream"))

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return body()

    return app


def _breaks_before_any_start(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        raise ctx.fail(RuntimeError("before start_response, lazily"))
        yield b""  # a generator

    return app


def _disconnect_mid_body(ctx: Ctx) -> App:
    def body() -> Iterator[bytes]:
        yield b"x"
        raise ctx.fail(ConnectionResetError("peer went away"))

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return body()

    return app


class Body:
    """An app iterable of its own: chunks, an optional failure at close(), and a log."""

    def __init__(
        self, ctx: Ctx, chunks: list[Any], close_error: BaseException | None = None
    ) -> None:
        self.ctx = ctx
        self.chunks = chunks
        self.close_error = close_error

    def __iter__(self) -> Iterator[Any]:
        self.ctx.events.append("iter")
        return iter(self.chunks)

    def close(self) -> None:
        self.ctx.events.append("close")
        if self.close_error is not None:
            raise self.ctx.fail(self.close_error)


class SizedBody(Body):
    def __len__(self) -> int:
        return len(self.chunks)


class OneShot:
    """An iterator that raises once, then goes on (what a second next() would find)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.calls = 0

    def __iter__(self) -> OneShot:
        return self

    def __next__(self) -> bytes:
        self.calls += 1
        self.ctx.events.append(("next", self.calls))
        if self.calls == 1:
            return b"one"
        if self.calls == 2:
            raise self.ctx.fail(ValueError("once"))
        if self.calls == 3:
            return b"after the error"
        raise StopIteration

    def close(self) -> None:
        self.ctx.events.append("close")


def _body(
    make_body: Callable[[Ctx], Any], status: Any = "200 OK", headers: Any = ()
) -> Callable[[Ctx], App]:
    def make(ctx: Ctx) -> App:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            start_response(status, list(headers))
            return ctx.give(make_body(ctx))

        return app

    return make


class BadLength:
    def __len__(self) -> int:
        raise ArithmeticError("no length for you")


class TruthRaises:
    """A value whose truth raises ValueError: "not a number" to number_or_zero()."""

    def __bool__(self) -> bool:
        raise ValueError("no truth here")


class TrueButEmpty:
    """A chunk whose truth and length disagree: the Python path reads both."""

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return 0

    def __bytes__(self) -> bytes:
        return b""


def _sets_route(value: Any, key: str = "aegis.route") -> Callable[[Ctx], App]:
    def make(ctx: Ctx) -> App:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            environ[key] = value
            start_response("200 OK", [])
            return [b"routed"]

        return app

    return make


def _reader(answer: Any) -> Callable[[Ctx], Any]:
    def make(ctx: Ctx) -> Any:
        def read(environ: dict[str, Any]) -> Any:
            ctx.events.append(("reader", environ.get("PATH_INFO")))
            if isinstance(answer, BaseException):
                # A new one each time: raising the same one would keep the frames
                # of its last request (and their objects) in its traceback.
                raise type(answer)(*answer.args)
            return answer

        return read

    return make


class Rule:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern


RULE = Rule("/things/<thing_id>")


def _object_reader(ctx: Ctx) -> ObjectRouteReader:
    def template(rule: Rule) -> str:
        ctx.events.append(("template", rule.pattern))
        return rule.pattern.replace("<", "{").replace(">", "}")

    return ObjectRouteReader("test.rule", template)


class SlotsFileWrapper:
    """A file wrapper whose close() cannot be replaced: it is wrapped as any iterable."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.filelike.read(self.blksize), b"")

    def close(self) -> None:
        self.filelike.close()


class PosingAsAFile:
    """A response that says it is of the server's file wrapper (as a proxy or a mock
    with a spec does): isinstance() believes it, so both paths treat it as one."""

    def __init__(self, ctx: Ctx) -> None:
        self.filelike = io.BytesIO(b"posing")
        self.ctx = ctx

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return FileWrapper

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.filelike.read()])

    def close(self) -> None:
        self.ctx.events.append("close")


class ClaimsAll(type):
    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, list) and instance == [b"claimed"]


class ClaimingWrapper(FileWrapper, metaclass=ClaimsAll):
    """A file wrapper whose metaclass claims some lists as its instances."""


class ClaimedList(list):  # type: ignore[type-arg]
    filelike = io.BytesIO(b"")


class RaisesOnce(type):
    """A metaclass whose isinstance() raises for a response it has not seen yet (so
    the middleware's question fails, and the test server's own, later, does not)."""

    def __instancecheck__(cls, instance: Any) -> bool:
        if isinstance(instance, Unseen) and not instance.seen:
            instance.seen = True
            raise LookupError("isinstance failed")
        return False


class RaisingWrapper(FileWrapper, metaclass=RaisesOnce):
    """A file wrapper whose isinstance() fails: ours to count, not the request's error."""


class Unseen(list):  # type: ignore[type-arg]
    seen = False

    def __init__(self, ctx: Ctx, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        self.ctx = ctx

    def close(self) -> None:
        self.ctx.events.append("close")


def _file(
    offset: int = 0, headers: Any = (("Content-Type", "text/plain"),), size: int | None = None
) -> Callable[[Ctx], App]:
    def make(ctx: Ctx) -> App:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            path = ctx.files / "served.txt"
            path.write_bytes(FILE_BYTES)
            filelike = path.open("rb")
            filelike.seek(offset)
            listed = list(headers)
            if size is not None:
                listed.append(("Content-Length", str(size)))
            start_response("200 OK", listed)
            return ctx.give(environ["wsgi.file_wrapper"](filelike, 256))

        return app

    return make


class InterruptingHeaders:
    """Response headers whose reading is interrupted (a KeyboardInterrupt): the
    server takes them as they are, our look for a Content-Length fails."""

    def __iter__(self) -> Iterator[tuple[str, str]]:
        raise KeyboardInterrupt

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InterruptingHeaders)

    __hash__ = None  # type: ignore[assignment]


def _file_with_interrupting_headers(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", InterruptingHeaders())
        return ctx.give(environ["wsgi.file_wrapper"](io.BytesIO(b"never sent")))

    return app


class StopsIteration:
    """A chunk whose truth or length raises StopIteration. On the Python path that
    happens inside a generator, which turns it into a RuntimeError (PEP 479): the
    server must never take it for the end of the body."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __bool__(self) -> bool:
        if self.where == "truth":
            raise StopIteration("no truth")
        return True

    def __len__(self) -> int:
        raise StopIteration("no length")


class RaisingIter:
    """An iterable whose __iter__ raises what it is given."""

    def __init__(self, ctx: Ctx, error: BaseException) -> None:
        self.ctx = ctx
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        raise self.error

    def close(self) -> None:
        self.ctx.events.append("close")


class ExitingIterator:
    """An iterator whose second next() raises GeneratorExit (the Python path lets
    that through unrecorded, as the end of the pass, not an error of the body)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.calls = 0

    def __iter__(self) -> ExitingIterator:
        return self

    def __next__(self) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return b"one"
        raise self.ctx.fail(GeneratorExit("stopped"))

    def close(self) -> None:
        self.ctx.events.append("close")


def _misuses_its_start_response(ctx: Ctx) -> App:
    """What an app may try on the start_response it is given, besides calling it:
    the same errors on both paths (a callable, not an iterator, without close())."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        for attempt in (iter, next, lambda sr: sr.close(), lambda sr: sr.throw(ValueError())):
            try:
                attempt(start_response)
                ctx.events.append("no error")
            except Exception as exc:
                ctx.events.append(type(exc).__name__)
        start_response("200 OK", [])
        return [b"fine"]

    return app


class NextsTheStartResponse:
    """An iterable whose __iter__ calls next() on the app's start_response (a bug of
    the app's), once: it must raise there, and the body go out whole."""

    def __init__(self, ctx: Ctx, start_response: Any) -> None:
        self.ctx = ctx
        self.start_response = start_response

    def __iter__(self) -> Iterator[bytes]:
        try:
            next(self.start_response)
            self.ctx.events.append("no error")
        except Exception as exc:
            self.ctx.events.append(type(exc).__name__)
        return iter([b"a", b"b", b"c"])


def _iter_calls_next_on_start_response(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return NextsTheStartResponse(ctx, start_response)

    return app


class ClosesOnCheck(type):
    """A file wrapper's metaclass whose isinstance() tries to close the response (it
    reaches the app's start_response through the response), then claims it."""

    def __instancecheck__(cls, instance: Any) -> bool:
        if not isinstance(instance, HoldsStartResponse):
            return False
        if not instance.checked:
            instance.checked = True
            try:
                instance.start_response.close()
                instance.ctx.events.append("closed")
            except AttributeError:
                instance.ctx.events.append("nothing to close")
        return True


class ClosingCheckWrapper(FileWrapper, metaclass=ClosesOnCheck):
    pass


class HoldsStartResponse(list):  # type: ignore[type-arg]
    checked = False

    def __init__(self, ctx: Ctx, start_response: Any) -> None:
        super().__init__([b"held"])
        self.ctx = ctx
        self.start_response = start_response
        self.filelike = io.BytesIO(b"held")


def _isinstance_closes_the_response(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return HoldsStartResponse(ctx, start_response)

    return app


# -- one scenario, two paths -----------------------------------------------------


@dataclass
class Scenario:
    app: Callable[[Ctx], App]
    environ: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    reader: Callable[[Ctx], Any] | None = None
    exclude: tuple[str, ...] = ()
    serve: Callable[[Server, Any, Any], None] = serve_normally
    environ_type: Callable[[dict[str, Any]], Any] = dict
    clock_fails_at: int | None = None
    clock_fails_with: type[BaseException] = RuntimeError
    requests: int = 1  # served one after another by the same middleware
    records: int = 1  # how many the reference records


class EnvironDict(dict):  # type: ignore[type-arg]
    """A dict subclass: not an exact dict, so the compiled path hands it to Python."""


WRAPPERS = {"wsgiref": FileWrapper, "gunicorn": GunicornFileWrapper, "slots": SlotsFileWrapper}

SCENARIOS: dict[str, Scenario] = {
    "list": Scenario(_list),
    "generator": Scenario(_generator),
    "lazy-start": Scenario(_lazy_start),
    "write": Scenario(_write),
    "write-by-keyword": Scenario(_write_by_keyword),
    "write-after-start-again": Scenario(_write_after_start_again),
    "exc-info-before-the-body": Scenario(_exc_info_before_the_body),
    "exc-info-after-the-body": Scenario(_exc_info_after_the_body),
    "start-by-keywords": Scenario(_keywords),
    "start-by-some-keywords": Scenario(_some_keywords),
    "bad-start-calls": Scenario(_bad_start_calls),
    "status-abc": Scenario(_returns("abc", [b"x"])),
    "status-bytes": Scenario(_returns(b"200 OK", [b"x"])),
    "status-int": Scenario(_returns(200, [b"x"])),
    "status-short": Scenario(_returns("20", [b"x"])),
    "status-leading-zero": Scenario(_returns("099 Odd", [b"x"])),
    "status-code-only": Scenario(_returns("404", [b"x"])),
    "status-spaces": Scenario(_returns(" 40 Odd", [b"x"])),
    "status-non-ascii-digits": Scenario(_returns("\u0662\u0660\u0660 OK", [b"x"])),
    "status-none": Scenario(_returns(None, [b"x"])),
    "head": Scenario(_list, environ={"REQUEST_METHOD": "HEAD"}),
    "method-missing": Scenario(_list, environ={"REQUEST_METHOD": DELETE}),
    "method-none": Scenario(_list, environ={"REQUEST_METHOD": None}, records=0),  # invalid
    "script-name": Scenario(_list, environ={"SCRIPT_NAME": "/api"}),
    "script-name-missing": Scenario(_list, environ={"SCRIPT_NAME": DELETE}),
    "path-info-missing": Scenario(_list, environ={"PATH_INFO": DELETE}),
    "path-info-empty": Scenario(_list, environ={"PATH_INFO": "", "SCRIPT_NAME": "/app"}),
    "path-info-not-a-str": Scenario(_list, environ={"PATH_INFO": b"/bytes"}, records=0),
    "path-info-str-subclass": Scenario(
        _list, environ={"PATH_INFO": type("Text", (str,), {})("/sub")}
    ),
    "remote-addr-missing": Scenario(_list, environ={"REMOTE_ADDR": DELETE}),
    "remote-addr-empty": Scenario(_list, environ={"REMOTE_ADDR": ""}),
    "remote-port-missing": Scenario(_list, environ={"REMOTE_PORT": DELETE}),
    "remote-port-abc": Scenario(_list, environ={"REMOTE_PORT": "abc"}),
    "remote-port-int": Scenario(_list, environ={"REMOTE_PORT": 8080}),
    "remote-port-long": Scenario(_list, environ={"REMOTE_PORT": "12345678901234"}),
    "remote-port-spaces": Scenario(_list, environ={"REMOTE_PORT": " 81 "}),
    "remote-port-float": Scenario(_list, environ={"REMOTE_PORT": 80.9}),
    "remote-port-none": Scenario(_list, environ={"REMOTE_PORT": None}),
    "remote-port-truth-raises": Scenario(_list, environ={"REMOTE_PORT": TruthRaises()}),
    **{
        f"body-{how}": Scenario(
            _reads_body(how),
            environ={
                "REQUEST_METHOD": "POST",
                "CONTENT_LENGTH": "23",
                "wsgi.input": io.BytesIO(b"line one\nline two\nend\n"),
            },
        )
        for how in (
            "read",
            "read-sized",
            "readline",
            "readlines",
            "iterate",
            "next",
            "into",
            "attribute",
        )
    },
    "body-chunked": Scenario(
        _reads_body("read"),
        environ={"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(b"abc\ndef")},
    ),
    "body-without-length": Scenario(
        _reads_body("read"), environ={"wsgi.input": io.BytesIO(b"not counted")}
    ),
    "body-length-zero": Scenario(
        _reads_body("read"), environ={"CONTENT_LENGTH": "", "wsgi.input": io.BytesIO(b"zero")}
    ),
    "input-none": Scenario(_sees_input, environ={"wsgi.input": None, "CONTENT_LENGTH": "3"}),
    "input-missing": Scenario(_sees_input, environ={"wsgi.input": DELETE, "CONTENT_LENGTH": "3"}),
    "raises-before-start": Scenario(_raises_before_start),
    "raises-after-start": Scenario(_raises_after_start),
    "keyboard-interrupt": Scenario(_raises(KeyboardInterrupt)),
    "disconnect": Scenario(_raises(ConnectionResetError)),
    "breaks-mid-body": Scenario(_breaks_mid_body),
    "breaks-before-any-start": Scenario(_breaks_before_any_start),
    "disconnect-mid-body": Scenario(_disconnect_mid_body),
    "raises-then-goes-on": Scenario(_body(OneShot), serve=serve_on_after_an_error),
    "close-raises": Scenario(_body(lambda ctx: Body(ctx, [b"a", b"b"], LookupError("close")))),
    "close-raises-a-disconnect": Scenario(
        _body(lambda ctx: Body(ctx, [b"a"], BrokenPipeError("close")))
    ),
    "close-raises-keyboard-interrupt": Scenario(
        _body(lambda ctx: Body(ctx, [b"a"], KeyboardInterrupt()))
    ),
    "close-twice": Scenario(_body(lambda ctx: Body(ctx, [b"a"])), serve=serve_closing_twice),
    "next-after-close": Scenario(
        _body(lambda ctx: Body(ctx, [b"a", b"b", b"c"])), serve=serve_next_after_close
    ),
    "next-after-close-generator": Scenario(_generator, serve=serve_next_after_close),
    "iter-twice": Scenario(
        _body(lambda ctx: SizedBody(ctx, [b"a", b"b", b"c"])), serve=serve_iterating_twice
    ),
    "iter-twice-generator": Scenario(_generator, serve=serve_iterating_twice),
    "next-without-iter": Scenario(
        _body(lambda ctx: SizedBody(ctx, [b"a", b"b", b"c"])), serve=serve_next_without_iter
    ),
    "next-without-iter-generator": Scenario(_generator, serve=serve_next_without_iter),
    "close-first": Scenario(
        _body(lambda ctx: SizedBody(ctx, [b"a", b"b"])), serve=serve_closing_first
    ),
    "sized-body": Scenario(_body(lambda ctx: SizedBody(ctx, [b"one", b"two"]))),
    "tuple-body": Scenario(_body(lambda ctx: (b"a", b"bc"))),
    "returns-none": Scenario(_body(lambda ctx: None)),
    "bytearray-and-memoryview": Scenario(
        _body(lambda ctx: [bytearray(b"abc"), memoryview(b"defg"), b"h"])
    ),
    "chunk-without-length": Scenario(_body(lambda ctx: [b"ok", BadLength(), b"never"])),
    "chunk-true-but-empty": Scenario(_body(lambda ctx: [TrueButEmpty(), b"x"])),
    "chunk-length-stops-iteration": Scenario(
        _body(lambda ctx: [b"ok", StopsIteration("length"), b"never"])
    ),
    "chunk-truth-stops-iteration": Scenario(
        _body(lambda ctx: [b"ok", StopsIteration("truth"), b"never"])
    ),
    "iter-stops-iteration": Scenario(
        _body(lambda ctx: RaisingIter(ctx, StopIteration("from __iter__")))
    ),
    "clock-stops-iteration-at-ttfb": Scenario(
        _generator, clock_fails_at=2, clock_fails_with=StopIteration
    ),
    "next-raises-generator-exit": Scenario(_body(ExitingIterator)),
    "iter-raises-generator-exit": Scenario(
        _body(lambda ctx: RaisingIter(ctx, GeneratorExit("from __iter__")))
    ),
    "app-misuses-its-start-response": Scenario(_misuses_its_start_response),
    "iter-calls-next-on-the-start-response": Scenario(_iter_calls_next_on_start_response),
    "isinstance-closes-the-response": Scenario(
        _isinstance_closes_the_response, environ={"wsgi.file_wrapper": ClosingCheckWrapper}
    ),
    "dict-subclass-environ": Scenario(_list, environ_type=EnvironDict),
    "mapping-environ": Scenario(_list, environ_type=UserDict),
    "mapping-environ-with-body": Scenario(
        _reads_body("read"),
        environ={"CONTENT_LENGTH": "4", "wsgi.input": io.BytesIO(b"data")},
        environ_type=UserDict,
    ),
    "excluded-mounted-route": Scenario(_list, environ={"PATH_INFO": "/health/live"}, records=0),
    "excluded-metrics": Scenario(_list, environ={"PATH_INFO": "/metrics"}, records=0),
    "excluded-by-the-user": Scenario(
        _list, environ={"PATH_INFO": "/static/app.css"}, exclude=("/static/*",), records=0
    ),
    "excluded-by-the-user-literal": Scenario(
        _list, environ={"PATH_INFO": "/skip"}, exclude=("/skip",), records=0
    ),
    "excluded-by-option": Scenario(
        _list,
        environ={"PATH_INFO": "/assets/x.js"},
        options={"exclude_paths": ["/assets/*"]},
        records=0,
    ),
    "not-excluded-by-script-name": Scenario(
        _list, environ={"PATH_INFO": "/x.css", "SCRIPT_NAME": "/static"}, exclude=("/static/*",)
    ),
    "clock-fails-at-start": Scenario(_list, clock_fails_at=1, records=0),
    "clock-fails-at-ttfb": Scenario(_list, clock_fails_at=2),
    "clock-fails-at-end": Scenario(_list, clock_fails_at=3, records=0),
    "clock-fails-at-write": Scenario(_write, clock_fails_at=2),
    "clock-fails-at-end-when-close-raises": Scenario(
        _body(lambda ctx: Body(ctx, [b"a"], LookupError("close"))), clock_fails_at=3, records=0
    ),
    "clock-interrupted-at-start": Scenario(
        _list, clock_fails_at=1, clock_fails_with=KeyboardInterrupt, records=0
    ),
    "clock-interrupted-at-ttfb": Scenario(
        _generator, clock_fails_at=2, clock_fails_with=KeyboardInterrupt
    ),
    "clock-interrupted-at-end": Scenario(
        _list, clock_fails_at=3, clock_fails_with=KeyboardInterrupt, records=0
    ),
    "clock-interrupted-at-end-when-close-raises": Scenario(
        _body(lambda ctx: Body(ctx, [b"a"], LookupError("close"))),
        clock_fails_at=3,
        clock_fails_with=KeyboardInterrupt,
        records=0,
    ),
    "full-inbox": Scenario(_list, options={"max_buffer": 2}, requests=4, records=2),
    "trusted-proxy": Scenario(
        _list,
        environ={"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.0.0.2"},
        options={"trusted_proxies": ["10.0.0.0/8"]},
    ),
    "untrusted-peer": Scenario(
        _list,
        environ={"REMOTE_ADDR": "198.51.100.7", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        options={"trusted_proxies": ["10.0.0.0/8"]},
    ),
    "trusted-proxy-without-header": Scenario(
        _list, environ={"REMOTE_ADDR": "10.0.0.1"}, options={"trusted_proxies": ["10.0.0.0/8"]}
    ),
    "trusted-proxy-no-address": Scenario(
        _list, environ={"REMOTE_ADDR": DELETE}, options={"trusted_proxies": ["10.0.0.0/8"]}
    ),
    "route-in-environ": Scenario(_sets_route("/things/{thing_id}"), reader=_reader("/reader")),
    "route-in-environ-empty": Scenario(_sets_route(""), reader=_reader("/reader")),
    "route-in-environ-none": Scenario(_sets_route(None), reader=_reader("/reader")),
    "route-reader-none": Scenario(_list, reader=_reader(None)),
    "route-reader-empty": Scenario(_list, reader=_reader("")),
    "route-reader-str": Scenario(_list, reader=_reader("/things/{id}")),
    "route-reader-raises": Scenario(_list, reader=_reader(ZeroDivisionError("x")), records=0),
    "route-object": Scenario(
        _sets_route(RULE, "test.rule"), reader=_object_reader, requests=3, records=3
    ),
    "route-object-none": Scenario(_sets_route(None, "test.rule"), reader=_object_reader),
    "route-object-and-route": Scenario(
        _sets_route("/explicit"), reader=_object_reader, environ={"test.rule": RULE}
    ),
    **{
        f"file-{name}{suffix}": Scenario(_file(**arguments), environ={"wsgi.file_wrapper": wrapper})
        for name, wrapper in WRAPPERS.items()
        for suffix, arguments in [
            ("", {}),
            ("-content-length", {"size": 300}),
            ("-rest-of-the-file", {"offset": 250}),
        ]
    },
    "file-closed-twice": Scenario(
        _file(size=10), environ={"wsgi.file_wrapper": FileWrapper}, serve=serve_closing_twice
    ),
    "file-head": Scenario(
        _file(size=1000), environ={"wsgi.file_wrapper": FileWrapper, "REQUEST_METHOD": "HEAD"}
    ),
    "file-bad-content-length": Scenario(
        _file(headers=[("Content-Length", "many")]), environ={"wsgi.file_wrapper": FileWrapper}
    ),
    "file-unreadable-headers": Scenario(
        _file(headers=[("Content-Length", None)]),
        environ={"wsgi.file_wrapper": FileWrapper},
        records=0,
    ),
    "file-interrupting-headers": Scenario(
        _file_with_interrupting_headers, environ={"wsgi.file_wrapper": FileWrapper}, records=0
    ),
    "file-wrapper-not-a-type": Scenario(
        _body(lambda ctx: FileWrapper(io.BytesIO(b"abc"))),
        environ={"wsgi.file_wrapper": lambda filelike, size=8192: FileWrapper(filelike, size)},
    ),
    "file-wrapper-other-response": Scenario(_list, environ={"wsgi.file_wrapper": FileWrapper}),
    "file-wrapper-by-its-class-attribute": Scenario(
        _body(PosingAsAFile), environ={"wsgi.file_wrapper": FileWrapper}
    ),
    "file-wrapper-by-its-metaclass": Scenario(
        _body(lambda ctx: ClaimedList([b"claimed"])),
        environ={"wsgi.file_wrapper": ClaimingWrapper},
    ),
    "file-wrapper-with-a-metaclass-other-response": Scenario(
        _list, environ={"wsgi.file_wrapper": ClaimingWrapper}
    ),
    # Counted, and the app's response goes out as it is, unrecorded.
    "file-wrapper-whose-isinstance-raises": Scenario(
        _body(lambda ctx: Unseen(ctx, [b"a", b"b"])),
        environ={"wsgi.file_wrapper": RaisingWrapper},
        records=0,
    ),
}


class InterruptedClock(FailingClock):
    """A FailingClock whose failure may be a BaseException (KeyboardInterrupt)."""

    def __init__(self, fails_at: int, error: type[BaseException]) -> None:
        super().__init__(fails_at)
        self.error = error

    def monotonic(self) -> float:
        try:
            return super().monotonic()
        except RuntimeError:
            raise self.error("the clock failed") from None


@dataclass
class Outcome:
    log: list[list[tuple[Any, ...]]]
    events: list[Any]
    records: list[Any]
    realtime: Any
    dropped: dict[str, int]
    in_flight: int
    app_raised: str | None  # the type of what the app raised


def outcome(
    scenario: Scenario, make_aegis: Callable[..., Aegis], tmp_path: Path, compiled: bool
) -> Outcome:
    clock = (
        FakeClock()
        if scenario.clock_fails_at is None
        else InterruptedClock(scenario.clock_fails_at, scenario.clock_fails_with)
    )
    files = tmp_path / ("compiled" if compiled else "python")
    files.mkdir()
    ctx = Ctx(clock, files)
    options = {"metrics_registry": "none", "flush_interval": 3600, **scenario.options}
    aegis = make_aegis(clock=clock, speedups=compiled, **options)
    aegis.hot_path = SAME_BUILD  # aegis_build_info names the path: set alike on both
    reader = scenario.reader(ctx) if scenario.reader is not None else None
    middleware = AegisWSGIMiddleware(scenario.app(ctx), aegis=aegis, route_reader=reader)
    assert middleware.compiled is compiled
    aegis.exclude(*scenario.exclude)
    logs = []
    with frozen(aegis) if scenario.requests > 1 else nullcontext():
        for _ in range(scenario.requests):
            server = Server(ctx)
            # The environ is built anew per request (a BytesIO is read once).
            environ = scenario.environ_type(base_environ(**_fresh(scenario.environ)))
            scenario.serve(server, middleware, environ)
            logs.append(server.log)
    records = [record._replace(request_id="") for record in recorded(aegis)]
    return Outcome(
        logs, ctx.events, records, aegis.realtime(), dict(aegis.stats().dropped),
        aegis.aggregates.in_flight_now(), type(ctx.raised).__name__ if ctx.raised else None,
    )  # fmt: skip


def _fresh(overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        key: io.BytesIO(value.getvalue()) if isinstance(value, io.BytesIO) else value
        for key, value in overrides.items()
    }


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_both_paths_behave_the_same(
    name: str, make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Same server calls and exceptions (by identity), same close() calls on the app's
    iterable, same records field by field, realtime figures, drops and in-flight count."""
    compiled_module()
    scenario = SCENARIOS[name]
    python = outcome(scenario, make_aegis, tmp_path, compiled=False)
    fast = outcome(scenario, make_aegis, tmp_path, compiled=True)
    assert fast == python
    assert len(python.records) == scenario.records
    assert python.in_flight == 0
    # What the app raised reached the server as the very same object.
    raised = [entry for log in python.log for entry in log if entry[0] == "raised"]
    assert all(entry[4] for entry in raised if entry[2] == python.app_raised)
    if python.app_raised is not None and issubclass(scenario.clock_fails_with, Exception):
        assert any(entry[4] for entry in raised)  # (a KeyboardInterrupt of ours replaces it)


# -- under wsgiref's own server side, and its validator --------------------------


class Handler(SimpleHandler):
    """wsgiref's server side of one request, over in-memory streams. Its
    sendfile() notes the file wrapper it got back and writes the file itself."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.out = io.BytesIO()
        self.err = io.StringIO()
        super().__init__(io.BytesIO(b""), self.out, self.err, environ, multithread=False)
        self.files: list[Any] = []

    def sendfile(self) -> bool:
        self.files.append(self.result)
        for data in iter(lambda: self.result.filelike.read(4096), b""):  # type: ignore[attr-defined]
            self.write(data)
        return True


def _served(handler: Handler) -> bytes:
    """The response as sent, without the Date header (the wall clock's)."""
    lines = handler.out.getvalue().split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.startswith(b"Date: "))


def _wsgiref_apps(files: Path) -> dict[str, App]:
    def one(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"sized by wsgiref"]  # one item: wsgiref sets Content-Length from len()

    def two(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a", b"b"]

    def generator(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        yield b"streamed"

    def write(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]

    def read_body(environ: dict[str, Any], start_response: Any) -> Any:
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.upper()]

    def file(environ: dict[str, Any], start_response: Any) -> Any:
        path = files / "file.txt"
        path.write_bytes(FILE_BYTES)
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(FILE_BYTES)))]
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](path.open("rb"))

    return {
        "one": one, "two": two, "generator": generator, "write": write,
        "read_body": read_body, "file": file,
    }  # fmt: skip


def _wsgiref_outcome(
    make_aegis: Callable[..., Aegis], files: Path, name: str, compiled: bool, validate: bool
) -> tuple[bytes, str, list[Any], list[Any]]:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, speedups=compiled, metrics_registry="none")
    app = _wsgiref_apps(files)[name]
    middleware: Any = AegisWSGIMiddleware(validator(app) if validate else app, aegis=aegis)
    assert middleware.compiled is compiled
    environ: dict[str, Any] = {"PATH_INFO": f"/{name}", "SCRIPT_NAME": "", "QUERY_STRING": ""}
    environ["REQUEST_METHOD"] = "POST"
    setup_testing_defaults(environ)
    environ.update(CONTENT_LENGTH="4", REMOTE_ADDR="10.0.0.8", REMOTE_PORT="41000")
    handler = Handler(environ)
    handler.stdin = io.BytesIO(b"body")
    handler.run(validator(middleware) if validate else middleware)
    sent = [type(result).__name__ for result in handler.files]
    records = [record._replace(request_id="") for record in recorded(aegis)]
    assert aegis.aggregates.in_flight_now() == 0
    return _served(handler), handler.err.getvalue(), sent, records


@pytest.mark.parametrize("name", ["one", "two", "generator", "write", "read_body", "file"])
@pytest.mark.parametrize("validate", [False, True], ids=["plain", "validated"])
def test_under_wsgiref_both_paths_send_the_same(
    make_aegis: Callable[..., Aegis], tmp_path: Path, name: str, validate: bool
) -> None:
    """wsgiref's handler (sizing a one-item response by len(), sending a file wrapper
    it gets back), with wsgiref.validate around the app and around the middleware:
    no complaint, the same bytes sent and the same records on both paths."""
    compiled_module()
    python = _wsgiref_outcome(make_aegis, tmp_path, name, compiled=False, validate=validate)
    fast = _wsgiref_outcome(make_aegis, tmp_path, name, compiled=True, validate=validate)
    assert fast == python
    sent, errors, files, records = python
    assert errors == ""  # neither the validator nor the handler complained
    assert sent.startswith(b"HTTP/1.0 200 OK\r\n")
    # Without the validator in between (its wrapper has no len() and is no file
    # wrapper), the length showed through and the file wrapper came back.
    assert (b"Content-Length: 16\r\n" in sent) is (name == "one" and not validate)
    assert files == (["FileWrapper"] if name == "file" and not validate else [])
    [record] = records
    assert (record.status, record.request_bytes) == (200, 4 if name == "read_body" else 0)
    assert record.response_bytes == len(sent.split(b"\r\n\r\n", 1)[1])


# -- the path is chosen as configured ------------------------------------------


def _ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _serve(
    middleware: Any, environ: dict[str, Any], start_response: Any = None
) -> tuple[Any, bytes]:
    """One request as a server makes it: call, iterate, close. Returns the response."""
    result = middleware(environ, start_response or (lambda status, headers, exc_info=None: None))
    try:
        return result, b"".join(result)
    finally:
        result.close()


def test_the_fixture_chooses_the_path(make_aegis: Callable[..., Aegis], hot_path: str) -> None:
    middleware = AegisWSGIMiddleware(_ok_app, aegis=make_aegis())
    assert middleware.compiled is (hot_path == "compiled")


def test_speedups_off_takes_the_python_path(make_aegis: Callable[..., Aegis]) -> None:
    assert AegisWSGIMiddleware(_ok_app, aegis=make_aegis(speedups=False)).compiled is False
    aegis = make_aegis(environ={"AEGIS_SPEEDUPS": "off"})
    assert AegisWSGIMiddleware(_ok_app, aegis=aegis).compiled is False


def test_speedups_on_takes_the_compiled_path_where_built(make_aegis: Callable[..., Aegis]) -> None:
    module = compiled_module()
    middleware = AegisWSGIMiddleware(_ok_app, aegis=make_aegis())
    assert type(middleware._compiled) is module.WsgiPath


# -- what the server gets ----------------------------------------------------------


@pytest.mark.usefixtures("hot_path")
def test_a_sized_response_shows_its_length_and_a_stream_has_none(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Whether the app's iterable has a length is known only when the app returns:
    the response then shows it (a server may size the response by it), or has none."""

    def stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"x"

    aegis = make_aegis()
    sized = AegisWSGIMiddleware(_ok_app, aegis=aegis)(base_environ(), lambda *args: None)
    streamed = AegisWSGIMiddleware(stream, aegis=aegis)(base_environ(), lambda *args: None)
    assert len(sized) == 1 and hasattr(sized, "__len__")
    assert not hasattr(streamed, "__len__")
    with pytest.raises(TypeError):
        len(streamed)
    assert (list(sized), list(streamed)) == ([b"ok"], [b"x"])
    sized.close()
    streamed.close()
    assert len(recorded(aegis)) == 2


def test_the_compiled_response_types(make_aegis: Callable[..., Aegis]) -> None:
    """The app's start_response and the server's iterable are two objects: nothing
    the app holds leads to what the server iterates. The iterable's type is the sized
    one when the app's iterable has a length."""
    module = compiled_module()
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(start_response)
        start_response("200 OK", [])
        return [b"a", b"b"] if environ["PATH_INFO"] == "/sized" else iter([b"a"])

    middleware = AegisWSGIMiddleware(app, aegis=make_aegis())
    sized = middleware(base_environ("/sized"), lambda *args: None)
    streamed = middleware(base_environ("/stream"), lambda *args: None)
    assert [type(start_response).__name__ for start_response in seen] == ["StartResponse"] * 2
    assert not {id(sized), id(streamed)} & {id(start_response) for start_response in seen}
    assert (type(sized).__name__, type(streamed).__name__) == ("WsgiSizedResponse", "WsgiResponse")
    assert isinstance(sized, type(streamed))
    assert not hasattr(module, "StartResponse")  # made only by the path
    assert len(sized) == 2
    assert iter(sized) is sized
    for result in (sized, streamed):
        list(result)
        result.close()


def test_write_is_the_same_callable_for_each_start_response_call(
    make_aegis: Callable[..., Aegis],
) -> None:
    """As the Python path's start returns its one write closure: the same object while
    the app holds it, whichever start_response call returned it."""
    compiled_module()
    writes: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        writes.append(start_response("200 OK", []))
        try:
            raise ValueError("again")
        except ValueError:
            writes.append(start_response("500 Oops", [], sys.exc_info()))
        return []

    aegis = make_aegis(metrics_registry="none")
    _serve(AegisWSGIMiddleware(app, aegis=aegis), base_environ(), lambda *args: _discard)
    assert writes[0] is writes[1]
    assert [record.status for record in recorded(aegis)] == [500]


# -- the pipeline is started per process --------------------------------------------


def _started(middleware: AegisWSGIMiddleware) -> tuple[bool, bool]:
    fast = middleware._compiled
    return middleware._started, bool(fast.started) if fast is not None else middleware._started


@pytest.mark.usefixtures("hot_path")
def test_the_pipeline_starts_with_the_first_request(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis()
    middleware = AegisWSGIMiddleware(_ok_app, aegis=aegis)
    assert _started(middleware) == (False, False)
    starts: list[int] = []
    start = aegis.start

    def counting_start() -> None:
        starts.append(1)
        start()

    aegis.start = counting_start  # type: ignore[method-assign]
    for _ in range(3):
        _serve(middleware, base_environ())
    assert _started(middleware) == (True, True)
    assert starts == [1]
    wsgi_middleware._forked(weakref.ref(middleware))  # the hook a forked child runs
    assert _started(middleware) == (False, False)
    _serve(middleware, base_environ())
    assert _started(middleware) == (True, True)
    assert starts == [1, 1]
    assert len(recorded(aegis)) == 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.forks
@pytest.mark.usefixtures("hot_path")
def test_a_forked_child_starts_the_pipeline_again(make_aegis: Callable[..., Aegis]) -> None:
    """Threads do not survive a fork: the child's first request starts the pipeline
    (the flusher) again, and its requests are recorded by the child."""
    from tests.core.test_fork import run_in_child

    aegis = make_aegis()
    middleware = AegisWSGIMiddleware(_ok_app, aegis=aegis)
    _serve(middleware, base_environ("/parent"))
    assert _started(middleware) == (True, True)

    def child() -> dict[str, Any]:
        before = _started(middleware)
        _serve(middleware, base_environ("/child"))
        after = _started(middleware)
        paths = [record.path for record in recorded(aegis)]
        return {
            "ok": before == (False, False) and after == (True, True) and "/child" in paths,
            "before": before, "after": after, "paths": paths,
        }  # fmt: skip

    code, report = run_in_child(child)
    assert (code, report["ok"]) == (0, True), report
    assert _started(middleware) == (True, True)  # the parent's are untouched
    assert [record.path for record in recorded(aegis)] == ["/parent"]


# -- failures of ours ---------------------------------------------------------------


class Abort(BaseException):
    """Not an Exception: like KeyboardInterrupt, never swallowed."""


@pytest.mark.usefixtures("hot_path")
def test_a_failure_of_ours_is_counted_and_a_base_exception_propagates(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A route reader that raises is our failure: counted, the request served; one that
    raises a BaseException propagates from close(), after the app's close() ran once."""
    closes: list[str] = []

    class Closing(list):  # type: ignore[type-arg]
        def close(self) -> None:
            closes.append("closed")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return Closing([b"body"])

    def reader(environ: dict[str, Any]) -> str:
        if environ["PATH_INFO"] == "/abort":
            raise Abort
        raise LookupError("reader failed")

    aegis = make_aegis()
    middleware = AegisWSGIMiddleware(app, aegis=aegis, route_reader=reader)
    assert _serve(middleware, base_environ("/lookup"))[1] == b"body"
    with pytest.raises(Abort):
        _serve(middleware, base_environ("/abort"))
    assert closes == ["closed", "closed"]
    assert recorded(aegis) == []
    assert aegis.stats().dropped["internal_error"] == 1
    assert aegis.aggregates.in_flight_now() == 0


@pytest.mark.usefixtures("hot_path")
def test_the_object_route_cache_names_each_object_once_up_to_its_cap(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same route object is named once; past the cap, objects are named per request
    (not cached), and still named right."""
    monkeypatch.setattr(routing, "MAX_CACHED_ROUTES", 2)
    named: list[str] = []

    def template(rule: Rule) -> str:
        named.append(rule.pattern)
        return "/" + rule.pattern

    rules = [Rule(f"r{index}") for index in range(4)]

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["test.rule"] = rules[int(environ["PATH_INFO"][1:]) % 4]
        start_response("200 OK", [])
        return [b""]

    reader = ObjectRouteReader("test.rule", template)
    aegis = make_aegis()
    middleware = AegisWSGIMiddleware(app, aegis=aegis, route_reader=reader)
    for index in range(12):
        _serve(middleware, base_environ(f"/{index}"))
    assert [record.route for record in recorded(aegis)] == [f"/r{i % 4}" for i in range(12)]
    assert named == ["r0", "r1", "r2", "r3", "r2", "r3", "r2", "r3"]
    assert set(reader.templates.values()) == {"/r0", "/r1"}


# -- a real server, many threads ------------------------------------------------------


@pytest.mark.usefixtures("hot_path")
def test_a_threaded_server_records_every_request(make_aegis: Callable[..., Aegis]) -> None:
    """wsgiref's server on 127.0.0.1 with a thread per request: every request recorded
    once, nothing left in flight."""
    import http.client
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    class Threading(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"echo:"
        yield body

    aegis = make_aegis(flush_interval=3600)
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    server = make_server("127.0.0.1", 0, middleware, server_class=Threading, handler_class=Quiet)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    answers: list[bytes] = []

    def client(number: int) -> None:
        for request in range(10):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
            connection.request("POST", f"/c{number}/{request}", body=b"x" * request)
            answers.append(connection.getresponse().read())
            connection.close()

    try:
        clients = [threading.Thread(target=client, args=(number,)) for number in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(30)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
    assert len(answers) == 80
    records = recorded(aegis)
    assert sorted(record.path for record in records) == sorted(
        f"/c{number}/{request}" for number in range(8) for request in range(10)
    )
    assert {(r.request_bytes, r.response_bytes - 5) for r in records} == {(n, n) for n in range(10)}
    assert aegis.aggregates.in_flight_now() == 0


# -- no memory kept -----------------------------------------------------------------

KINDS = ("/ok", "/stream", "/body", "/write", "/error", "/broken", "/close-fails", "/file",
         "/excluded", "/mapping", "/lazy", "/head", "/no-length")  # fmt: skip


class Closing:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        raise LookupError("close failed")


def _every_kind(environ: Any, start_response: Any) -> Any:
    kind = environ["PATH_INFO"]
    if kind == "/error":
        raise ValueError("boom")
    if kind == "/lazy":
        return _lazily(start_response)
    write = start_response("200 OK", [("Content-Length", "5")])
    if kind == "/body":
        environ["wsgi.input"].read()
    elif kind == "/write":
        write(b"hello")
        return []
    elif kind == "/stream":
        return iter([b"he", b"", b"llo"])
    elif kind == "/broken":
        return _breaking()
    elif kind == "/close-fails":
        return Closing([b"hello"])
    elif kind == "/no-length":  # chunks without a length: counted as nothing, handed on
        write(None)
        return [b"he", 7, b"llo"]
    elif kind == "/file":
        return environ["wsgi.file_wrapper"](io.BytesIO(b"hello"))
    return [b"hello"]


def _lazily(start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [])
    yield b"late"


def _breaking() -> Iterator[bytes]:
    yield b"he"
    raise KeyError("mid-body")


def _environs() -> list[Any]:
    environs: list[Any] = []
    for kind in KINDS:
        environ = base_environ(kind, method="HEAD" if kind == "/head" else "POST")
        environ["wsgi.file_wrapper"] = FileWrapper
        environ["CONTENT_LENGTH"] = "7"
        environs.append(UserDict(environ) if kind == "/mapping" else environ)
    return environs


def _request(middleware: Any, template: Any, start_response: Any) -> None:
    environ = template.copy()
    environ["wsgi.input"] = io.BytesIO(b"payload")
    try:
        result = middleware(environ, start_response)
    except ValueError:
        return
    try:
        for _ in result:
            pass
    except KeyError:
        pass
    finally:
        try:
            getattr(result, "close", _discard)()  # an excluded path's list has none
        except LookupError:
            pass


def test_no_memory_is_kept_per_request(make_aegis: Callable[..., Aegis]) -> None:
    """Twenty thousand requests of every kind (list, stream, body read, write(), app
    error, iteration error, close() error, file wrapper, excluded path, an environ that
    is not a dict, chunks without a length) leave no memory behind: a leak of one small
    object per request would show as hundreds of kilobytes."""
    compiled_module()
    aegis = make_aegis(sink=lambda batch: None, flush_interval=3600, metrics_registry="none")
    aegis.exclude("/excluded")
    middleware = AegisWSGIMiddleware(_every_kind, aegis=aegis)
    assert middleware.compiled
    environs = _environs()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return _discard

    def burst(rounds: int) -> None:  # each kind `rounds` times
        for index in range(rounds * len(environs)):
            _request(middleware, environs[index % len(environs)], start_response)
        assert aegis.force_flush() is True
        gc.collect()

    burst(400)  # warm every cache first
    tracemalloc.start()
    try:
        burst(100)
        baseline = retained_memory()
        burst(1700)
        grown = retained_memory() - baseline
    finally:
        tracemalloc.stop()
    assert aegis.stats().offered == 2200 * (len(KINDS) - 1)  # all but the excluded path
    assert aegis.aggregates.in_flight_now() == 0
    assert grown < 100_000, f"{grown} bytes kept after {1700 * len(KINDS)} requests"


def _discard(data: bytes = b"") -> None:
    return None


def test_no_references_are_kept(make_aegis: Callable[..., Aegis]) -> None:
    """The environ, the server's start_response and write, the app's iterable and the
    app's exception are referenced exactly as before, once a thousand requests of each
    kind are done."""
    compiled_module()
    aegis = make_aegis(flush_interval=3600, metrics_registry="none")
    body = [b"hello"]
    error = ValueError("the same one")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [])
        if environ["PATH_INFO"] == "/error":
            raise error
        write(b"w")
        return body

    def write(data: bytes) -> None:
        return None

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return write

    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    environ = base_environ(CONTENT_LENGTH="3", **{"wsgi.input": io.BytesIO(b"abc")})
    watched = (environ, start_response, write, body, error, middleware, middleware._compiled)
    for _ in range(10):  # warm
        _serve(middleware, environ, start_response)
    error.__traceback__ = None
    before = [sys.getrefcount(obj) for obj in watched]
    for _ in range(1000):
        _serve(middleware, environ, start_response)
        with pytest.raises(ValueError):
            middleware(dict(environ, PATH_INFO="/error"), start_response)
    assert aegis.force_flush() is True
    error.__traceback__ = None
    gc.collect()
    assert [sys.getrefcount(obj) for obj in watched] == before


def test_finished_requests_leave_nothing_to_collect(make_aegis: Callable[..., Aegis]) -> None:
    """Queued items hold only atoms and leave the collector's lists; once the inbox is
    flushed, no per-request object of the compiled path is alive, even when the app
    kept its start_response in the environ (a cycle, broken at close())."""
    module = compiled_module()
    aegis = make_aegis(flush_interval=3600, metrics_registry="none")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["keep"] = start_response  # environ -> response -> environ
        write = start_response("200 OK", [])
        environ["keep_write"] = write
        return (b"x" for _ in range(2)) if environ["PATH_INFO"] == "/gen" else [b"x"]

    def alive() -> Counter[str]:
        """Objects of the compiled module the collector can see (earlier tests may
        have left some on purpose, say in an exception kept by a parametrisation)."""
        gc.collect()
        return Counter(
            type(o).__name__
            for o in gc.get_objects()
            if type(o).__module__ == module.__name__ and type(o) is not module.WsgiPath
        )

    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    before = alive()
    for path in ("/list", "/gen") * 5:
        _serve(middleware, base_environ(path))
    items = list(aegis.recorder.inbox)
    assert [type(item).__name__ for item in items] == ["HttpItem"] * 10
    assert not any(gc.is_tracked(item) for item in items)
    assert aegis.force_flush() is True
    del items
    assert alive() - before == Counter()


def test_an_item_holding_a_non_atom_stays_collectable(make_aegis: Callable[..., Aegis]) -> None:
    """A route (or status) that is not a plain str keeps the queued item visible to the
    collector, so a cycle through it is still freed."""
    compiled_module()

    class Route(str):
        keep: Any

    markers: list[weakref.ref[Any]] = []

    class Marker:
        pass

    def reader(environ: dict[str, Any]) -> str:
        route = Route("/things/{id}")
        route.keep = (environ, Marker())
        markers.append(weakref.ref(route.keep[1]))
        return route

    aegis = make_aegis(flush_interval=3600, metrics_registry="none")
    middleware = AegisWSGIMiddleware(_ok_app, aegis=aegis, route_reader=reader)
    for _ in range(3):
        _serve(middleware, base_environ())
    assert all(gc.is_tracked(item) for item in aegis.recorder.inbox)
    assert [record.route for record in recorded(aegis)] == ["/things/{id}"] * 3
    gc.collect()
    assert [marker() for marker in markers] == [None, None, None]


def test_a_discarded_middleware_is_collected(make_aegis: Callable[..., Aegis]) -> None:
    """Neither the fork hook nor the pipeline's in-flight sources keep a middleware (and
    its compiled path) alive; the pipeline reads in-flight counts without it."""
    compiled_module()
    aegis = make_aegis(metrics_registry="none")
    middleware = AegisWSGIMiddleware(_ok_app, aegis=aegis)
    _serve(middleware, base_environ())
    refs = [weakref.ref(middleware), weakref.ref(middleware._compiled)]
    del middleware
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert aegis.aggregates.in_flight_now() == 0
    assert len(recorded(aegis)) == 1


def test_a_request_never_closed_is_in_flight_until_collected(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A server that never calls close() leaves the request in flight and unrecorded,
    as on the Python path; its objects are still freed."""
    module = compiled_module()
    aegis = make_aegis(metrics_registry="none")
    middleware = AegisWSGIMiddleware(_ok_app, aegis=aegis)
    before = _responses_alive()
    result = middleware(base_environ(), lambda *args: None)
    assert list(result) == [b"ok"]
    assert aegis.aggregates.in_flight_now() == 1
    del result
    gc.collect()
    assert _responses_alive() == before
    assert type(middleware._compiled) is module.WsgiPath
    assert recorded(aegis) == []


def _responses_alive() -> int:
    """Compiled responses the collector can see (an earlier test may keep some on
    purpose, in an exception's traceback say)."""
    gc.collect()
    return sum(type(o).__name__ in ("WsgiResponse", "WsgiSizedResponse") for o in gc.get_objects())


# -- what nothing of ours may keep alive ---------------------------------------------


@pytest.mark.usefixtures("hot_path")
def test_a_response_dropped_unclosed_finalises_the_app_at_once(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A server that drops the response without close() (against PEP 3333): the app's
    generator is finalised, its finally run, as the last reference goes, as on the
    Python path; not whenever the cyclic garbage collector next runs (nothing of ours
    makes a cycle with it, though its frame holds start_response and write)."""
    events: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        write = start_response("200 OK", [])
        try:
            write(b"")
            yield b"one"
            yield b"two"
        finally:
            events.append("finally")

    middleware = AegisWSGIMiddleware(app, aegis=make_aegis(metrics_registry="none"))
    gc.disable()
    try:
        result = middleware(base_environ(), lambda *args: _discard)
        assert next(iter(result)) == b"one"
        del result
        assert events == ["finally"]
    finally:
        gc.enable()


@pytest.mark.usefixtures("hot_path")
def test_next_on_the_start_response_in_iter_keeps_nothing_and_loses_nothing(
    make_aegis: Callable[..., Aegis],
) -> None:
    """An iterable whose __iter__ calls next() on the start_response (a TypeError, which
    it swallows): every chunk still goes out, and no iterator is kept per request."""
    chunks = [b"a", b"b", b"c"]
    errors: list[str] = []

    class Once:
        def __init__(self, start_response: Any) -> None:
            self.start_response = start_response

        def __iter__(self) -> Iterator[bytes]:
            try:
                next(self.start_response)
            except TypeError as exc:
                errors.append(type(exc).__name__)
            return iter(chunks)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return Once(start_response)

    aegis = make_aegis(metrics_registry="none", flush_interval=3600)
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    before = sys.getrefcount(chunks)
    bodies = {_serve(middleware, base_environ())[1] for _ in range(200)}
    assert aegis.force_flush() is True
    assert bodies == {b"abc"}
    assert errors == ["TypeError"] * 200
    assert sys.getrefcount(chunks) == before
    assert aegis.aggregates.in_flight_now() == 0


def test_the_compiled_path_cannot_be_initialised_again(make_aegis: Callable[..., Aegis]) -> None:
    """Its requests in flight rely on what it was built with: __init__ again refuses,
    and the path serves on unchanged."""
    compiled_module()
    aegis = make_aegis(metrics_registry="none")
    middleware = AegisWSGIMiddleware(_ok_app, aegis=aegis)
    fast = middleware._compiled
    arguments = init_arguments(
        lambda: AegisWSGIMiddleware(lambda environ, start_response: [], aegis=make_aegis()),
        "WsgiPath",
    )
    with pytest.raises(RuntimeError, match="already initialised"):
        fast.__init__(**arguments)
    assert _serve(middleware, base_environ())[1] == b"ok"
    assert len(recorded(aegis)) == 1

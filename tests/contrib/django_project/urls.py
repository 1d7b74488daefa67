from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import include, path, re_path

#: What FileResponse views serve: this very file, a size known to the tests.
SERVED_FILE = Path(__file__)


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    return HttpResponse(f"item {item_id}")


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse(f"order {order_id}")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"one "
        yield b"two"

    return StreamingHttpResponse(chunks())


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("kaput")


def article(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year)


def _advance(request: HttpRequest, seconds: float) -> None:
    """Move the test's fake clock (passed in the environ), when there is one."""
    clock = request.META.get("test.clock")
    if clock is not None:
        clock.advance(seconds)


def clocked(request: HttpRequest, name: str) -> HttpResponse:
    _advance(request, 0.025)
    return HttpResponse(f"hello {name}", status=201 if request.method == "POST" else 200)


def echo(request: HttpRequest) -> HttpResponse:
    _advance(request, 0.01)
    return HttpResponse(request.body.upper())


def slow_stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        _advance(request, 0.01)
        yield b""
        _advance(request, 0.02)
        yield b"first "
        _advance(request, 0.05)
        yield b"second"
        _advance(request, 0.01)

    return StreamingHttpResponse(chunks())


def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b""
        yield b"async "
        yield b"body"

    return StreamingHttpResponse(chunks())


def broken_stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise LookupError("broke mid-stream")

    return StreamingHttpResponse(chunks())


def file(request: HttpRequest) -> FileResponse:
    _advance(request, 0.005)
    return FileResponse(SERVED_FILE.open("rb"))


def _raised(request: HttpRequest, exc: BaseException) -> BaseException:
    """Note what is raised (in a list the test passes in the environ), for identity."""
    raised = request.META.get("test.raised")
    if raised is not None:
        raised.append(exc)
    return exc


def clocked_boom(request: HttpRequest) -> HttpResponse:
    _advance(request, 0.003)
    raise _raised(request, RuntimeError("kaput"))


class UnreadableStatus(HttpResponse):
    """A response whose status_code fails the first time it is read (by our
    middleware, the outermost), then reads 200 for Django."""

    read = False

    @property  # type: ignore[override]
    def status_code(self) -> int:
        if not self.read:
            self.read = True
            raise ArithmeticError("no status yet")
        return 200


def unreadable_status(request: HttpRequest) -> HttpResponse:
    return UnreadableStatus(b"odd")


class InterruptedStatus(HttpResponse):
    """A response whose status_code read is interrupted (a KeyboardInterrupt)."""

    @property  # type: ignore[override]
    def status_code(self) -> int:
        raise _raised(self.request, KeyboardInterrupt())

    def __init__(self, request: HttpRequest) -> None:
        super().__init__(b"")
        self.request = request


def interrupted_status(request: HttpRequest) -> HttpResponse:
    return InterruptedStatus(request)


class Unmeasured(bytes):
    def __len__(self) -> int:
        raise ArithmeticError("no length")


class OddContainer(HttpResponse):
    """A response with a chunk that has no len(): summing its body fails (joining
    it, as Django does, works)."""

    def __init__(self) -> None:
        super().__init__(b"x")
        self._container = [b"x", Unmeasured(b"yz")]


def odd_container(request: HttpRequest) -> HttpResponse:
    return OddContainer()


class RaisingMiddleware:
    """After ours in MIDDLEWARE: raises what META["test.raise"] names, else passes on."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        make = request.META.get("test.raise")
        if make is not None:
            _advance(request, 0.002)
            raise _raised(request, make())
        return self.get_response(request)


shop = [path("orders/<int:order_id>/", order)]

urlpatterns = [
    path("items/<int:item_id>/", item),
    path("stream/", stream),
    path("boom/", boom),
    re_path(r"^articles/(?P<year>[0-9]{4})/$", article),
    path("shop/", include(shop)),
    path("clocked/<str:name>/", clocked),
    path("echo/", echo),
    path("slow-stream/", slow_stream),
    path("broken-stream/", broken_stream),
    path("async-stream/", async_stream),
    path("file/", file),
    path("clocked-boom/", clocked_boom),
    path("unreadable-status/", unreadable_status),
    path("interrupted-status/", interrupted_status),
    path("odd-container/", odd_container),
    path("", clocked, {"name": "root"}),
]

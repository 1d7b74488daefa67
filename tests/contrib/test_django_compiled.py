"""The compiled Django path (``_hotpath_c/django_path.c``) against the Python
``AegisMiddleware``, with Django's own test Client and WSGI handler.

The Python middleware is the reference: every scenario runs through a
pipeline of its own (a fake clock, nothing shared) on both paths, and must give
the client the same answer (or the same exception, by identity), and the
pipeline the same records, realtime figures, drop counts and in-flight count.
Then what only the compiled path has: the object Django holds, the pattern
cache it shares, a file response under a real WSGI handler, and that it keeps
no memory or references per request.
"""

from __future__ import annotations

import gc
import io
import os
import sys
import tracemalloc
import weakref
from collections import Counter, UserDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import FileWrapper

import pytest

django = pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")
django.setup()

from django.apps import apps  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client, RequestFactory, override_settings  # noqa: E402

from aegis_mw import Aegis  # noqa: E402
from aegis_mw.contrib.django import AegisMiddleware  # noqa: E402
from aegis_mw.testing import FakeClock, recorded  # noqa: E402
from tests.asgi.test_compiled import (  # noqa: E402
    FailingClock,
    init_arguments,
    retained_memory,
)
from tests.conftest import compiled_module  # noqa: E402
from tests.contrib.django_project.urls import SERVED_FILE  # noqa: E402
from tests.core.faulty_sinks import frozen  # noqa: E402
from tests.harness import SAME_BUILD  # noqa: E402

OURS = "aegis_mw.contrib.django.AegisMiddleware"
RAISING = "tests.contrib.django_project.urls.RaisingMiddleware"


@contextmanager
def serving(aegis: Aegis, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Middlewares built inside (by a new Client or WSGIHandler) use this pipeline."""
    with monkeypatch.context() as patch:
        patch.setattr(apps.get_app_config("aegis_mw"), "_pipeline", aegis)
        yield


def compiled_paths(aegis: Aegis) -> list[Any]:
    """The compiled paths serving this pipeline (each registers its in-flight count)."""
    return [
        s for s in list(aegis.aggregates._in_flight_sources) if type(s).__name__ == "DjangoPath"
    ]


# -- one scenario, two paths -------------------------------------------------------


class Slow(ConnectionResetError):
    pass


@dataclass
class Scenario:
    path: str
    method: str = "GET"
    body: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    clock_fails_at: int | None = None
    requests: int = 1
    records: int = 1  # how many the reference records


class TruthRaises:
    """A value whose truth raises ValueError: "not a number" to number_or_zero()."""

    def __bool__(self) -> bool:
        raise ValueError("no truth here")


def _raising(make: Callable[[], BaseException]) -> dict[str, Any]:
    """A middleware after ours that raises, and Django letting it through."""
    return {
        "meta": {"test.raise": make},
        "settings": {"MIDDLEWARE": [OURS, RAISING], "DEBUG_PROPAGATE_EXCEPTIONS": True},
    }


SCENARIOS: dict[str, Scenario] = {
    "path-converter": Scenario("/clocked/ada/"),
    "regex-pattern": Scenario("/articles/2024/"),
    "included-pattern": Scenario("/shop/orders/9/"),
    "root-pattern": Scenario("/"),
    "unmatched": Scenario("/nowhere/"),
    "head": Scenario("/clocked/ada/", method="HEAD"),
    "post-with-body": Scenario("/echo/", method="POST", body=b"some body"),
    "post-to-a-view-with-status": Scenario("/clocked/bob/", method="POST", body=b""),
    "stream": Scenario("/slow-stream/"),
    "stream-head": Scenario("/slow-stream/", method="HEAD"),
    "stream-breaking": Scenario("/broken-stream/", records=1),
    "file-response": Scenario("/file/"),
    "file-response-head": Scenario("/file/", method="HEAD"),
    "view-raises": Scenario("/clocked-boom/"),
    "view-raises-propagated": Scenario(
        "/clocked-boom/", settings={"DEBUG_PROPAGATE_EXCEPTIONS": True}
    ),
    "middleware-raises": Scenario("/clocked/ada/", **_raising(lambda: KeyError("after ours"))),
    "middleware-disconnect": Scenario("/clocked/ada/", **_raising(lambda: Slow("gone"))),
    "middleware-interrupt": Scenario("/clocked/ada/", **_raising(KeyboardInterrupt)),
    "unreadable-status": Scenario("/unreadable-status/", records=0),
    "interrupted-status": Scenario("/interrupted-status/", records=0),
    "body-without-length": Scenario("/odd-container/", records=0),
    "mounted-route": Scenario("/health/live", records=0),
    "metrics": Scenario("/metrics", records=0),
    "content-length-not-a-number": Scenario("/echo/", method="POST", meta={"CONTENT_LENGTH": "x"}),
    "content-length-huge": Scenario(
        "/clocked/ada/", meta={"CONTENT_LENGTH": "99999999999999999999999"}
    ),
    "remote-addr-missing": Scenario("/clocked/ada/", meta={"REMOTE_ADDR": ""}),
    "remote-port-odd": Scenario("/clocked/ada/", meta={"REMOTE_PORT": "port"}),
    "remote-port-truth-raises": Scenario("/clocked/ada/", meta={"REMOTE_PORT": TruthRaises()}),
    "content-length-truth-raises": Scenario(
        "/clocked/ada/", meta={"CONTENT_LENGTH": TruthRaises()}
    ),
    "trusted-proxy": Scenario(
        "/clocked/ada/",
        meta={"HTTP_X_FORWARDED_FOR": "203.0.113.9, 127.0.0.2"},
        options={"trusted_proxies": ["127.0.0.0/8"]},
    ),
    "proxy-on-a-unix-socket": Scenario(
        "/clocked/ada/",
        meta={"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        options={"trusted_proxies": ["unix"]},
    ),
    "untrusted-unix-socket": Scenario(
        "/clocked/ada/",
        meta={"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        options={"trusted_proxies": ["10.0.0.0/8"]},
    ),
    "untrusted-peer": Scenario(
        "/clocked/ada/",
        meta={"HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        options={"trusted_proxies": ["10.0.0.0/8"]},
    ),
    "same-pattern-again": Scenario("/clocked/ada/", requests=3, records=3),
    "full-inbox": Scenario("/clocked/ada/", options={"max_buffer": 2}, requests=4, records=2),
    "clock-fails-at-start": Scenario("/clocked/ada/", clock_fails_at=1, records=0),
    "clock-fails-at-ttfb": Scenario("/clocked/ada/", clock_fails_at=2, records=0),
    "clock-fails-at-end": Scenario("/clocked/ada/", clock_fails_at=3, records=0),
    "clock-fails-in-a-stream": Scenario("/slow-stream/", clock_fails_at=2),
    # A body summed past what 64 bits hold: counted as Python counts it.
    **{
        f"body-counted-past-64-bits-{kind}": Scenario(
            f"/huge-{kind}/", settings={"ROOT_URLCONF": "tests.contrib.django_huge_urls"}
        )
        for kind in ("list", "tuple")
    },
    # A chunk whose len() raises StopIteration: an error counting the body (the
    # response goes out unrecorded, counted), never a short count.
    "chunk-length-stops-iteration": Scenario(
        "/stops-counting/", settings={"ROOT_URLCONF": "tests.contrib.django_huge_urls"}, records=0
    ),
}


@dataclass
class Outcome:
    answers: list[Any]
    records: list[Any]
    realtime: Any
    dropped: dict[str, int]
    in_flight: int
    compiled_paths: int


def _answer(client: Client, scenario: Scenario, clock: FakeClock) -> Any:
    raised: list[BaseException] = []  # what the view or a middleware raised
    meta = {"test.clock": clock, "test.raised": raised, **scenario.meta}
    try:
        response = client.generic(
            scenario.method, scenario.path, scenario.body or b"", "text/plain", **meta
        )
    except BaseException as exc:
        # The very exception the view or middleware raised, unchanged.
        return ("raised", type(exc).__name__, str(exc), [exc] == raised and exc is raised[0])
    if response.streaming:
        try:
            content = b"".join(response.streaming_content)  # closes the response at the end
        except Exception as exc:
            response.close()
            content = f"{type(exc).__name__}: {exc}".encode()
    else:
        content = response.content
    return (response.status_code, sorted(response.items()), content)


def outcome(
    scenario: Scenario, make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch,
    compiled: bool,
) -> Outcome:  # fmt: skip
    clock = (
        FakeClock() if scenario.clock_fails_at is None else FailingClock(scenario.clock_fails_at)
    )
    options = {"metrics_registry": "none", "flush_interval": 3600, **scenario.options}
    aegis = make_aegis(clock=clock, speedups=compiled, **options)
    aegis.hot_path = SAME_BUILD  # aegis_build_info names the path: set alike on both
    answers = []
    with serving(aegis, monkeypatch), override_settings(**scenario.settings):
        client = Client(raise_request_exception=False)
        with frozen(aegis) if scenario.requests > 1 else _nothing():
            for _ in range(scenario.requests):
                answers.append(_answer(client, scenario, clock))
        count = len(compiled_paths(aegis))
    records = [record._replace(request_id="") for record in recorded(aegis)]
    return Outcome(
        answers, records, aegis.realtime(), dict(aegis.stats().dropped),
        aegis.aggregates.in_flight_now(), count,
    )  # fmt: skip


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_both_paths_behave_the_same(
    name: str, make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same answer (or the same exception), same records field by field, realtime
    figures, drops and in-flight count, on the Python and the compiled path."""
    compiled_module()
    scenario = SCENARIOS[name]
    python = outcome(scenario, make_aegis, monkeypatch, compiled=False)
    fast = outcome(scenario, make_aegis, monkeypatch, compiled=True)
    assert (python.compiled_paths, fast.compiled_paths) == (0, 1)
    fast.compiled_paths = python.compiled_paths
    assert fast == python
    assert len(python.records) == scenario.records
    assert python.in_flight == 0
    assert all(answer[3] for answer in python.answers if answer[0] == "raised")


@pytest.mark.parametrize(
    ("name", "client_ip"),
    [
        ("proxy-on-a-unix-socket", "203.0.113.9"),
        ("untrusted-unix-socket", None),
        ("trusted-proxy", "203.0.113.9"),
        ("untrusted-peer", "127.0.0.1"),
    ],
)
def test_the_client_behind_proxies(
    name: str, client_ip: str | None, make_aegis: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """What both paths agree on is right: the forwarded address only from a
    trusted peer, a Unix socket (no address) trusted only as ``unix``."""
    compiled_module()
    for compiled in (False, True):
        found = outcome(SCENARIOS[name], make_aegis, monkeypatch, compiled=compiled)
        assert [record.client_ip for record in found.records] == [client_ip]


# -- the object Django holds ---------------------------------------------------------


def _view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"direct")


def _request(path: str = "/direct/", **meta: Any) -> HttpRequest:
    request = HttpRequest()
    request.method = "GET"
    request.path = request.path_info = path
    request.META = {"REMOTE_ADDR": "10.0.0.5", "REMOTE_PORT": "4000", **meta}
    return request


def test_the_middleware_is_the_compiled_path_for_sync_handlers(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AegisMiddleware(get_response) is the compiled path's own object for a sync
    handler (its slow paths are an AegisMiddleware's methods), the Python middleware
    for an async one or with speedups off."""
    module = compiled_module()

    async def async_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"")

    with serving(make_aegis(), monkeypatch):
        fast = AegisMiddleware(_view)
        assert type(fast) is module.DjangoPath
        assert type(fast.owner) is AegisMiddleware
        assert fast.owner.get_response is _view
        assert hasattr(fast, "process_exception")
        assert type(AegisMiddleware(async_view)) is AegisMiddleware
    with serving(make_aegis(speedups=False), monkeypatch):
        assert type(AegisMiddleware(_view)) is AegisMiddleware


def test_the_compiled_path_cannot_be_initialised_again(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its requests in flight rely on what it was built with: __init__ again refuses,
    and the path serves on unchanged."""
    compiled_module()
    aegis = make_aegis(metrics_registry="none")
    with serving(aegis, monkeypatch):
        fast = AegisMiddleware(_view)
        arguments = init_arguments(lambda: AegisMiddleware(lambda request: None), "DjangoPath")
        with pytest.raises(RuntimeError, match="already initialised"):
            fast.__init__(**arguments)
        request = _request()
        request.resolver_match = None
        fast(request).close()
    assert [record.path for record in recorded(aegis)] == ["/direct/"]


def test_a_subclass_with_a_call_of_its_own_keeps_it(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled object would bypass a subclass's __call__: such a subclass gets
    the Python path, and its __call__ runs; one without gets the compiled path."""
    module = compiled_module()
    calls: list[str] = []

    class Noting(AegisMiddleware):
        def __call__(self, request: HttpRequest) -> Any:
            calls.append(request.path)
            return super().__call__(request)

    class Plain(AegisMiddleware):
        pass

    aegis = make_aegis(metrics_registry="none")
    with serving(aegis, monkeypatch):
        noting = Noting(_view)
        assert type(noting) is Noting
        assert type(Plain(_view)) is module.DjangoPath
        response = noting(RequestFactory().get("/clocked/ada/"))
        response.close()
    assert calls == ["/clocked/ada/"]
    assert [record.path for record in recorded(aegis)] == ["/clocked/ada/"]


@pytest.mark.usefixtures("hot_path")
def test_process_exception_keeps_the_views_error(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django calls process_exception when a view raises, then answers 500 itself: the
    error is the view's (the first one), the status the answer's."""
    aegis = make_aegis(metrics_registry="none")
    with serving(aegis, monkeypatch):
        holder: list[Any] = []

        def get_response(request: HttpRequest) -> HttpResponse:
            holder[0].process_exception(request, ValueError("first"))
            holder[0].process_exception(request, ValueError("second"))
            return HttpResponse(b"error page", status=500)

        middleware = AegisMiddleware(get_response)
        holder.append(middleware)
        response = middleware(_request())
        response.close()
    [record] = recorded(aegis)
    assert (record.status, record.error, record.response_bytes) == (500, "ValueError: first", 10)
    assert aegis.aggregates.in_flight_now() == 0


def _chain_owner(client: Client) -> Any:
    """Our middleware in the chain a Client built (Django wraps it in a function)."""
    ours = client.handler._middleware_chain.__wrapped__
    return getattr(ours, "owner", ours)


def test_resolver_patterns_are_cached_in_the_middleware(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pattern is turned into a template once, in the middleware's templates,
    which the compiled path reads; the root pattern ("") is the route "/"."""
    compiled_module()
    for compiled in (False, True):
        aegis = make_aegis(speedups=compiled, metrics_registry="none")
        with serving(aegis, monkeypatch):
            client = Client()
            for path in ("/clocked/a/", "/clocked/b/", "/articles/2024/", "/", "/nowhere/"):
                client.get(path)
            owner = _chain_owner(client)
        assert isinstance(owner, AegisMiddleware)
        assert owner.templates == {
            "clocked/<str:name>/": "/clocked/{name}/",
            "^articles/(?P<year>[0-9]{4})/$": "/articles/{year}/",
            "": "/",
        }
        routes = [record.route for record in recorded(aegis)]
        assert routes == ["/clocked/{name}/"] * 2 + [
            "/articles/{year}/",
            "/",
            "<unmatched>",
        ]


@pytest.mark.usefixtures("hot_path")
def test_odd_requests(make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch) -> None:
    """A META that is not a dict (the compiled path hands it to Python), no method
    (GET, as Django's HttpRequest() has none), no address: recorded alike."""
    aegis = make_aegis(metrics_registry="none")
    with serving(aegis, monkeypatch):
        middleware = AegisMiddleware(_view)
        mapping = _request("/mapping/")
        mapping.META = UserDict(mapping.META)
        nameless = _request("/nameless/")
        nameless.method = None
        anonymous = _request("/anonymous/", REMOTE_ADDR="")
        for request in (mapping, nameless, anonymous):
            request.resolver_match = None
            middleware(request).close()
    rows = [(r.method, r.path, r.status, r.response_bytes, r.client_ip) for r in recorded(aegis)]
    assert rows == [
        ("GET", "/mapping/", 200, 6, "10.0.0.5"),
        ("GET", "/nameless/", 200, 6, "10.0.0.5"),
        ("GET", "/anonymous/", 200, 6, None),
    ]
    assert aegis.aggregates.in_flight_now() == 0


class Method(str):
    pass


@pytest.mark.usefixtures("hot_path")
def test_a_head_method_of_a_str_subclass_counts_no_body(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The method is compared with "HEAD" as the Python path compares it, not only as
    an exact str (seen in the queued item: the flusher sets such a record aside)."""
    aegis = make_aegis(metrics_registry="none", flush_interval=3600)
    with serving(aegis, monkeypatch), frozen(aegis):
        request = _request("/head/")
        request.method = Method("HEAD")
        request.resolver_match = None
        AegisMiddleware(_view)(request).close()
        [item] = list(aegis.recorder.inbox)
        assert (item[0], item[8]) == ("HEAD", 0)


# -- under Django's WSGI handler --------------------------------------------------------


def _environ(path: str, **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }  # fmt: skip
    environ.update(extra)
    return environ


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
    return _discard


def _discard(data: bytes) -> None:
    return None


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_a_file_response_keeps_the_servers_file_wrapper(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    """Under a WSGI server with wsgi.file_wrapper, Django hands the server its file
    wrapper around the very file (so sendfile() is possible): the middleware left
    file_to_stream alone. Closing the wrapper closes the response, recorded once,
    with the Content-Length as its bytes."""
    if compiled:
        compiled_module()
    clock = FakeClock()
    aegis = make_aegis(clock=clock, speedups=compiled, metrics_registry="none")
    with serving(aegis, monkeypatch):
        handler = WSGIHandler()
        assert bool(compiled_paths(aegis)) is compiled
        result = handler(_environ("/file/", **{"wsgi.file_wrapper": FileWrapper}), _start_response)
        assert type(result) is FileWrapper
        assert result.filelike.name == str(SERVED_FILE)
        assert aegis.aggregates.in_flight_now() == 1
        clock.advance(0.5)
        sent = result.filelike.read()  # what sendfile() would send
        result.close()
        result.close()
    assert sent == SERVED_FILE.read_bytes()
    [record] = recorded(aegis)
    assert (record.route, record.status, record.response_bytes) == ("/file/", 200, len(sent))
    assert record.duration_ms == pytest.approx(500.0)
    assert aegis.aggregates.in_flight_now() == 0


@pytest.mark.usefixtures("hot_path")
def test_under_the_wsgi_handler_the_servers_close_ends_the_request(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, metrics_registry="none")
    with serving(aegis, monkeypatch):
        handler = WSGIHandler()
        for path in ("/clocked/ada/", "/slow-stream/"):
            result = handler(_environ(path, **{"test.clock": clock}), _start_response)
            body = b"".join(result)
            assert aegis.aggregates.in_flight_now() == 1  # until the server closes it
            clock.advance(0.1)
            result.close()
            assert body in (b"hello ada", b"first second")
    rows = [(r.route, r.response_bytes, round(r.duration_ms)) for r in recorded(aegis)]
    assert rows == [("/clocked/{name}/", 9, 125), ("/slow-stream/", 12, 190)]
    assert aegis.aggregates.in_flight_now() == 0


# -- no memory kept ------------------------------------------------------------------


@pytest.fixture
def quiet_django(monkeypatch: pytest.MonkeyPatch) -> None:
    """Django logs every 404 and 500: not thousands of times into the test's log."""
    import logging

    monkeypatch.setattr(logging.getLogger("django.request"), "disabled", True)


@pytest.mark.usefixtures("quiet_django")
def test_no_memory_is_kept_per_request(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten thousand requests of every kind through Django's WSGI handler (a view,
    a stream, a file, a 404, a view raising, a mounted route, a body) leave no memory
    behind: a leak of one small object per request would show as a megabyte."""
    compiled_module()
    aegis = make_aegis(sink=lambda batch: None, flush_interval=3600, metrics_registry="none")
    kinds = ["/clocked/ada/", "/slow-stream/", "/file/", "/nowhere/", "/boom/", "/health/live",
             "/echo/"]  # fmt: skip
    with serving(aegis, monkeypatch):
        handler = WSGIHandler()
        assert compiled_paths(aegis)

        def burst(count: int) -> None:
            for index in range(count):
                path = kinds[index % len(kinds)]
                environ = _environ(path, CONTENT_LENGTH="4", REQUEST_METHOD="POST")
                environ["wsgi.input"] = io.BytesIO(b"body")
                if path == "/file/":
                    environ["wsgi.file_wrapper"] = FileWrapper
                result = handler(environ, _start_response)
                for _ in result:
                    pass
                result.close()
            assert aegis.force_flush() is True
            gc.collect()

        burst(1400)
        tracemalloc.start()
        try:
            burst(700)
            baseline = retained_memory()
            burst(10500)
            grown = retained_memory() - baseline
        finally:
            tracemalloc.stop()
    assert aegis.stats().offered == 12600 * 6 // 7
    assert aegis.aggregates.in_flight_now() == 0
    assert grown < 100_000, f"{grown} bytes kept after 10500 requests"


def test_no_references_are_kept(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request, the response, get_response and the view's exception are
    referenced exactly as before, once a thousand requests of each kind are done."""
    compiled_module()
    aegis = make_aegis(flush_interval=3600, metrics_registry="none")
    response = HttpResponse(b"reused")
    error = LookupError("the same one")

    def get_response(request: HttpRequest) -> HttpResponse:
        if request.path == "/error/":
            raise error
        return response

    with serving(aegis, monkeypatch):
        middleware = AegisMiddleware(get_response)
    request, failing = _request(), _request("/error/")
    for each in (request, failing):
        each.resolver_match = None
    watched = (request, failing, response, error, get_response, middleware, middleware.owner)

    def run(count: int) -> None:
        for _ in range(count):
            middleware(request).close()
            with pytest.raises(LookupError):
                middleware(failing)
        assert aegis.force_flush() is True
        error.__traceback__ = None
        gc.collect()

    run(10)
    before = [sys.getrefcount(obj) for obj in watched]
    run(1000)
    assert [sys.getrefcount(obj) for obj in watched] == before
    assert aegis.aggregates.in_flight_now() == 0


def test_finished_requests_leave_nothing_to_collect(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued items leave the collector's lists; once flushed, no closer or item of
    the compiled path is alive; a discarded middleware is collected."""
    module = compiled_module()

    def alive() -> Counter[str]:
        """Closers and items the collector sees (an earlier test may keep some on
        purpose, in an exception's traceback say)."""
        gc.collect()
        return Counter(
            type(o).__name__
            for o in gc.get_objects()
            if type(o).__module__ == module.__name__
            and type(o).__name__ in ("DjangoCloser", "HttpItem")
        )

    before = alive()
    aegis = make_aegis(flush_interval=3600, metrics_registry="none")
    with serving(aegis, monkeypatch):
        client = Client()
        for path in ("/clocked/ada/", "/slow-stream/", "/file/") * 3:
            response = client.get(path)
            if response.streaming:
                b"".join(response.streaming_content)
        [path] = compiled_paths(aegis)
    items = list(aegis.recorder.inbox)
    assert [type(item).__name__ for item in items] == ["HttpItem"] * 9
    assert not any(gc.is_tracked(item) for item in items)
    assert aegis.force_flush() is True
    del items, response
    assert alive() == before
    ref = weakref.ref(path)
    del path, client
    gc.collect()
    assert ref() is None
    assert compiled_paths(aegis) == []


@pytest.mark.usefixtures("hot_path")
def test_a_response_never_closed_stays_in_flight_unrecorded(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on the Python path: nobody closed it, nothing is recorded; its objects are
    still freed."""
    aegis = make_aegis(metrics_registry="none")
    with serving(aegis, monkeypatch):
        middleware = AegisMiddleware(_view)
        request = _request()
        request.resolver_match = None
        response = middleware(request)
        assert aegis.aggregates.in_flight_now() == 1
        ref = weakref.ref(response)
        del response, request
        gc.collect()
    assert ref() is None
    assert recorded(aegis) == []

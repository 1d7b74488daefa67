"""AegisWSGIMiddleware at the PEP 3333 level: the same records as under ASGI,
timed to close(), bytes counted both ways, exceptions recorded and re-raised
unchanged, close() forwarded exactly once, the mounted routes served."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.testing import FakeClock, recorded
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.harness import OPEN_MONITORING

# Every test runs on the compiled and on the pure-Python request path.
pytestmark = pytest.mark.usefixtures("hot_path")

TOKEN = "metrics-token-1234"


def environ_for(
    path: str = "/", method: str = "GET", body: bytes = b"", **extra: Any
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "REMOTE_ADDR": "10.1.2.3",
        "REMOTE_PORT": "50000", "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0), "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }  # fmt: skip
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    environ.update(extra)
    return environ


class Response:
    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.written = b""

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        self.written += data


def serve(app: Any, environ: dict[str, Any]) -> tuple[Response, bytes]:
    """Run one request as a server would: call, iterate, close."""
    response = Response()
    result = app(environ, response.start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return response, response.written + body


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_plain_request_is_recorded(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert environ["wsgi.input"].read() == b"name=x"
        environ["aegis.route"] = "/items/{item_id}"
        clock.advance(0.25)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made", b"!"]

    aegis = make_aegis(clock=clock, metrics_registry="none")
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    response, body = serve(
        middleware, environ_for("/items/7", "POST", b"name=x", SCRIPT_NAME="/api")
    )
    assert (response.status, body) == ("201 Created", b"made!")
    [record] = recorded(aegis)
    assert (record.method, record.route, record.path, record.status) == (
        "POST", "/items/{item_id}", "/api/items/7", 201,
    )  # fmt: skip
    assert (record.request_bytes, record.response_bytes) == (6, 5)
    assert record.duration_ms == pytest.approx(250.0)
    assert record.ttfb_ms == pytest.approx(250.0)
    assert (record.client_ip, record.error) == ("10.1.2.3", "")


def test_the_response_is_its_own_iterator(make_aegis: Callable[..., Aegis]) -> None:
    """As a generator is, on both paths: iter() gives the response itself, next()
    works on it without iter(), and it is one pass, over once closed."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"a", b"bc"]

    aegis = make_aegis(metrics_registry="none")
    result: Any = AegisWSGIMiddleware(app, aegis=aegis)(environ_for(), Response().start_response)
    assert iter(result) is result
    assert next(result) == b"a"
    assert list(result) == [b"bc"]
    result.close()
    assert next(result, None) is None
    [record] = recorded(aegis)
    assert record.response_bytes == 3


def test_a_raw_streams_readall_is_counted(make_aegis: Callable[..., Aegis]) -> None:
    """A server whose body stream is a raw one (werkzeug's dechunked input is):
    the app's readall() reads through the middleware's stream, counted."""

    class Raw(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self._data.readinto(buffer)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].readall()
        start_response("200 OK", [])
        return [body]

    aegis = make_aegis(metrics_registry="none")
    body = b"x" * 70_000
    environ = environ_for("/raw", "POST", body, **{"wsgi.input": Raw(body)})
    _, answer = serve(AegisWSGIMiddleware(app, aegis=aegis), environ)
    assert answer == body
    [record] = recorded(aegis)
    assert record.request_bytes == len(body)


@pytest.mark.parametrize(
    ("noted", "raised", "stored"),
    [
        ("LookupError: answered by the framework", False, "LookupError: answered by the framework"),
        ("", False, ""),
        (b"not text", False, ""),
        ("LookupError: noted", True, "RuntimeError: raised"),  # the request's own error wins
    ],
)
def test_an_error_noted_in_the_environ_is_recorded(
    make_aegis: Callable[..., Aegis], noted: object, raised: bool, stored: str
) -> None:
    """``environ["aegis.error"]``: the text of an exception a framework answered
    itself (Flask outside debug mode); only a non-empty str, never over an error
    the request has of its own."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        environ["aegis.error"] = noted
        start_response("500 Internal Server Error", [])
        yield b"oops"
        if raised:
            raise RuntimeError("raised")

    aegis = make_aegis(metrics_registry="none")
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    if raised:
        with pytest.raises(RuntimeError):
            serve(middleware, environ_for("/x"))
    else:
        serve(middleware, environ_for("/x"))
    [record] = recorded(aegis)
    assert (record.status, record.error) == (500, stored)


def test_a_stream_is_timed_to_close_and_ttfb_to_the_first_chunk(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        clock.advance(0.1)
        yield b""
        clock.advance(0.1)
        yield b"first"
        clock.advance(0.5)
        yield b"second"
        clock.advance(0.2)

    aegis = make_aegis(clock=clock, metrics_registry="none")
    _, body = serve(AegisWSGIMiddleware(app, aegis=aegis), environ_for("/stream"))
    [record] = recorded(aegis)
    assert body == b"firstsecond" and record.response_bytes == 11
    assert record.ttfb_ms == pytest.approx(200.0)
    assert record.duration_ms == pytest.approx(900.0)
    assert record.route == "<unmatched>"  # no integration said which route


def test_close_is_forwarded_once_even_when_iteration_raises(
    make_aegis: Callable[..., Aegis],
) -> None:
    closes = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"partial"
            raise ValueError("broke mid-stream")

        def close(self) -> None:
            closes.append(1)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    aegis = make_aegis(metrics_registry="none")
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    result = middleware(environ_for("/broken"), Response().start_response)
    with pytest.raises(ValueError, match="broke mid-stream"):
        for _ in result:
            pass
    result.close()
    result.close()  # a second call is harmless
    assert closes == [1]
    [record] = recorded(aegis)
    assert (record.status, record.error, record.response_bytes) == (
        200, "ValueError: broke mid-stream", 7,
    )  # fmt: skip


def test_an_app_raising_before_the_response_is_a_500_and_re_raised(
    make_aegis: Callable[..., Aegis],
) -> None:
    class Boom(RuntimeError):
        pass

    error = Boom("no database")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    aegis = make_aegis(metrics_registry="none")
    with pytest.raises(Boom) as raised:
        AegisWSGIMiddleware(app, aegis=aegis)(environ_for("/fail"), Response().start_response)
    assert raised.value is error  # unchanged
    [record] = recorded(aegis)
    assert (record.status, record.error) == (
        500,
        "test_an_app_raising_before_the_response_is_a_500_and_re_raised.<locals>.Boom: no database",
    )
    assert aegis.realtime().in_flight == 0


def test_write_callable_head_and_route_reader(make_aegis: Callable[..., Aegis]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"legacy ")
        return [b"body"]

    aegis = make_aegis(metrics_registry="none")
    middleware = AegisWSGIMiddleware(app, aegis=aegis, route_reader=lambda environ: "/legacy")
    _, body = serve(middleware, environ_for("/x"))
    assert body == b"legacy body"
    serve(middleware, environ_for("/x", "HEAD"))
    get, head = recorded(aegis)
    assert (get.route, get.response_bytes) == ("/legacy", 11)
    assert (head.method, head.response_bytes) == ("HEAD", 0)


def test_mounted_routes_inside_wsgi(make_aegis: Callable[..., Aegis]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"app"]

    aegis = make_aegis(access={"metrics": {"tokens": [TOKEN]}, **OPEN_MONITORING})
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    serve(middleware, environ_for("/ok"))
    refused, body = serve(middleware, environ_for("/metrics"))
    assert (
        refused.status == "401 Unauthorized" and json.loads(body)["error"]["code"] == "unauthorized"
    )
    scrape, text = serve(middleware, environ_for("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))
    assert scrape.status == "200 OK"
    assert b'aegis_http_requests_total{method="GET",route="<unmatched>",status="200"} 1\n' in text
    live, body = serve(middleware, environ_for("/health/live"))
    assert live.status == "200 OK" and json.loads(body)["status"] == "pass"
    health, body = serve(middleware, environ_for("/health"))
    assert health.status == "200 OK"
    _, body = serve(middleware, environ_for("/api/metrics/realtime"))
    assert json.loads(body)["data"]["total_requests"] == 1
    bad, body = serve(middleware, environ_for("/api/metrics/overview", QUERY_STRING="range=2h"))
    assert bad.status == "400 Bad Request" and json.loads(body)["error"]["parameter"] == "range"
    page, body = serve(middleware, environ_for("/dashboard"))
    assert page.status == "200 OK" and b"<title>aegis_mw dashboard</title>" in body
    assert dict(page.headers)["content-security-policy"].startswith("default-src 'none'")
    post, _ = serve(middleware, environ_for("/dashboard", "POST"))
    assert post.status == "405 Method Not Allowed"
    head, body = serve(middleware, environ_for("/health/live", "HEAD"))
    assert head.status == "200 OK" and body == b""
    # Served by the middleware, never recorded; the app still owns other paths.
    assert [r.path for r in recorded(aegis)] == ["/ok"]


def test_the_client_address_behind_a_trusted_proxy(make_aegis: Callable[..., Aegis]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    aegis = make_aegis(metrics_registry="none", trusted_proxies=["10.0.0.0/8"])
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    proxied = {"HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.1.1.1"}
    serve(middleware, environ_for("/via-proxy", **proxied))  # REMOTE_ADDR 10.1.2.3: trusted
    serve(middleware, environ_for("/direct", REMOTE_ADDR="198.51.100.7", **proxied))
    via_proxy, direct = recorded(aegis)
    assert via_proxy.client_ip == "203.0.113.9"
    assert direct.client_ip == "198.51.100.7"  # an untrusted peer cannot claim an address


@pytest.mark.parametrize("trusted", [["10.0.0.0/8"], ["unix"]])
def test_a_proxy_on_a_unix_socket_is_trusted_only_as_unix(
    make_aegis: Callable[..., Aegis], trusted: list[str]
) -> None:
    """A server on a Unix socket leaves REMOTE_ADDR empty: the forwarded header is
    believed, for the record and for allow_ips, only when ``unix`` is trusted."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    aegis = make_aegis(
        metrics_registry="none",
        trusted_proxies=trusted,
        access={"metrics": {"allow_ips": ["203.0.113.0/24"]}},
    )
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    proxied = {"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    serve(middleware, environ_for("/via-socket", **proxied))
    metrics, _ = serve(middleware, environ_for("/metrics", **proxied))
    [record] = recorded(aegis)
    if trusted == ["unix"]:
        assert (record.client_ip, metrics.status[:3]) == ("203.0.113.9", "200")
    else:
        assert (record.client_ip, metrics.status[:3]) == (None, "403")


def test_a_sized_response_stays_sized(make_aegis: Callable[..., Aegis]) -> None:
    """wsgiref sets Content-Length for a one-item list: through the middleware too."""
    from wsgiref.util import setup_testing_defaults
    from wsgiref.validate import validator

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"sized"]

    def streamed(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"stream"

    aegis = make_aegis(metrics_registry="none")
    sized = AegisWSGIMiddleware(app, aegis=aegis)(environ_for("/"), Response().start_response)
    assert len(sized) == 1  # type: ignore[arg-type]
    sized.close()  # type: ignore[attr-defined]
    generator = AegisWSGIMiddleware(streamed, aegis=aegis)(
        environ_for("/"), Response().start_response
    )
    assert not hasattr(generator, "__len__")
    generator.close()  # type: ignore[attr-defined]
    # And the wrapped app passes PEP 3333's own validator.
    environ = environ_for("/")
    setup_testing_defaults(environ)
    _, body = serve(validator(AegisWSGIMiddleware(app, aegis=aegis)), environ)
    assert body == b"sized"

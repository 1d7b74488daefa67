"""Under real WSGI servers on 127.0.0.1 (cheroot, werkzeug's, wsgiref's), an app
answers exactly as it does without the middleware: each app runs bare and
wrapped on the same server, and what it saw and sent must be the same. The
request body stream passes the app's own arguments on and counts every way of
reading it; a chunk that is no body meets the server's own check; a file
response our count fails on goes out untouched.
"""

from __future__ import annotations

import collections.abc
import http.client
import io
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from cheroot import wsgi as cheroot_wsgi
from flask import Flask, request
from werkzeug import serving

from aegis_mw import Aegis
from aegis_mw.testing import recorded
from aegis_mw.wsgi import AegisWSGIMiddleware

# Every test runs on the compiled and on the pure-Python request path.
pytestmark = pytest.mark.usefixtures("hot_path")

App = Callable[[dict[str, Any], Any], Iterable[bytes]]
#: The client's limit for one answer: only a server stuck reading reaches it.
TIMEOUT = 10.0


@contextmanager
def cheroot_server(app: App) -> Iterator[int]:
    """cheroot in a thread, HTTP/1.1 with keep-alive; yields its port. A response
    without a length goes out chunked, and its last chunk after ``close()``: the
    client has the whole answer only once the request is recorded."""
    server = cheroot_wsgi.Server(("127.0.0.1", 0), app, numthreads=1)
    server.prepare()
    serving_thread = threading.Thread(target=server.serve, daemon=True)
    serving_thread.start()
    try:
        yield int(server.bind_addr[1])
    finally:
        server.stop()
        serving_thread.join(TIMEOUT)
        # cheroot keeps every server's statistics in a dict of the logging
        # module, and with them the server and the app: let both go.
        logging.statistics.pop(f"Cheroot HTTPServer {id(server)}", None)  # type: ignore[attr-defined]


class QuietHandler(WSGIRequestHandler):
    """wsgiref's handler, its errors logged where the test reads them."""

    errors: io.StringIO

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def get_stderr(self) -> io.StringIO:
        return self.errors


@contextmanager
def wsgiref_server(app: App, requests: int, errors: io.StringIO) -> Iterator[int]:
    """wsgiref's server in a thread for ``requests`` requests; yields its port.
    Leaving the block waits until they are served, ``close()`` included."""
    handler = type("Handler", (QuietHandler,), {"errors": errors})
    server = make_server("127.0.0.1", 0, app, server_class=WSGIServer, handler_class=handler)
    serving_thread = threading.Thread(
        target=lambda: [server.handle_request() for _ in range(requests)], daemon=True
    )
    serving_thread.start()
    try:
        yield server.server_port
        serving_thread.join(TIMEOUT)
        assert not serving_thread.is_alive()
    finally:
        server.server_close()


@contextmanager
def werkzeug_server(app: App, requests: int) -> Iterator[int]:
    """werkzeug's development server in a thread for ``requests`` requests (one per
    connection); yields its port. Leaving the block waits until they are served."""
    server = serving.make_server("127.0.0.1", 0, app)
    serving_thread = threading.Thread(
        target=lambda: [server.handle_request() for _ in range(requests)], daemon=True
    )
    serving_thread.start()
    try:
        yield server.port
        serving_thread.join(TIMEOUT)
        assert not serving_thread.is_alive()
    finally:
        server.server_close()


def exchange(
    connection: http.client.HTTPConnection, path: str, body: bytes | None, chunked: bool = False
) -> tuple[int, bytes]:
    """One POST on a kept-alive connection: the status and the body."""
    sent: Any = body
    if chunked and body is not None:
        sent = iter([body[:3], body[3:]])  # no length: http.client sends it chunked
    connection.request("POST", path, body=sent)
    response = connection.getresponse()
    return response.status, response.read()


def answers(port: int, paths: list[str], body: bytes, chunked: bool = False) -> list[Any]:
    """POST ``body`` to each path on one kept-alive connection; the JSON answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        return [json.loads(exchange(connection, path, body, chunked)[1]) for path in paths]
    finally:
        connection.close()


def post(port: int, path: str = "/", body: bytes | None = None) -> tuple[int, bytes]:
    """One POST on a connection of its own: the status and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        return exchange(connection, path, body)
    finally:
        connection.close()


def text(data: Any) -> Any:
    """What a read gave, as JSON can carry it."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode("latin-1")
    if isinstance(data, list):
        return [text(part) for part in data]
    return data


def json_answer(start_response: Any, answer: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    yield json.dumps(answer).encode()  # a generator: no length, sent chunked


# -- the request body: the app's own arguments ----------------------------------------

BODY = b"one\ntwo"  # no newline at the end: a read past it waits for more


def reads(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """Reads the body as the path says, with no argument or with None."""
    stream = environ["wsgi.input"]
    how = environ["PATH_INFO"]
    data: Any
    if how == "/read":
        data = stream.read()
    elif how == "/read-none":
        data = stream.read(None)
    elif how == "/readline":
        data = [stream.readline(), stream.readline(None)]
    else:
        data = stream.readlines()
    return json_answer(start_response, text(data))


#: By the body's kind (sent chunked?): cheroot's chunked stream never returns
#: from a readline() that meets a newline, with the middleware or without.
READS = {False: ["/read", "/read-none", "/readline", "/readlines"], True: ["/read", "/read-none"]}


def test_the_body_is_read_with_the_apps_own_arguments(make_aegis: Callable[..., Aegis]) -> None:
    """cheroot reads ``read()`` as "the rest of the body" and ``read(-1)`` as "to the
    end of the connection" (which waits on a kept-alive one); its chunked stream
    gives nothing for ``read(-1)``. The app's calls must reach it as made: the same
    answers as without the middleware, and the bytes the app got counted."""
    with cheroot_server(reads) as port:
        bare = {chunked: answers(port, READS[chunked], BODY, chunked) for chunked in READS}
    aegis = make_aegis()
    with cheroot_server(AegisWSGIMiddleware(reads, aegis=aegis)) as port:
        wrapped = {chunked: answers(port, READS[chunked], BODY, chunked) for chunked in READS}
    assert wrapped == bare
    assert bare == {
        False: ["one\ntwo", "one\ntwo", ["one\n", "two"], []],  # (cheroot's readlines())
        True: ["one\ntwo", "one\ntwo"],
    }
    got = [len("".join(answer)) for chunked in READS for answer in bare[chunked]]
    assert [record.request_bytes for record in recorded(aegis)] == got


# -- the request body: next() ---------------------------------------------------------


def steps(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """next() on the body stream, and what it says it is; then the rest of the body
    (read, so that the server never answers before the client has sent it all)."""
    stream = environ["wsgi.input"]
    try:
        line: Any = text(next(stream))
    except TypeError:
        line = "TypeError"
    rest = text(stream.read(100))
    is_iterator = isinstance(stream, collections.abc.Iterator)
    return json_answer(start_response, [line, rest, hasattr(stream, "__next__"), is_iterator])


def test_next_on_the_body_works_where_it_works_on_the_servers_stream(
    make_aegis: Callable[..., Aegis],
) -> None:
    """cheroot's stream of a body with a length is an iterator, its chunked one is
    not: ``next()`` reads a line (counted) on the first and fails on the second,
    with the middleware as without it, and the stream says alike what it is."""
    with cheroot_server(steps) as port:
        bare = [answers(port, ["/"], BODY, chunked)[0] for chunked in (False, True)]
    aegis = make_aegis()
    with cheroot_server(AegisWSGIMiddleware(steps, aegis=aegis)) as port:
        wrapped = [answers(port, ["/"], BODY, chunked)[0] for chunked in (False, True)]
    assert (
        wrapped
        == bare
        == [["one\n", "two", True, True], ["TypeError", BODY.decode(), False, False]]
    )
    assert [record.request_bytes for record in recorded(aegis)] == [7, 7]


# -- the request body: the reads into a buffer ----------------------------------------

FILLS = ("readinto", "readinto1", "read1")


def fills(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """Reads the body with the stream's readinto(), readinto1() and read1() where it
    has them; answers which it has and what it read."""
    stream = environ["wsgi.input"]
    has = [hasattr(stream, name) for name in FILLS]
    got = b""
    if all(has):
        buffer = bytearray(4)
        got += bytes(buffer[: stream.readinto(buffer)])
        got += bytes(buffer[: stream.readinto1(memoryview(buffer)[:2])])
        length = int(environ["CONTENT_LENGTH"])
        while len(got) < length:  # read1() may give less than asked: each time at least 1
            part = stream.read1(length - len(got))
            if not part:
                break
            got += part
    return json_answer(start_response, [has, text(got)])


def test_reads_into_a_buffer_are_counted_where_the_stream_has_them(
    make_aegis: Callable[..., Aegis],
) -> None:
    """werkzeug's server hands the socket's buffered reader on, which has readinto(),
    readinto1() and read1(); cheroot's stream has none. The middleware's stream has
    them exactly where the server's has, and counts what they read."""
    with werkzeug_server(fills, requests=1) as port:
        bare = answers(port, ["/"], b"0123456789")
    with cheroot_server(fills) as port:
        bare += answers(port, ["/"], b"0123456789")
    aegis = make_aegis()
    with werkzeug_server(AegisWSGIMiddleware(fills, aegis=aegis), requests=1) as port:
        wrapped = answers(port, ["/"], b"0123456789")
    with cheroot_server(AegisWSGIMiddleware(fills, aegis=aegis)) as port:
        wrapped += answers(port, ["/"], b"0123456789")
    assert wrapped == bare == [[[True] * 3, "0123456789"], [[False] * 3, ""]]
    assert [record.request_bytes for record in recorded(aegis)] == [10, 0]


def test_a_flask_apps_body_under_werkzeugs_server_is_counted(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Flask reads the body through werkzeug's LimitedStream, which takes the
    stream's readinto() when it has one (werkzeug's server, wsgiref)."""
    flask_app = Flask(__name__)

    @flask_app.post("/echo")
    def echo() -> bytes:
        return request.get_data()[::-1]

    aegis = make_aegis()
    flask_app.wsgi_app = AegisWSGIMiddleware(flask_app.wsgi_app, aegis=aegis)  # type: ignore[method-assign]
    body = b"x" * 70_000 + b"end"  # more than LimitedStream's 64 KiB reads
    with werkzeug_server(flask_app, requests=1) as port:
        status, answer = post(port, "/echo", body)
    assert (status, answer) == (200, body[::-1])
    [record] = recorded(aegis)
    assert (record.request_bytes, record.response_bytes) == (len(body), len(body))


# -- a chunk that is no body ------------------------------------------------------------


def yields_none(environ: dict[str, Any], start_response: Any) -> Iterator[Any]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"a"
    yield None
    yield b"b"


def test_a_chunk_without_a_length_meets_the_servers_own_check(
    make_aegis: Callable[..., Aegis],
) -> None:
    """cheroot passes over a false chunk (None) and sends the rest; wsgiref refuses a
    chunk that is not bytes with its AssertionError. Neither may see an error of ours
    in its place: no length is counted as 0 and the chunk goes on as it is."""
    aegis = make_aegis()
    sent = []
    for app in (yields_none, AegisWSGIMiddleware(yields_none, aegis=aegis)):
        with cheroot_server(app) as port:
            sent.append(post(port))
    assert sent == [(200, b"ab")] * 2
    logged = []
    for app in (yields_none, AegisWSGIMiddleware(yields_none, aegis=aegis)):
        errors = io.StringIO()
        with wsgiref_server(app, requests=1, errors=errors) as port:
            post(port)
        logged.append(errors.getvalue().strip().splitlines()[-1])
    assert logged == ["AssertionError: write() argument must be a bytes instance"] * 2
    assert [record.response_bytes for record in recorded(aegis)] == [2, 1]


def writes_none(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """write(None): what the server's write() raises reaches the app."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        write(None)
    except Exception as exc:
        return [f"{type(exc).__name__}: {exc}".encode()]
    return [b"written"]


def test_write_of_a_chunk_without_a_length_raises_the_servers_own_error(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis()
    sent = []
    for app in (writes_none, AegisWSGIMiddleware(writes_none, aegis=aegis)):
        with wsgiref_server(app, requests=1, errors=io.StringIO()) as port:
            sent.append(post(port))
    assert sent == [(200, b"AssertionError: write() argument must be a bytes instance")] * 2
    [record] = recorded(aegis)
    assert record.response_bytes == len(sent[0][1])


# -- a file response whose size cannot be read -----------------------------------------


class UntoldFile(io.FileIO):
    """An app's file object whose position cannot be told (with an error no file
    object of the standard library raises there)."""

    def tell(self) -> int:
        raise RuntimeError("no position")


def test_a_file_response_our_count_fails_on_goes_out_untouched(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The middleware cannot size the file: the failure is ours, counted, and the
    server gets the response as the app made it. Its close() must not end the
    request a second time (in flight below zero, a record of a request given up)."""
    path = tmp_path / "served.txt"
    path.write_bytes(b"file body")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](UntoldFile(path), 4)

    aegis = make_aegis()
    errors = io.StringIO()
    with wsgiref_server(AegisWSGIMiddleware(app, aegis=aegis), 1, errors) as port:
        sent = post(port)
    assert (sent, errors.getvalue()) == ((200, b"file body"), "")
    assert recorded(aegis) == []
    assert aegis.stats().dropped["internal_error"] == 1
    assert aegis.aggregates.in_flight_now() == 0

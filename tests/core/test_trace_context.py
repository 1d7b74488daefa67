"""The trace context's parsing (W3C traceparent) and OpenTelemetry's spans."""

from __future__ import annotations

import contextvars
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext

from aegis_mw import ConfigError
from aegis_mw.core.settings import AegisSettings
from aegis_mw.core.trace_context import (
    asgi_trace,
    current_span,
    environ_trace,
    otel_source,
    parse_traceparent,
    trace_ids,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    "value",
    [VALID, VALID.encode(), f"00-{TRACE}-{PARENT}-00", f" {VALID}\t", f"01-{TRACE}-{PARENT}-01",
     f"cc-{TRACE}-{PARENT}-09-what-comes-later"],
)  # fmt: skip
def test_a_valid_traceparent_gives_its_trace_and_parent(value: object) -> None:
    assert parse_traceparent(value) == (TRACE, PARENT)


@pytest.mark.parametrize(
    "value",
    [
        "", "00", VALID.upper(), f"00-{TRACE.upper()}-{PARENT}-01",  # hex is lowercase
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01",  # all zeros
        f"00-{TRACE}-{PARENT}-01-more",  # version 00 is exactly 55 characters
        f"00-{TRACE[:-1]}-{PARENT}-01", f"00-{TRACE}-{PARENT}-1", f"00_{TRACE}_{PARENT}_01",
        f"0g-{TRACE}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01\n", f"{VALID},{VALID}",
        f"01-{TRACE}-{PARENT}-01x", VALID + "-" + "x" * 600, None, 5, ["x"], "00-é",
        b"\xff" * 55,
    ],
)  # fmt: skip
def test_a_malformed_traceparent_is_ignored(value: object) -> None:
    assert parse_traceparent(value) is None
    assert trace_ids(value) == (None, None)


@given(st.binary(max_size=80) | st.text(max_size=80))
def test_no_value_raises_and_what_is_taken_is_well_formed(value: bytes | str) -> None:
    ids = parse_traceparent(value)
    if ids is not None:
        trace_id, span_id = ids
        assert re.fullmatch("[0-9a-f]{32}", trace_id) and trace_id != "0" * 32
        assert re.fullmatch("[0-9a-f]{16}", span_id) and span_id != "0" * 16


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
def test_a_span_gives_its_ids_as_lowercase_hex(trace_id: int, span_id: int, flip: bool) -> None:
    span = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=flip))
    assert trace_ids(span) == (f"{trace_id:032x}", f"{span_id:016x}")
    # The same ids through the header they would be sent in.
    assert parse_traceparent(f"00-{trace_id:032x}-{span_id:016x}-01") == trace_ids(span)


def test_an_invalid_span_or_another_object_links_nothing() -> None:
    assert trace_ids(INVALID_SPAN) == (None, None)
    assert trace_ids(object()) == (None, None)

    class Raising:
        def get_span_context(self) -> None:
            raise RuntimeError("broken span")

    assert trace_ids(Raising()) == (None, None)


def test_the_current_span_is_read_where_opentelemetry_keeps_it() -> None:
    """The context variable and key are those the API itself reads: a span made
    current by the SDK's tracer is the one found, in the same context only."""
    source = otel_source()
    assert source[0] is not None
    tracer = TracerProvider().get_tracer("test")
    assert current_span(source) is None
    with tracer.start_as_current_span("outer") as span:
        assert current_span(source) is span
        assert current_span(source) is trace.get_current_span()
        # Another context (a task started before) does not see it.
        assert contextvars.Context().run(current_span, source) is None
    assert current_span(source) is None
    token = otel_context.attach(trace.set_span_in_context(INVALID_SPAN))
    try:
        assert current_span(source) is INVALID_SPAN
    finally:
        otel_context.detach(token)


def test_the_span_comes_before_the_header_and_two_headers_count_as_none() -> None:
    source = otel_source()
    other = f"00-{'1' * 32}-{'2' * 16}-01".encode()
    twice = {"headers": [(b"accept", b"*/*"), (b"traceparent", VALID.encode()),
                         (b"traceparent", other)]}  # fmt: skip
    assert asgi_trace(source, twice) is None  # as W3C's own test suite expects
    scope = {"headers": [(b"accept", b"*/*"), (b"traceparent", VALID.encode())]}
    environ = {"HTTP_TRACEPARENT": VALID}
    assert asgi_trace(source, scope) == VALID.encode()
    assert environ_trace(source, environ) == VALID
    assert asgi_trace((None, None), scope) == VALID.encode()
    span = NonRecordingSpan(SpanContext(7, 9, is_remote=False))
    with trace.use_span(span):
        assert asgi_trace(source, scope) is span
        assert environ_trace(source, environ) is span
        assert asgi_trace((None, None), scope) == VALID.encode()  # OpenTelemetry unseen


@pytest.mark.parametrize(
    "scope",
    [{}, {"headers": None}, {"headers": iter([(b"traceparent", b"x")])},
     {"headers": [(b"traceparent",), b"traceparent", (b"Traceparent", b"x")]}],
)  # fmt: skip
def test_odd_headers_give_nothing_and_never_raise(scope: dict[str, object]) -> None:
    assert asgi_trace((None, None), scope) is None


def test_an_environ_that_is_not_a_dict_gives_nothing() -> None:
    assert environ_trace((None, None), [("HTTP_TRACEPARENT", VALID)]) is None
    assert environ_trace((None, None), {}) is None


def test_opentelemetry_proto_alone_is_no_api_and_no_warning(tmp_path: Path) -> None:
    """The otel extra installs opentelemetry-proto: an "opentelemetry"
    namespace package without the API. Nothing to read, nothing to warn of."""
    (tmp_path / "opentelemetry" / "proto").mkdir(parents=True)
    (tmp_path / "opentelemetry" / "proto" / "__init__.py").write_text("")
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "from aegis_mw.core.trace_context import otel_source\n"
        "import opentelemetry.proto\n"
        "print(otel_source())\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": f"{root}{os.pathsep}{tmp_path}", "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "(None, None)"
    assert done.stderr == ""


@pytest.mark.parametrize(
    "url",
    ["ftp://x/{trace_id}", "http://x/", "http://x/{foo}{trace_id}", "http://x/{trace_id}}",
     "http://x/{{trace_id}", "http://x/{trace_id} y", 'http://x/"{trace_id}', "/trace/{trace_id}"],
)  # fmt: skip
def test_a_trace_url_other_than_an_http_template_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="trace_url"):
        AegisSettings(trace_url=url)


def test_a_trace_url_template_is_kept_as_written() -> None:
    url = "https://jaeger.example.com/trace/{trace_id}?uiFind={span_id}"
    assert AegisSettings(trace_url=f"  {url} ").trace_url == url
    assert AegisSettings().trace_url == ""

"""Every value the finalizer hands a sink is storable: repaired once, the same way for
every sink, or the single item counted as invalid (its neighbours kept).

Items are offered through ``Recorder.offer`` as an integration (or a raw scope read by
the middleware) would queue them; what reaches the sink is read back from the real
pipeline's memory sink.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import IntEnum
from http import HTTPStatus
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core.items import PendingSession
from aegis_mw.core.storable import MAX_COUNT, ROUTE_LIMIT, plain_text, url_text
from aegis_mw.testing import MemorySink
from tests.core.faulty_sinks import accounted, drops, http_item

QUIET = {"flush_interval": 3600.0}


class Code(IntEnum):
    CREATED = 201


def stored(aegis: Aegis) -> list[Any]:
    assert aegis.force_flush(10) is True
    [sink] = aegis.sinks
    assert isinstance(sink, MemorySink)
    return sink.requests


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("/anything\x00", "/anything%00"),
        ("/a\x01b\x1fc\x7fd", "/a%01b%1Fc%7Fd"),
        ("/tab\there\r\n", "/tab%09here%0D%0A"),
        ("/caf\udce9", "/caf%E9"),  # invalid UTF-8 kept by surrogateescape: the byte it was
        ("/lone\ud800", "/lone%ED%A0%80"),  # any other lone surrogate: its code point's bytes
        (b"/caf\xe9/\xc3\xa9", "/caf%E9/é"),  # a raw scope's bytes path: decoded, repaired
        ("/café/日本語/🚀", "/café/日本語/🚀"),
        ("/%00 stays as sent", "/%00 stays as sent"),
    ],
)
def test_paths_are_repaired_into_the_form_they_were_sent_in(
    make_aegis: Callable[..., Aegis], path: Any, kept: str
) -> None:
    aegis = make_aegis(**QUIET)
    aegis.recorder.offer(http_item(path))

    [record] = stored(aegis)

    assert record.path == kept
    assert aegis.stats().dropped == drops()


def test_over_long_values_are_cut_before_they_are_repaired(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A path is cut to max_path_length (then repaired: an escape is never cut in
    half), an error to max_error_length, a route to ROUTE_LIMIT."""
    aegis = make_aegis(max_path_length=16, max_error_length=20, **QUIET)
    aegis.recorder.offer(http_item("/" + "\x00" * 15 + "cut off"))
    aegis.recorder.offer(http_item("/p", error="E" * 19 + "\x00" + "tail"))
    aegis.recorder.offer(http_item("/q", route="/r/" + "x" * 2000))

    first, second, third = stored(aegis)

    assert first.path == "/" + "%00" * 15
    assert second.error == "E" * 19 + "…"
    assert third.route == ("/r/" + "x" * 2000)[:ROUTE_LIMIT]


def test_free_text_keeps_newlines_and_escapes_what_no_sink_can_store(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(**QUIET)
    error = "ValueError: bad id '\x00\udce9'\nsecond line\ttab"
    aegis.recorder.offer(http_item("/e", error=error, client=("10.0.0.\x001", 5)))

    [record] = stored(aegis)

    assert record.error == "ValueError: bad id '\\x00\\udce9'\nsecond line\ttab"
    assert record.client_ip == "10.0.0.\\x001"


@pytest.mark.parametrize(
    ("status", "kept"),
    [(200.0, 200), (HTTPStatus.NOT_FOUND, 404), (Code.CREATED, 201), (503, 503)],
)
def test_whole_number_statuses_are_stored_as_ints(
    make_aegis: Callable[..., Aegis], status: Any, kept: int
) -> None:
    aegis = make_aegis(**QUIET)
    aegis.recorder.offer(http_item("/s", status=status))

    [record] = stored(aegis)

    assert (record.status, type(record.status)) == (kept, int)
    klass = f"{kept // 100}xx"
    assert aegis.realtime().status_totals[klass] == 1


BAD_HTTP_VALUES: list[tuple[str, int, Any]] = [
    ("status", 3, True),
    ("status", 3, "200"),
    ("status", 3, 200.5),
    ("status", 3, math.nan),
    ("status", 3, 2**31),
    ("status", 3, -(2**31) - 1),
    ("request_bytes", 7, 1.5),
    ("response_bytes", 8, "10"),
    ("end", 6, math.nan),
    ("end", 6, math.inf),
    ("start", 4, math.inf),
    ("ttfb", 5, math.nan),
    ("path", 2, 42),
]


@pytest.mark.parametrize(("field", "index", "value"), BAD_HTTP_VALUES)
def test_an_item_without_a_faithful_repair_costs_only_itself(
    make_aegis: Callable[..., Aegis], field: str, index: int, value: Any
) -> None:
    """Counted as invalid; the requests before and after it are stored."""
    aegis = make_aegis(**QUIET)
    bad = http_item("/bad")
    bad[index] = value
    aegis.recorder.offer(http_item("/before"))
    aegis.recorder.offer(bad)
    aegis.recorder.offer(http_item("/after"))

    records = stored(aegis)

    assert [record.path for record in records] == ["/before", "/after"]
    stats = aegis.stats()
    assert stats.dropped == drops(invalid=1)
    assert accounted(stats) == stats.offered == 3


def test_counts_beyond_a_terabyte_are_saturated_and_the_request_kept(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Only a client can claim such a count (Django's is the Content-Length
    header): dropping the record would let it hide its request."""
    aegis = make_aegis(**QUIET)
    for request_bytes, response_bytes in ((10**23, 2**63), (-(10**23), MAX_COUNT - 1), (-4, 7.0)):
        item = http_item("/claimed")
        item[7], item[8] = request_bytes, response_bytes
        aegis.recorder.offer(item)

    records = stored(aegis)

    assert [(r.request_bytes, r.response_bytes) for r in records] == [
        (MAX_COUNT - 1, MAX_COUNT - 1), (1 - MAX_COUNT, MAX_COUNT - 1), (-4, 7),
    ]  # fmt: skip
    assert aegis.stats().dropped == drops()


def session(**changes: Any) -> PendingSession:
    fields: dict[str, Any] = {
        "start": 100.0, "route": "/chat/{room}", "path": "/chat/1", "end": 101.0,
        "messages_in": 2, "messages_out": 3, "close_code": 1000, "accepted": True,
        "client": ("127.0.0.1", 4000), "forwarded": None, "error": "",
    }  # fmt: skip
    fields.update(changes)
    return PendingSession(**fields)


def test_sessions_are_repaired_the_same_way(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(**QUIET)
    aegis.recorder.offer(session(path="/chat\x00x", close_code=1008, accepted=False))
    aegis.recorder.offer(session(path="/chat/\udcff", close_code=1000.0, error="E: \x00"))
    aegis.recorder.offer(session(close_code=HTTPStatus.OK))

    assert aegis.force_flush(10) is True
    [sink] = aegis.sinks
    assert isinstance(sink, MemorySink)
    first, second, third = sink.sessions
    assert (first.path, first.close_code, first.accepted) == ("/chat%00x", 1008, False)
    assert (second.path, second.close_code, second.error) == ("/chat/%FF", 1000, "E: \\x00")
    assert (type(second.close_code), third.close_code, type(third.close_code)) == (int, 200, int)


@pytest.mark.parametrize(
    "changes",
    [
        {"close_code": 2**31},
        {"close_code": "1000"},
        {"close_code": True},
        {"end": math.nan},
        {"messages_in": None},
        {"path": None},
    ],
)
def test_a_session_without_a_faithful_repair_costs_only_itself(
    make_aegis: Callable[..., Aegis], changes: dict[str, Any]
) -> None:
    aegis = make_aegis(**QUIET)
    aegis.recorder.offer(session(path="/before"))
    aegis.recorder.offer(session(**changes))
    aegis.recorder.offer(session(path="/after"))

    assert aegis.force_flush(10) is True
    [sink] = aegis.sinks
    assert isinstance(sink, MemorySink)
    assert [record.path for record in sink.sessions] == ["/before", "/after"]
    assert aegis.stats().dropped == drops(invalid=1)


def test_repairs_are_the_identity_on_clean_text() -> None:
    for text in ("", "/", "/api/v1/items/42", "/café/日本語/🚀", "a b", "%41"):
        assert url_text(text) is text
        assert plain_text(text) is text
    assert plain_text("line\nbreak") == "line\nbreak"


def test_an_infinite_duration_never_reaches_the_realtime_sums(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A start time of +inf makes the duration -inf: it would turn the latency
    average and the duration sums into -inf or NaN for a minute."""
    aegis = make_aegis(**QUIET)
    broken = http_item("/broken")
    broken[4] = math.inf
    aegis.recorder.offer(http_item("/fine"))
    aegis.recorder.offer(broken)

    assert [record.path for record in stored(aegis)] == ["/fine"]
    realtime = aegis.realtime()
    assert realtime.total_requests == 1
    assert realtime.latency_avg_ms is not None and math.isfinite(realtime.latency_avg_ms)
    assert aegis.stats().dropped == drops(invalid=1)

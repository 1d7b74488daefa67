"""An event's fields as ``build_event`` checks them: what each may hold, the
field each refusal names, what comes back; and any event it accepts reads
back the same from every store that keeps events and through the spool."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import string
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from aegis_mw.core import spool_codec
from aegis_mw.core.events import (
    LATEST,
    MAX_ID,
    MAX_MESSAGE,
    MAX_PAYLOAD,
    MAX_SOURCE,
    MAX_TAG,
    MAX_TAGS,
    EventError,
    EventQuery,
    build_event,
)
from aegis_mw.core.record import Batch, EventRecord
from aegis_mw.sinks import JsonlSink, MemorySink, SQLiteSink

psycopg = pytest.importorskip("psycopg")

from aegis_mw.sinks.postgres import PostgresSink  # noqa: E402

NOW = 1_700_000_000.25
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UTC = timezone.utc


def now() -> float:
    return NOW


def build(message: Any = "m", **fields: Any) -> EventRecord:
    return build_event(message, now=now, **fields)


def refused(message: Any = "m", **fields: Any) -> EventError:
    """The error ``build_event`` raises for these fields (it must raise one)."""
    with pytest.raises(EventError) as caught:
        build(message, **fields)
    return caught.value


# -- the defaults and the error ------------------------------------------------------------


def test_a_message_alone_gets_every_default() -> None:
    event = build("deployed v1.2")
    assert event == EventRecord(
        event_id=event.event_id, timestamp=NOW, type="log", source="app", level="info",
        message="deployed v1.2", tags=(), payload=None, trace_id=None,
    )  # fmt: skip
    assert len(event.event_id) == 24 and set(event.event_id) <= set(string.hexdigits.lower())
    assert build("again").event_id != event.event_id  # random each time


def test_an_event_error_is_a_value_error_that_names_its_field() -> None:
    error = refused(level="loud")
    assert isinstance(error, ValueError)
    assert error.field == "level"
    assert str(error) == f"level: {error.message}"
    assert "debug" in error.message  # says which levels there are


# -- type and level ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["log", "metric", "trace", "alert"])
def test_every_type_is_taken(value: str) -> None:
    assert build(type=value).type == value


@pytest.mark.parametrize("value", ["debug", "info", "warning", "error", "critical"])
def test_every_level_is_taken(value: str) -> None:
    assert build(level=value).level == value


@pytest.mark.parametrize("field", ["type", "level"])
@pytest.mark.parametrize(
    "value", ["", "Log", "INFO", "warn", "log ", "other", None, 1, b"log", ["log"], ("info",)]
)
def test_a_type_or_level_outside_its_list_is_refused(field: str, value: Any) -> None:
    assert refused(**{field: value}).field == field


# -- source ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["billing", "worker:eu-1", "a", "x" * MAX_SOURCE, "Zürich job", " spaced ", "☃"]
)
def test_a_source_is_any_short_text_without_controls(value: str) -> None:
    assert build(source=value).source == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * (MAX_SOURCE + 1), "two\nlines", "tab\there", "nul\x00", "del\x7f", "c1\x85",
     "lone\udc80", None, 7, b"app"],
)  # fmt: skip
def test_a_bad_source_is_refused(value: Any) -> None:
    assert refused(source=value).field == "source"


# -- message ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "one line", "two\nlines\n", "a\ttab", "x" * MAX_MESSAGE, "😀" * MAX_MESSAGE,
     "quotes ' \" and \\ back", "line\u2028separator", "%s %(x)s {0}"],
)  # fmt: skip
def test_a_message_may_be_empty_and_hold_lines_and_tabs(value: str) -> None:
    assert build(value).message == value


@pytest.mark.parametrize(
    "value",
    ["x" * (MAX_MESSAGE + 1), "crlf\r\n", "cr\r", "nul\x00", "bell\x07", "vt\x0b", "ff\x0c",
     "esc\x1b[31m", "del\x7f", "c1\x9f", "lone\ud800", None, 12, b"bytes"],
)  # fmt: skip
def test_any_other_control_or_a_long_message_is_refused(value: Any) -> None:
    assert refused(value).field == "message"


# -- tags ------------------------------------------------------------------------------


def test_tags_come_back_as_a_tuple_each_once_in_the_order_given() -> None:
    assert build(tags=None).tags == ()
    assert build(tags=[]).tags == ()
    assert build(tags=("b", "a")).tags == ("b", "a")
    assert build(tags=["b", "a", "b", "c", "a"]).tags == ("b", "a", "c")
    # A list or a tuple only: a mapping's keys or a generator are not tags.
    assert refused(tags=(tag for tag in ["x", "y"])).field == "tags"
    assert refused(tags={"a": 1, "b": 2}).field == "tags"
    assert build(tags=["region:eu", "Region:EU"]).tags == ("region:eu", "Region:EU")


def test_tags_at_their_limits_are_taken() -> None:
    many = [f"t{number}" for number in range(MAX_TAGS)]
    assert build(tags=many).tags == tuple(many)
    assert build(tags=["x" * MAX_TAG]).tags == ("x" * MAX_TAG,)
    assert build(tags=["a b", "é", "1", "100%", "_", "x'y", "inner space ok"]).tags[-1] == (
        "inner space ok"
    )


@pytest.mark.parametrize("value", ["region:eu", b"region", 5, 1.5, object()])
def test_tags_that_are_not_a_list_are_refused(value: Any) -> None:
    assert refused(tags=value).field == "tags"


def test_more_than_the_most_tags_is_refused() -> None:
    assert refused(tags=[f"t{number}" for number in range(MAX_TAGS + 1)]).field == "tags"


@pytest.mark.parametrize(
    ("tags", "field"),
    [
        ([""], "tags[0]"),
        (["ok", "x" * (MAX_TAG + 1)], "tags[1]"),
        (["ok", "a,b"], "tags[1]"),
        (["a", "b", ","], "tags[2]"),
        ([" leading"], "tags[0]"),
        (["ok", "trailing "], "tags[1]"),
        (["ok", "\xa0nbsp"], "tags[1]"),  # Unicode space: the API's filter strips it too
        (["ok", "tab\t"], "tags[1]"),
        (["new\nline"], "tags[0]"),
        (["nul\x00"], "tags[0]"),
        (["c1\x85"], "tags[0]"),
        (["lone\udc80"], "tags[0]"),
        (["ok", 5], "tags[1]"),
        ([None], "tags[0]"),
        (["ok", b"bytes"], "tags[1]"),
        # The position is the one given, duplicates before it counted.
        (["a", "a", "a", " bad"], "tags[3]"),
    ],
)
def test_a_bad_tag_is_refused_by_its_position(tags: list[Any], field: str) -> None:
    assert refused(tags=tags).field == field


# -- payload ------------------------------------------------------------------------------


def test_a_payload_comes_back_as_its_json_decoded() -> None:
    assert build(payload=None).payload is None
    assert build(payload={}).payload == {}
    given_payload = {
        "tuple": (1, 2, (3, "x")),
        "nested": {"list": [1.5, None, True, False], "deep": {"é": "☃"}},
        "int": 10**30,
        "float": 0.1,
        "negative zero": -0.0,
    }
    payload = build(payload=given_payload).payload
    assert payload == {
        "tuple": [1, 2, [3, "x"]],
        "nested": {"list": [1.5, None, True, False], "deep": {"é": "☃"}},
        "int": 10**30,
        "float": 0.1,
        "negative zero": -0.0,
    }
    assert payload is not None
    assert type(payload["tuple"]) is list and type(payload["tuple"][2]) is list
    assert math.copysign(1.0, payload["negative zero"]) == -1.0
    # Keys JSON takes that are not text come back as text, as any store gives them.
    assert build(payload={1: "a", False: "b", None: "c", 2.5: "d"}).payload == {
        "1": "a", "false": "b", "null": "c", "2.5": "d",
    }  # fmt: skip


def test_the_payload_is_a_copy_of_the_one_given() -> None:
    given_payload: dict[str, Any] = {"list": [1]}
    event = build(payload=given_payload)
    given_payload["list"].append(2)
    given_payload["new"] = True
    assert event.payload == {"list": [1]}


@pytest.mark.parametrize("mapping", [OrderedDict(a=1, b=[2]), MappingProxyType({"a": 1, "b": [2]})])
def test_any_mapping_is_a_payload_and_comes_back_a_dict(mapping: Any) -> None:
    payload = build(payload=mapping).payload
    assert type(payload) is dict and payload == {"a": 1, "b": [2]}


def test_a_payload_up_to_its_size_in_bytes_is_taken() -> None:
    # {"x":"..."} is 8 bytes around the text; "é" is 2 bytes in UTF-8.
    assert build(payload={"x": "a" * (MAX_PAYLOAD - 8)}).payload == {"x": "a" * (MAX_PAYLOAD - 8)}
    half = (MAX_PAYLOAD - 8) // 2
    assert build(payload={"x": "é" * half}).payload == {"x": "é" * half}
    assert refused(payload={"x": "a" * (MAX_PAYLOAD - 7)}).field == "payload"
    assert refused(payload={"x": "é" * (half + 1)}).field == "payload"  # bytes, not characters


def test_text_that_merely_spells_an_escape_is_not_nul() -> None:
    """A backslash followed by ``u0000`` is six ordinary characters (a Windows
    path, a regular expression): every store keeps them, so they are taken."""
    for text in ("\\u0000", "C:\\u0000\\file", "\\\\u0000"):
        assert build(payload={"x": text}).payload == {"x": text}
        assert build(payload={text: 1}).payload == {text: 1}


def test_a_nul_in_a_payload_is_data_every_store_keeps() -> None:
    """JSON escapes it: the stored text holds no NUL, and it reads back."""
    for payload in ({"x": "nul\x00inside"}, {"nul\x00key": 1}, {"deep": [{"x": "\x00"}]}):
        assert build(payload=payload).payload == payload


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2],
        "text",
        b"{}",
        42,
        ("a", 1),
        {"x": math.nan},
        {"x": math.inf},
        {"x": [-math.inf]},
        {"x": {1, 2}},
        {"x": b"bytes"},
        {"x": object()},
        {"x": Decimal("1.5")},
        {"x": datetime(2024, 1, 1)},
        {(1, 2): "tuple key"},
        {"x": "lone\ud800"},
        {"lone\udc80": 1},
    ],
)
def test_a_payload_no_store_can_keep_is_refused(payload: Any) -> None:
    assert refused(payload=payload).field == "payload"


def test_a_payload_nested_beyond_what_json_encodes_is_refused() -> None:
    nested: Any = "end"
    for _ in range(5000):
        nested = [nested]
    assert refused(payload={"x": nested}).field == "payload"
    circular: dict[str, Any] = {}
    circular["self"] = circular
    assert refused(payload=circular).field == "payload"


# -- timestamp ------------------------------------------------------------------------------


def test_a_timestamp_is_seconds_since_the_epoch_as_a_float() -> None:
    assert build(timestamp=None).timestamp == NOW
    for value, expected in [
        (0, 0.0),
        (0.0, 0.0),
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.123456, 1_700_000_000.123456),
        (LATEST - 0.001, LATEST - 0.001),
        (5e-324, 5e-324),
    ]:
        timestamp = build(timestamp=value).timestamp
        assert timestamp == expected and type(timestamp) is float


def test_a_datetime_is_taken_naive_as_utc_or_aware_in_its_zone() -> None:
    naive = datetime(2024, 2, 29, 12, 30, 15, 250000)
    expected = datetime(2024, 2, 29, 12, 30, 15, 250000, tzinfo=UTC).timestamp()
    assert build(timestamp=naive).timestamp == expected
    assert build(timestamp=naive.replace(tzinfo=UTC)).timestamp == expected
    plus_two = datetime(2024, 2, 29, 14, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert build(timestamp=plus_two).timestamp == expected
    minus_five = datetime(2024, 2, 29, 7, 30, 15, 250000, tzinfo=timezone(timedelta(hours=-5)))
    assert build(timestamp=minus_five).timestamp == expected
    assert build(timestamp=datetime(1970, 1, 1)).timestamp == 0.0
    assert build(timestamp=datetime(9998, 12, 31, 23, 59, 59)).timestamp < LATEST


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        -1,
        -0.5,
        LATEST,
        LATEST + 1,
        10**400,  # no float holds it
        math.nan,
        math.inf,
        -math.inf,
        "1700000000",
        b"1",
        Decimal("1700000000"),
        [1],
        date(2024, 1, 1),
        datetime(1969, 12, 31, 23, 59, 59),
        datetime(1970, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # 1969 in UTC
        datetime(9999, 1, 1),
        datetime(9998, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2))),  # 9999 in UTC
        datetime.max,
        datetime.min,
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-23))),  # past year 9999 in UTC
    ],
)
def test_a_bad_timestamp_is_refused(value: Any) -> None:
    assert refused(timestamp=value).field == "timestamp"


# -- id and trace id -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "7", "deploy-2024.01.05", "job/nightly@host:1", "A-b_c", "x" * MAX_ID,
     "Request:1", "requests:1", "request", "req:uest:1"],
)  # fmt: skip
def test_an_id_of_letters_digits_and_a_few_marks_is_kept(value: str) -> None:
    assert build(event_id=value).event_id == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * (MAX_ID + 1), "-leading", ".leading", "_leading", ":x", "/x", "@x", "has space",
     "comma,", "é", "tab\tx", "new\nline", "x\x00", "a#b", "a?b", "a%b", "lone\udc80",
     "request:", "request:abc", "request:0123456789abcdef", 12, b"abc", ["x"]],
)  # fmt: skip
def test_a_bad_id_or_one_of_the_request_logs_is_refused(value: Any) -> None:
    assert refused(event_id=value).field == "id"


@pytest.mark.parametrize("value", [TRACE, "0" * 31 + "1", "f" * 32, "1" + "0" * 31])
def test_a_trace_id_is_32_lowercase_hex_digits(value: str) -> None:
    assert build(trace_id=value).trace_id == value
    assert build(trace_id=None).trace_id is None


@pytest.mark.parametrize(
    "value",
    ["0" * 32, TRACE.upper(), TRACE[:31], TRACE + "0", "g" * 32, " " + TRACE[1:], "",
     TRACE[:-1] + "\n", f"{int(TRACE, 16)}", int(TRACE, 16), TRACE.encode(), [TRACE]],
)  # fmt: skip
def test_a_bad_trace_id_is_refused(value: Any) -> None:
    assert refused(trace_id=value).field == "trace_id"


# -- one bad field, whichever, is named ---------------------------------------------------------


GOOD = {
    "type": "alert", "source": "billing", "level": "critical", "tags": ["a", "b"],
    "payload": {"k": [1]}, "timestamp": 1_700_000_123.5, "event_id": "evt-1", "trace_id": TRACE,
}  # fmt: skip
BAD = {
    "message": ("m\x00", "message"), "type": ("nope", "type"), "source": ("", "source"),
    "level": ("nope", "level"), "tags": (["ok", "no,"], "tags[1]"),
    "payload": ({"x": math.nan}, "payload"), "timestamp": (-1, "timestamp"),
    "event_id": ("request:1", "id"), "trace_id": ("0" * 32, "trace_id"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD))
def test_among_good_fields_the_one_bad_field_is_named(name: str) -> None:
    fields: dict[str, Any] = {"message": "ok", **GOOD}
    value, field = BAD[name]
    fields[name] = value
    with pytest.raises(EventError) as caught:
        build_event(now=now, **fields)
    assert caught.value.field == field


def test_good_fields_are_all_kept() -> None:
    assert build("ok", **GOOD) == EventRecord(
        "evt-1", 1_700_000_123.5, "alert", "billing", "critical", "ok", ("a", "b"), {"k": [1]},
        TRACE,
    )  # fmt: skip


# -- any event taken reads back the same everywhere ---------------------------------------------

#: Text a store must keep exactly: quotes, backslashes, SQL and JSON marks, any plane.
_TEXT = st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from(
    [*"'\"\\%_,;{}[]:\u2028\u00e9\U0001f600", "\t", "\n"]
)
_ID_CHARS = string.ascii_letters + string.digits + "._:@/-"
_JSON_KEYS = st.text(_TEXT, max_size=12) | st.integers(-5, 5) | st.booleans() | st.none()
_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_TEXT, max_size=30)
)
_PAYLOADS = st.none() | st.dictionaries(
    _JSON_KEYS,
    st.recursive(
        _JSON_SCALARS,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(st.text(_TEXT, max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    max_size=5,
)
_TIMESTAMPS = (
    st.none()
    | st.floats(min_value=0.0, max_value=LATEST, exclude_max=True)
    | st.integers(min_value=0, max_value=int(LATEST) - 1)
    | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30))
    | st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 12, 30),
        timezones=st.builds(
            lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439)
        ),
    )
)
_IDS = st.none() | st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(_ID_CHARS, max_size=MAX_ID - 1),
)
_ONE_LINE = _TEXT.filter(lambda char: char not in "\t\n")
_TAGS = st.none() | st.lists(
    st.text(_ONE_LINE, min_size=1, max_size=24).filter(
        lambda tag: "," not in tag and tag == tag.strip()
    )
    | st.sampled_from(["request", "a b", "x" * MAX_TAG]),
    max_size=8,
)


@st.composite
def event_fields(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "message": draw(st.text(_TEXT, max_size=200) | st.sampled_from(["", "x" * MAX_MESSAGE])),
        "type": draw(st.sampled_from(["log", "metric", "trace", "alert"])),
        "source": draw(st.text(_ONE_LINE, min_size=1, max_size=40) | st.just("app")),
        "level": draw(st.sampled_from(["debug", "info", "warning", "error", "critical"])),
        "tags": draw(_TAGS),
        "payload": draw(_PAYLOADS),
        "timestamp": draw(_TIMESTAMPS),
        "event_id": draw(_IDS),
        "trace_id": draw(st.none() | st.text("0123456789abcdef", min_size=32, max_size=32)),
    }


@dataclass
class Stores:
    sqlite: SQLiteSink
    sqlite_path: Path
    postgres: PostgresSink
    postgres_admin: Any
    jsonl_dir: Path


@pytest.fixture
def stores(postgres_url: str, tmp_path: Path) -> Iterator[Stores]:
    """One SQLite file and one PostgreSQL schema for every example (emptied
    before each), closed after the test."""
    sqlite_path = tmp_path / "aegis.db"
    sqlite = SQLiteSink(str(sqlite_path))
    postgres = PostgresSink(postgres_url)
    admin = psycopg.connect(postgres_url, autocommit=True)
    jsonl_dir = tmp_path / "jsonl"
    jsonl_dir.mkdir()
    try:
        # The tables exist from here on: each example only empties them.
        sqlite.write(Batch())
        postgres.write(Batch())
        yield Stores(sqlite, sqlite_path, postgres, admin, jsonl_dir)
    finally:
        admin.close()
        postgres.close()
        sqlite.close()


def _typed(value: Any) -> Any:
    """``value`` with the type of every part spelled out: ``1 == 1.0 == True``
    hides a store that gives back another type."""
    if isinstance(value, dict):
        return ("dict", [(_typed(key), _typed(item)) for key, item in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_typed(item) for item in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def _same(read: EventRecord, built: EventRecord) -> None:
    assert read == built
    assert _typed(tuple(read)) == _typed(tuple(built))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fields=event_fields())
def test_any_event_taken_reads_back_the_same_from_every_store(
    stores: Stores, fields: dict[str, Any]
) -> None:
    try:
        event = build_event(now=now, **fields)
    except EventError:
        reject()
    everything = EventQuery(limit=1000)
    # Every filter at once, each naming this event's own value: it is found.
    itself = EventQuery(
        types=(event.type,),
        source=event.source,
        levels=(event.level,),
        tags=event.tags,
        trace_id=event.trace_id,
        since=event.timestamp,
        until=math.nextafter(event.timestamp, math.inf),
    )
    batch_id = f"b-{os.urandom(8).hex()}"

    memory = MemorySink()
    memory.write(Batch(events=[event], batch_id=batch_id))
    [read] = memory.read_events(everything)
    _same(read, event)
    assert memory.read_events(itself) == [event]

    with sqlite3.connect(stores.sqlite_path) as connection:
        connection.execute("DELETE FROM aegis_events")
    connection.close()
    stores.sqlite.write(Batch(events=[event], batch_id=batch_id))
    [read] = stores.sqlite.read_events(everything)
    _same(read, event)
    assert stores.sqlite.read_events(itself) == [event]

    stores.postgres_admin.execute("DELETE FROM aegis_events")
    stores.postgres.write(Batch(events=[event], batch_id=batch_id))
    [read] = stores.postgres.read_events(everything)
    _same(read, event)
    assert stores.postgres.read_events(itself) == [event]

    back = spool_codec.decode(spool_codec.encode(Batch(events=[event], batch_id=batch_id)))
    assert back.batch_id == batch_id and back.requests == [] and back.sessions == []
    [read] = back.events
    _same(read, event)

    path = stores.jsonl_dir / f"{batch_id}.jsonl"
    jsonl = JsonlSink(str(path))
    try:
        jsonl.write(Batch(events=[event], batch_id=batch_id))
    finally:
        jsonl.close()
    # Lines end in "\n" only: U+2028 in a text is no line break of JSON Lines.
    [line, end] = path.read_bytes().split(b"\n")
    assert end == b""
    expected = event.to_json()
    expected["event_type"] = expected.pop("type")
    assert json.loads(line) == {"type": "event", **expected}
    assert _typed(json.loads(line)) == _typed({"type": "event", **expected})

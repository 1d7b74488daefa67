"""A batch through the spool's bytes comes back equal; damaged bytes are refused
as such (SpoolCorrupt), never with another error."""

from __future__ import annotations

import json
import math
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mw.core import spool_codec
from aegis_mw.core.record import Batch, RequestRecord, WebSocketSession
from aegis_mw.core.rollup import RollupDelta
from aegis_mw.core.spool_codec import SpoolCorrupt

texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=True, width=64)
requests = st.builds(
    RequestRecord,
    texts, finite, texts, texts, texts, st.integers(-(2**63), 2**63 - 1), finite,
    st.none() | finite, st.integers(0, 2**62), st.integers(0, 2**62), st.none() | texts, texts,
    st.none() | texts, st.none() | texts,
)  # fmt: skip
sessions = st.builds(
    WebSocketSession,
    texts, finite, texts, texts, finite, st.integers(0, 2**40), st.integers(0, 2**40),
    st.none() | st.integers(0, 4999), st.booleans(), st.none() | texts, texts,
    st.none() | texts, st.none() | texts,
)  # fmt: skip


@st.composite
def deltas(draw: st.DrawFn) -> RollupDelta | None:
    rows = draw(st.lists(st.tuples(st.integers(0, 10**6), texts, st.floats(0, 1e6)), max_size=20))
    if not rows and draw(st.booleans()):
        return None
    delta = RollupDelta()
    for bucket, route, duration in rows:
        delta.add(bucket * 5.0, route, "GET", 200 + bucket % 400, duration, bucket % 3 == 0, 1, 2)
    delta.delta_id = draw(texts)
    return delta


def same(left: object, right: object) -> bool:
    """Equal, with NaN-free floats compared exactly and -0.0 told from 0.0."""
    if isinstance(left, float) and isinstance(right, float):
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    if isinstance(left, (tuple, list)) and isinstance(right, (tuple, list)):
        return len(left) == len(right) and all(map(same, left, right))
    return type(left) is type(right) and left == right


@settings(max_examples=150, deadline=None)
@given(
    st.lists(requests, max_size=spool_codec.CHUNK + 3),
    st.lists(sessions, max_size=5),
    deltas(),
    texts,
)
def test_a_batch_comes_back_equal(
    requests: list[RequestRecord],
    sessions: list[WebSocketSession],
    rollups: RollupDelta | None,
    batch_id: str,
) -> None:
    batch = Batch(requests, sessions, rollups=rollups, batch_id=batch_id)
    back = spool_codec.decode(spool_codec.encode(batch))
    assert back.batch_id == batch_id
    assert all(type(record) is RequestRecord for record in back.requests)
    assert all(type(session) is WebSocketSession for session in back.sessions)
    assert same(back.requests, requests)
    assert same(back.sessions, sessions)
    if rollups is None:
        assert back.rollups is None
    else:
        assert back.rollups is not None
        assert (back.rollups.delta_id, back.rollups.requests) == (
            rollups.delta_id,
            rollups.requests,
        )
        assert back.rollups.cells == rollups.cells


def test_chunks_give_the_thread_a_look_between_them() -> None:
    records = [
        RequestRecord(f"{n:032x}", 1.0, "GET", "/", "/", 200, 1.0, 1.0, 0, 0, None, "")
        for n in range(spool_codec.CHUNK * 3 + 1)
    ]
    looks: list[int] = []
    payload = spool_codec.encode(Batch(records), lambda: looks.append(1))
    assert len(looks) == 5  # after the header, and after each part
    looks.clear()
    assert spool_codec.decode(payload, lambda: looks.append(1)).requests == records
    assert len(looks) == 4


def test_oldest_is_the_earliest_start_of_any_record() -> None:
    request = RequestRecord("r", 20.0, "GET", "/", "/", 200, 1.0, 1.0, 0, 0, None, "")
    session = WebSocketSession("s", 10.0, "/ws", "/ws", 1.0, 0, 0, None, True, None, "")
    assert spool_codec.oldest(Batch([request], [session]), 99.0) == 10.0
    assert spool_codec.oldest(Batch(), 99.0) == 99.0


def _payload(parts: list[object]) -> bytes:
    return b"".join(spool_codec._part(part) for part in parts)


def test_records_of_an_earlier_version_are_read_by_name() -> None:
    fields = [name for name in RequestRecord._fields if name != "error"][::-1]
    row = {name: index for index, name in enumerate(RequestRecord._fields)}
    header = {
        "format": 1, "batch_id": "b", "request_fields": fields, "session_fields": [],
        "requests": 1, "sessions": 0, "rollups": None,
    }  # fmt: skip
    back = spool_codec.decode(_payload([header, [[row[name] for name in fields]]]))
    assert back.requests[0]._asdict() == {**row, "error": None}


def test_a_spool_written_before_trace_ids_reads_back_untraced() -> None:
    """The twelve fields a spool held before trace_id and span_id existed."""
    fields = list(RequestRecord._fields[:12])
    header = {
        "format": 1, "batch_id": "b", "request_fields": fields,
        "session_fields": list(WebSocketSession._fields[:11]), "requests": 1, "sessions": 1,
        "rollups": None,
    }  # fmt: skip
    row = ["r", 1.0, "GET", "/", "/", 200, 1.0, 1.0, 0, 0, None, ""]
    session = ["s", 1.0, "/ws", "/ws", 5.0, 1, 2, 1000, True, None, ""]
    back = spool_codec.decode(_payload([header, [row], [session]]))
    assert back.requests == [RequestRecord(*row)]
    assert back.sessions == [WebSocketSession(*session)]
    assert (back.requests[0].trace_id, back.sessions[0].span_id) == (None, None)


HEADER = {
    "format": 1, "batch_id": "b", "request_fields": list(RequestRecord._fields),
    "session_fields": list(WebSocketSession._fields), "requests": 3, "sessions": 0,
    "rollups": {"delta_id": "d", "requests": 0, "cells": 0},
}  # fmt: skip
ROW = ["r", 1.0, "GET", "/", "/", 200, 1.0, 1.0, 0, 0, None, "", None, None]
VALID = _payload([HEADER, [ROW] * 3])


def test_the_hand_made_payload_is_valid() -> None:
    assert len(spool_codec.decode(VALID).requests) == 3


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not zlib",
        zlib.compress(b"[1, 2]"),
        _payload([{"format": 2}]),
        VALID[:-5],  # cut short
        VALID[:4] + b"\x00" * (len(VALID) - 4),  # not zlib inside
        b"\x00\x00\x00\x00" + VALID,  # an empty part
        _payload([{**HEADER, "requests": 4}, [ROW] * 3]),
        _payload([{**HEADER, "requests": 2}, [ROW] * 3]),
        _payload([HEADER, [ROW] * 3, [ROW]]),
        _payload([HEADER, [ROW] * 2, []]),
        _payload([HEADER, [ROW, ROW, ROW[:-1]]]),
        _payload([HEADER, [ROW] * 3, {"x": 1}]),
        _payload(
            [{**HEADER, "rollups": {"delta_id": "d", "requests": 0, "cells": 1}}, [ROW] * 3, [[1]]]
        ),
        _payload(
            [
                {**HEADER, "rollups": {"delta_id": "d", "requests": 0, "cells": 2}},
                [ROW] * 3,
                [[0, "/", "GET", 2, 1, 0, 0, 1.0, 1.0, 1.0, 0, 0, [[3, 1]]]],
            ]
        ),
        _payload(
            [
                {**HEADER, "rollups": {"delta_id": "d", "requests": 0, "cells": 1}},
                [ROW] * 3,
                [[0, "/", "GET", 2, 1, 0, 0, 1.0, 1.0, 1.0, 0, 0, [[3]]]],
            ]
        ),
        _payload([{**HEADER, "requests": "three"}, [ROW] * 3]),
        _payload([[HEADER], [ROW] * 3]),
    ],
)
def test_damaged_payloads_are_refused_as_such(payload: bytes) -> None:
    with pytest.raises(SpoolCorrupt):
        spool_codec.decode(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(zlib.compress, st.binary(max_size=200)))
def test_any_bytes_decode_or_are_refused_as_such(payload: bytes) -> None:
    try:
        spool_codec.decode(payload)
    except SpoolCorrupt:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(0, 255))
def test_a_changed_byte_decodes_or_is_refused_as_such(where: int, value: int) -> None:
    changed = bytearray(VALID)
    changed[where] = value
    try:
        spool_codec.decode(bytes(changed))
    except SpoolCorrupt:
        pass


TEXTS = [json.dumps(HEADER).encode(), json.dumps([ROW] * 3).encode()]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1), st.data())
def test_a_changed_character_of_the_text_decodes_or_is_refused_as_such(
    which: int, data: st.DataObject
) -> None:
    text = bytearray(TEXTS[which])
    text[data.draw(st.integers(0, len(text) - 1))] = data.draw(st.integers(0, 255))
    parts = [zlib.compress(bytes(text) if index == which else part)
             for index, part in enumerate(TEXTS)]  # fmt: skip
    try:
        spool_codec.decode(b"".join(len(part).to_bytes(4, "big") + part for part in parts))
    except SpoolCorrupt:
        pass


def test_a_delta_of_many_cells_comes_back_equal_in_parts() -> None:
    delta = RollupDelta()
    for number in range(spool_codec.CHUNK * 2 + 5):
        delta.add(number * 5.0, f"/r/{number % 7}", "GET", 200 + number % 300, number / 3, False,
                  number, 2 * number)  # fmt: skip
    delta.delta_id = "many"
    looks: list[int] = []
    payload = spool_codec.encode(Batch(rollups=delta, batch_id="b"), lambda: looks.append(1))
    assert len(looks) == 4  # the header, then three parts of cells
    back = spool_codec.decode(payload)
    assert back.rollups is not None and back.rollups.cells == delta.cells
    assert (back.rollups.requests, back.rollups.delta_id) == (delta.requests, "many")

"""The /ws/metrics message protocol: every client message either parses to
one action or raises a ProtocolError whose code the client can act on."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegis_mw.realtime import protocol
from aegis_mw.realtime.protocol import (
    DEFAULT_SUBSCRIPTION,
    SECTIONS,
    Ack,
    Get,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    parse,
)


def test_default_subscription_is_overview_and_alerts() -> None:
    assert [s for s in SECTIONS if DEFAULT_SUBSCRIPTION[s]] == ["overview", "alerts"]
    assert set(DEFAULT_SUBSCRIPTION) == set(SECTIONS)


def test_subscribe_sets_only_the_named_sections() -> None:
    message = parse('{"type": "subscribe", "data": {"topEndpoints": true, "alerts": false}}')
    assert message == Subscribe({"topEndpoints": True, "alerts": False})
    assert isinstance(message, Subscribe)
    after = message.apply(DEFAULT_SUBSCRIPTION)
    assert protocol.frame_sections(after) == ("overview", "topEndpoints")


@pytest.mark.parametrize(
    "data", [["overview", "alerts"], {"overview": True, "alerts": True, "requestRate": False}]
)
def test_unsubscribe_takes_names_or_the_subscribe_form(data: Any) -> None:
    message = parse(json.dumps({"type": "unsubscribe", "data": data}))
    assert message == Unsubscribe(("overview", "alerts"))
    assert isinstance(message, Unsubscribe)
    assert protocol.frame_sections(message.apply(DEFAULT_SUBSCRIPTION)) == ()


def test_ping_get_ack_and_bytes() -> None:
    assert parse('{"type": "ack", "data": 12}') == Ack(12)
    assert parse('{"type": "ping", "data": [1.5e308, "\\ud800"]}') == Ping([1.5e308, "\ud800"])
    assert parse(b'{"type": "ping"}') == Ping(None)
    assert parse('{"type": "ping", "data": {"n": 7}}') == Ping({"n": 7})
    assert parse('{"type": "get", "data": {"section": "latencyPercentiles"}}') == Get(
        "latencyPercentiles", "1h"
    )
    assert parse('{"type": "get", "data": {"section": "topEndpoints", "range": "7d"}}') == Get(
        "topEndpoints", "7d"
    )


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        ("{not json", "invalid_json", "not valid JSON"),
        (b"\xff\xfe", "invalid_json", "not valid JSON"),
        ("[" * 100_000, "invalid_json", "not valid JSON"),
        ("[1, 2]", "invalid_message", "JSON object"),
        ('{"data": {}}', "invalid_message", "'type'"),
        ('{"type": 5}', "invalid_message", "'type'"),
        ('{"type": "publish"}', "unknown_type", '"publish"'),
        ('{"type": "subscribe", "data": {"cpu": true}}', "unknown_section", '"cpu"'),
        ('{"type": "subscribe", "data": {"overview": 1}}', "invalid_field", "'overview'"),
        ('{"type": "subscribe", "data": {}}', "invalid_field", "object of section names"),
        ('{"type": "subscribe", "data": ["overview"]}', "invalid_field", "object"),
        ('{"type": "unsubscribe", "data": "overview"}', "invalid_field", "list of section"),
        ('{"type": "unsubscribe", "data": [3]}', "unknown_section", "3"),
        ('{"type": "get", "data": {"section": "alerts"}}', "unknown_section", '"alerts"'),
        ('{"type": "get", "data": {"section": "overview", "range": "2h"}}', "invalid_range", "1h"),
        ('{"type": "get", "data": {"section": "overview", "range": 60}}', "invalid_range", "5m"),
        ('{"type": "get", "data": {"section": "overview", "x": 1}}', "invalid_field", "'x'"),
        ('{"type": "get", "data": "overview"}', "invalid_field", "'section'"),
        ('{"type": "ping", "data": "' + "x" * 300 + '"}', "invalid_field", "at most 256"),
        # Python's json takes these, but no answer could echo them (json.dumps
        # refuses them with allow_nan=False): refused as the JSON they are not.
        ('{"type": "ping", "data": NaN}', "invalid_json", "NaN is not JSON"),
        ('{"type": "ping", "data": Infinity}', "invalid_json", "Infinity is not JSON"),
        ('{"type": "ping", "data": [-Infinity]}', "invalid_json", "-Infinity is not JSON"),
        ('{"type": "ping", "data": {"x": 1e999}}', "invalid_json", "1e999 is out of range"),
        ('{"type": "ping", "data": -1E+400}', "invalid_json", "out of range"),
        ('{"type": "subscribe", "data": {"overview": NaN}}', "invalid_json", "NaN"),
        ('{"type": "ping", "data": ' + "9" * 5000 + "}", "invalid_json", "at most 256 digits"),
        ('{"type": "ping", "data": ' + "[" * 200 + "]" * 200 + "}", "invalid_field", "256"),
        ('{"type": "ack", "data": -1}', "invalid_field", "seq"),
        ('{"type": "ack", "data": true}', "invalid_field", "seq"),
        ('{"type": "ack", "data": 1.0}', "invalid_field", "seq"),
    ],
)
def test_bad_messages_name_the_problem(text: str | bytes, code: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(text)
    assert raised.value.code == code
    assert fragment in raised.value.message
    # The error message the client receives is valid JSON naming the same.
    sent = json.loads(protocol.error(raised.value.code, raised.value.message))
    assert sent == {"type": "error", "data": {"code": code, "message": raised.value.message}}


def test_long_client_values_are_cut_short_in_errors() -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(json.dumps({"type": "t" * 1000}))
    assert len(raised.value.message) < 120


# Any text, lone surrogates included; any float, NaN and infinities included
# (json.dumps writes them as NaN and Infinity); integers of any length.
surrogates = st.sampled_from(["\ud800", "\udfff", "\udbff\udbff"])
texts = st.text() | st.builds(lambda a, b: a + b, st.text(max_size=3), surrogates)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([10**300, -(10**400)])
    | st.floats() | st.sampled_from([math.nan, math.inf, -math.inf]) | texts,
    lambda children: st.lists(children) | st.dictionaries(texts, children),
    max_leaves=20,
)  # fmt: skip
kinds = st.sampled_from(["ping", "subscribe", "unsubscribe", "get", "ack"]) | st.text()


@given(st.one_of(json_values, st.fixed_dictionaries({"type": kinds, "data": json_values})))
def test_any_json_parses_or_raises_protocol_error(value: Any) -> None:
    """Whatever a client sends, the answer is an action or a ProtocolError,
    never another exception; and the answer to an action encodes (a pong
    echoes its ping's data)."""
    codes = {
        "invalid_json", "invalid_message", "unknown_type", "unknown_section", "invalid_field",
        "invalid_range",
    }  # fmt: skip
    try:
        message = parse(json.dumps(value))
    except ProtocolError as exc:
        refused: ProtocolError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.code in codes
        protocol.error(refused.code, refused.message).encode("ascii")
        return
    if isinstance(message, Ping):
        echoed = protocol.pong(message.data)
        # ASCII: the lone surrogates a client sent go back escaped, as sent.
        assert json.loads(echoed.encode("ascii"))["data"] == message.data


def test_server_messages() -> None:
    hello = json.loads(
        protocol.hello(
            "c1", "1.2.3", 1000, DEFAULT_SUBSCRIPTION, ack_window=4, stall_timeout_ms=10_000
        )
    )
    assert hello == {
        "type": "hello",
        "data": {
            "clientId": "c1",
            "serverVersion": "1.2.3",
            "protocolVersion": 2,
            "updateInterval": 1000,
            "ackWindow": 4,
            "stallTimeout": 10_000,
            "subscription": dict(DEFAULT_SUBSCRIPTION),
            "sections": list(SECTIONS),
        },
    }
    numbered = protocol.numbered(protocol.pong(None), 17)
    assert json.loads(numbered) == {"seq": 17, "type": "pong", "data": None}
    assert numbered.startswith('{"type":"pong"')  # the type first, as before
    frame = json.loads(protocol.metrics("2026-01-01T00:00:00Z", {"overview": {"total": 3}}))
    assert frame == {
        "type": "metrics",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"overview": {"total": 3}},
    }
    assert json.loads(protocol.subscribed({"overview": False})) == {
        "type": "subscribed",
        "data": {"overview": False},
    }
    assert json.loads(protocol.pong([1])) == {"type": "pong", "data": [1]}
    assert json.loads(protocol.result("overview", "1h", {"total": 0})) == {
        "type": "result",
        "data": {"section": "overview", "range": "1h", "value": {"total": 0}},
    }
    with pytest.raises(ValueError):  # never NaN on the wire: it is not JSON
        protocol.metrics("t", {"overview": {"rate": float("nan")}})


@given(
    st.integers(min_value=0, max_value=10**20),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
    st.booleans(),
)
def test_acks_read_without_json_as_with_it(seq: int, separators: Any, reordered: bool) -> None:
    message = {"data": seq, "type": "ack"} if reordered else {"type": "ack", "data": seq}
    text = json.dumps(message, separators=separators)
    assert parse(text) == parse(text.encode()) == Ack(seq)  # bytes: always through json


@pytest.mark.parametrize("text", ['{"type":"ack","data":007}', '{"type":"ack","data":\u0661}'])
def test_acks_that_are_not_json_are_refused(text: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(text)
    assert raised.value.code == "invalid_json"

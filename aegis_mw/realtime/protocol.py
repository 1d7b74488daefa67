"""The ``/ws/metrics`` message protocol: client messages parsed and checked,
server messages encoded. Pure functions, standard library only; the
connection handler decides what to do with them (``docs/realtime-protocol.md``).

Every message is a JSON object with a ``type``. A client message that cannot
be understood raises :class:`ProtocolError`, whose ``code`` and ``message``
go back to the client in an ``error`` message while the connection stays
open. Example::

    try:
        message = parse('{"type": "subscribe", "data": {"topEndpoints": true}}')
    except ProtocolError as exc:
        send(error(exc.code, exc.message))
    else:
        if isinstance(message, Subscribe):
            subscription = message.apply(subscription)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The sections a metrics frame can hold, in the order frames list them.
SECTIONS = (
    "overview",
    "requestRate",
    "latencyPercentiles",
    "statusDistribution",
    "topEndpoints",
    "alerts",
    "customMetrics",
)
#: What a new connection receives until it subscribes to something else.
DEFAULT_SUBSCRIPTION: Mapping[str, bool] = {
    section: section in ("overview", "alerts") for section in SECTIONS
}
#: Sections a one-shot ``get`` can ask for over a history range.
HISTORY_SECTIONS = tuple(
    section for section in SECTIONS if section not in ("alerts", "customMetrics")
)
#: Ranges a ``get`` accepts (those of the JSON API).
GET_RANGES = ("5m", "15m", "1h", "6h", "24h", "7d", "30d")
#: A ``get`` without a range reads this one.
DEFAULT_GET_RANGE = "1h"
#: Client ``data`` echoed by ``pong`` is cut off at this many characters of JSON.
MAX_ECHO_CHARS = 256
#: The protocol's version, in ``hello``: 2 added ``seq`` and ``ack`` (a ``hello``
#: without ``protocolVersion`` is version 1).
PROTOCOL_VERSION = 2

Subscription = dict[str, bool]


class ProtocolError(ValueError):
    """A client message the server cannot act on; the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Subscribe:
    """Turn the named sections on or off; the others keep their state."""

    sections: Mapping[str, bool]

    def apply(self, subscription: Mapping[str, bool]) -> Subscription:
        return {**subscription, **self.sections}


@dataclass(frozen=True)
class Unsubscribe:
    """Turn the named sections off."""

    sections: tuple[str, ...]

    def apply(self, subscription: Mapping[str, bool]) -> Subscription:
        return {**subscription, **dict.fromkeys(self.sections, False)}


@dataclass(frozen=True)
class Ping:
    """Answered by ``pong`` with the same ``data``."""

    data: Any = None


@dataclass(frozen=True)
class Ack:
    """The client processed every message up to ``seq`` (see :mod:`.flow`)."""

    seq: int


@dataclass(frozen=True)
class Get:
    """One section over one history range, answered once by ``result``."""

    section: str
    range: str = DEFAULT_GET_RANGE


ClientMessage = Subscribe | Unsubscribe | Ping | Get | Ack


class _Unrepresentable(ValueError):
    """A number the server does not take (see :func:`_load`)."""


def _constant(name: str) -> Any:
    raise _Unrepresentable(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):  # 1e999: valid JSON, but no double holds it
        raise _Unrepresentable(f"the number {text[:20]} is out of range")
    return value


def _int(text: str) -> int:
    # Longer integers could only be refused later (a ping echoes 256 characters
    # at most), and turning one into an int costs time quadratic in its length.
    if len(text) > MAX_ECHO_CHARS:
        raise _Unrepresentable(f"an integer has at most {MAX_ECHO_CHARS} digits")
    return int(text)


def _load(text: str | bytes) -> Any:
    """JSON as RFC 8259 defines it: Python's ``json`` also takes ``NaN`` and
    ``Infinity`` (and turns ``1e999`` into infinity), which no answer could
    echo: ``json.dumps(..., allow_nan=False)`` would raise mid-connection."""
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except _Unrepresentable as exc:
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):
        # UnicodeDecodeError is a ValueError too: bytes that are not UTF-8.
        raise ProtocolError("invalid_json", "the message is not valid JSON") from None


#: An ack as clients write it: the most frequent message, read without json.
_PLAIN_ACK = re.compile(
    r'\{\s*"type"\s*:\s*"ack"\s*,\s*"data"\s*:\s*(0|[1-9][0-9]{0,14})\s*\}', re.ASCII
)


def parse(text: str | bytes) -> ClientMessage:
    """One client message, checked; raises :class:`ProtocolError`."""
    if type(text) is str:
        plain = _PLAIN_ACK.fullmatch(text)
        if plain is not None:
            return Ack(int(plain[1]))
    value = _load(text)
    if not isinstance(value, dict):
        raise ProtocolError("invalid_message", "a message is a JSON object with a 'type'")
    kind = value.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_message", "a message is a JSON object with a 'type'")
    data = value.get("data")
    if kind == "subscribe":
        return Subscribe(_section_flags(data))
    if kind == "unsubscribe":
        return Unsubscribe(_section_names(data))
    if kind == "ping":
        return Ping(_echoable(data))
    if kind == "ack":
        if type(data) is not int or data < 0:
            raise ProtocolError("invalid_field", "ack 'data' is the seq of a message received")
        return Ack(data)
    if kind == "get":
        return _get(data)
    raise ProtocolError(
        "unknown_type",
        f"unknown message type {_shown(kind)}; use subscribe, unsubscribe, ping, get or ack",
    )


def _echoable(data: Any) -> Any:
    """``data`` if ``pong`` can echo it: encoded exactly as the answer will be."""
    try:
        echoed = _encode(data)
    except (ValueError, RecursionError):  # not after _load: a guard, never raise mid-answer
        raise ProtocolError("invalid_field", "ping 'data' cannot be echoed") from None
    if len(echoed) > MAX_ECHO_CHARS:
        raise ProtocolError(
            "invalid_field", f"ping 'data' is at most {MAX_ECHO_CHARS} characters of JSON"
        )
    return data


def _section_flags(data: Any) -> dict[str, bool]:
    if not isinstance(data, dict) or not data:
        raise ProtocolError(
            "invalid_field", "subscribe 'data' is an object of section names to true or false"
        )
    for name, flag in data.items():
        _check_section(name, SECTIONS)
        if not isinstance(flag, bool):
            raise ProtocolError("invalid_field", f"section {name!r} must be true or false")
    return dict(data)


def _section_names(data: Any) -> tuple[str, ...]:
    # A list of names, or the object form of subscribe (sections set true).
    if isinstance(data, dict):
        return tuple(name for name, flag in _section_flags(data).items() if flag)
    if not isinstance(data, list) or not data:
        raise ProtocolError("invalid_field", "unsubscribe 'data' is a list of section names")
    for name in data:
        _check_section(name, SECTIONS)
    return tuple(data)


def _get(data: Any) -> Get:
    if not isinstance(data, dict):
        raise ProtocolError("invalid_field", "get 'data' is an object with 'section' and 'range'")
    unknown = sorted(set(data) - {"section", "range"})
    if unknown:
        raise ProtocolError("invalid_field", f"get takes 'section' and 'range', not {unknown[0]!r}")
    section = data.get("section")
    if not isinstance(section, str):
        raise ProtocolError("invalid_field", "get 'section' is a section name")
    _check_section(section, HISTORY_SECTIONS)
    range_name = data.get("range", DEFAULT_GET_RANGE)
    if not isinstance(range_name, str) or range_name not in GET_RANGES:
        raise ProtocolError("invalid_range", f"get 'range' must be one of {', '.join(GET_RANGES)}")
    return Get(section, range_name)


def _check_section(name: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(name, str) or name not in allowed:
        raise ProtocolError(
            "unknown_section",
            f"unknown section {_shown(name)}; sections are {', '.join(allowed)}",
        )


def _shown(value: object) -> str:
    """A client's value, quoted and cut short, for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- server messages ---------------------------------------------------------------
def _encode(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def hello(
    client_id: str,
    version: str,
    interval_ms: int,
    subscription: Mapping[str, bool],
    *,
    ack_window: int,
    stall_timeout_ms: int,
) -> str:
    """The first message of every connection."""
    return _encode(
        {
            "type": "hello",
            "data": {
                "clientId": client_id,
                "serverVersion": version,
                "protocolVersion": PROTOCOL_VERSION,
                "updateInterval": interval_ms,
                "ackWindow": ack_window,
                "stallTimeout": stall_timeout_ms,
                "subscription": dict(subscription),
                "sections": list(SECTIONS),
            },
        }
    )


def numbered(text: str, seq: int) -> str:
    """``text`` (an encoded server message) with ``"seq"`` as its last key: the
    frame shared by every client is encoded once, each copy numbered. Last,
    so that every message still begins with its ``type``."""
    return f'{text[:-1]},"seq":{seq}}}'


def metrics(timestamp: str, data: Mapping[str, Any]) -> str:
    """A frame: the subscribed sections only, in :data:`SECTIONS` order."""
    return _encode({"type": "metrics", "timestamp": timestamp, "data": dict(data)})


def subscribed(subscription: Mapping[str, bool]) -> str:
    return _encode({"type": "subscribed", "data": dict(subscription)})


def pong(data: Any) -> str:
    return _encode({"type": "pong", "data": data})


def result(section: str, range_name: str, value: Any) -> str:
    """The answer to a ``get``."""
    return _encode({"type": "result", "data": {"section": section, "range": range_name,
                                               "value": value}})  # fmt: skip


def error(code: str, message: str) -> str:
    return _encode({"type": "error", "data": {"code": code, "message": message}})


def frame_sections(subscription: Mapping[str, bool]) -> tuple[str, ...]:
    """The sections a subscription receives, in frame order: the key under
    which one encoded frame is shared by every client subscribed alike."""
    return tuple(section for section in SECTIONS if subscription.get(section))

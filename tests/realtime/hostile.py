"""Client messages that once ended a /ws/metrics connection, or could: Python's
json reads them but no answer could echo them, or they are deep, long or hold
lone surrogates. Each with the error code it gets (None: a pong echoes it)."""

from __future__ import annotations

HOSTILE: list[tuple[str, str | None]] = [
    ('{"type": "ping", "data": NaN}', "invalid_json"),
    ('{"type": "ping", "data": Infinity}', "invalid_json"),
    ('{"type": "ping", "data": -Infinity}', "invalid_json"),
    ('{"type": "ping", "data": [1e999]}', "invalid_json"),
    ('{"type": "subscribe", "data": {"overview": NaN}}', "invalid_json"),
    ('{"type": "ping", "data": ' + "7" * 5000 + "}", "invalid_json"),
    ('{"type": "ping", "data": ' + "[" * 30_000 + "]" * 30_000 + "}", "invalid_json"),
    ('{"type": "ping", "data": ' + "[" * 120 + "]" * 120 + "}", None),
    ('{"type": "ping", "data": "\\ud800 \\udfff"}', None),
    ('{"type": "\\ud800"}', "unknown_type"),
    ('{"type": "subscribe", "data": {"\\udfff": true}}', "unknown_section"),
]

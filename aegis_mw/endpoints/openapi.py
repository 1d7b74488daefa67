"""The OpenAPI 3.1 description of the JSON metrics API, served at
``{api_path}/openapi.json`` and used by the tests to fuzz the API."""

from __future__ import annotations

from typing import Any

from ..core.events import LEVELS, MAX_ID, MAX_MESSAGE, MAX_SOURCE, MAX_TAG, MAX_TAGS, TYPES
from ..core.labels import STANDARD_METHODS
from ..core.record import OTHER_METHOD
from ..history.queries import SORTS
from ..history.ranges import RANGES
from ..incidents.model import MAX_KEY, MAX_NAME, MAX_TITLE, SEVERITIES, STATUSES
from ..incidents.model import MAX_TEXT as MAX_INCIDENT_TEXT


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_TIME = {"type": "string", "format": "date-time"}
#: What every text parameter is refused for holding: C0 and C1 controls, DEL.
_NO_CONTROLS = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
_BOUNDS = "From 1970-01-01 to before 9999-01-01."
_RANGE_PARAMETERS = [
    _query(
        "range",
        {"type": "string", "enum": list(RANGES)},
        "A range ending now (default 1h); not with from/to.",
    ),
    _query(
        "from",
        _TIME,
        f"Start of an explicit range (ISO 8601; UTC when no offset), before to and at "
        f"most 400 days before it. {_BOUNDS}",
    ),
    _query("to", _TIME, f"End of an explicit range (default now); needs from. {_BOUNDS}"),
]
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_RANGE_INFO = {
    "type": "object",
    "required": ["from", "to", "step_seconds"],
    "properties": {"from": _TIME, "to": _TIME, "step_seconds": {"type": "integer"}},
}
_LATENCY = {
    "type": "object",
    "properties": dict.fromkeys(("avg", "p50", "p95", "p99", "min", "max"), _NUMBER_OR_NULL),
}
_CLASSES = {f"{n}xx": {"type": "integer"} for n in range(1, 6)}
_INTEGER_OR_NULL = {"type": ["integer", "null"]}
_STRING_OR_NULL = {"type": ["string", "null"]}
_RECORD = {
    "type": "object",
    "required": [
        "request_id", "timestamp", "method", "route", "path", "status", "duration_ms",
        "ttfb_ms", "request_bytes", "response_bytes", "client_ip", "error", "trace_id",
        "span_id",
    ],
    "properties": {
        "request_id": {"type": "string"},
        "timestamp": _TIME,
        "method": {"type": "string"},
        "route": {"type": "string"},
        "path": {"type": "string"},
        "status": {"type": "integer"},
        "duration_ms": {"type": "number"},
        "ttfb_ms": _NUMBER_OR_NULL,
        "request_bytes": {"type": "integer"},
        "response_bytes": {"type": "integer"},
        "client_ip": _STRING_OR_NULL,
        "error": {"type": "string"},
        "trace_id": {
            "type": ["string", "null"], "description": "32 lowercase hex digits; null: no trace",
        },
        "span_id": {"type": ["string", "null"], "description": "16 lowercase hex digits"},
    },
}  # fmt: skip


_EVENT = {
    "type": "object",
    "required": [
        "id", "timestamp", "type", "source", "level", "message", "tags", "payload", "trace_id",
    ],
    "properties": {
        "id": {"type": "string"},
        "timestamp": _TIME,
        "type": {"type": "string", "enum": list(TYPES)},
        "source": {"type": "string"},
        "level": {"type": "string", "enum": list(LEVELS)},
        "message": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "payload": {"type": ["object", "null"]},
        "trace_id": _STRING_OR_NULL,
    },
}  # fmt: skip


_INCIDENT = {
    "type": "object",
    "required": [
        "id", "title", "description", "severity", "status", "assignee", "root_cause",
        "correlation_key", "created_at", "updated_at", "resolved_at", "created_by",
    ],
    "properties": {
        "id": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
        "severity": {"type": "string", "enum": list(SEVERITIES)},
        "status": {"type": "string", "enum": list(STATUSES)},
        "assignee": _STRING_OR_NULL, "root_cause": {"type": "string"},
        "correlation_key": _STRING_OR_NULL, "created_at": _TIME, "updated_at": _TIME,
        "resolved_at": {"type": ["string", "null"]}, "created_by": {"type": "string"},
    },
}  # fmt: skip


def _series(point: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["range", "points"],
        "properties": {
            "range": _RANGE_INFO,
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["timestamp", *point],
                    "properties": {"timestamp": _TIME, **point},
                },
            },
        },
    }


def _live_series(point: dict[str, Any]) -> dict[str, Any]:
    """A series of the last minute from memory: one point a second."""
    series = _series(point)
    return {
        "type": "object",
        "required": ["step_seconds", "points"],
        "properties": {
            "step_seconds": {"type": "integer"},
            "points": series["properties"]["points"],
        },
    }


_RATE_POINT = {
    "requests": {"type": "integer"},
    "errors": {"type": "integer"},
    "requests_per_second": {"type": "number"},
}
_LATENCY_POINT = {"requests": {"type": "integer"}} | dict.fromkeys(
    ("avg", "p50", "p95", "p99"), _NUMBER_OR_NULL
)
_ENDPOINT = {
    "type": "object",
    "required": ["route", "method", "requests", "errors"],
    "properties": {
        "route": {"type": "string"},
        "method": {"type": "string"},
        "requests": {"type": "integer"},
        "errors": {"type": "integer"},
        "error_rate": {"type": "number"},
        "requests_per_second": {"type": "number"},
        "latency_ms": _LATENCY,
    },
}

_SCHEMAS: dict[str, dict[str, Any]] = {
    "overview": {
        "type": "object",
        "required": ["range", "total", "successful", "failed", "error_rate", "latency_ms"],
        "properties": {
            "range": _RANGE_INFO,
            "total": {"type": "integer"},
            "successful": {"type": "integer"},
            "failed": {"type": "integer"},
            "client_errors": {"type": "integer"},
            "error_rate": {"type": "number"},
            "requests_per_second": {"type": "number"},
            "rate_limited": {"type": "integer"},
            "latency_ms": _LATENCY,
            "status": {"type": "object", "properties": _CLASSES},
            "request_bytes": {"type": "integer"},
            "response_bytes": {"type": "integer"},
        },
    },
    "realtime": {
        "type": "object",
        "required": ["requests_per_second_1s", "total_requests", "in_flight"],
        "properties": {
            "requests_per_second_1s": {"type": "number"},
            "requests_per_second_10s": {"type": "number"},
            "requests_per_second_60s": {"type": "number"},
            "window_requests": {"type": "integer"},
            "window_errors": {"type": "integer"},
            "error_rate": {"type": "number"},
            **dict.fromkeys(
                ("latency_avg_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"),
                _NUMBER_OR_NULL,
            ),
            "total_requests": {"type": "integer"},
            "total_errors": {"type": "integer"},
            "status_totals": {"type": "object", "properties": _CLASSES},
            "in_flight": {"type": "integer"},
            "websocket_connections_active": {"type": "integer"},
            "websocket_sessions_total": {"type": "integer"},
            "stream_connections_active": {"type": "integer"},
            "request_rate": _live_series(_RATE_POINT),
            "latency_percentiles": _live_series(_LATENCY_POINT),
            "status_distribution": _live_series(_CLASSES),
            "top_endpoints": {"type": "array", "items": _ENDPOINT},
        },
    },
    "request-rate": _series(_RATE_POINT),
    "latency": _series(_LATENCY_POINT),
    "status-distribution": _series(_CLASSES),
    "top-endpoints": {
        "type": "object",
        "required": ["range", "sort", "endpoints"],
        "properties": {
            "range": _RANGE_INFO,
            "sort": {"type": "string", "enum": list(SORTS)},
            "endpoints": {"type": "array", "items": _ENDPOINT},
        },
    },
    "events": {
        "type": "object",
        "required": ["limit", "offset", "events"],
        "properties": {
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "events": {"type": "array", "items": _EVENT},
        },
    },
    "audit": {
        "type": "object",
        "required": ["limit", "entries"],
        "properties": {
            "limit": {"type": "integer"},
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "actor", "action", "object", "detail", "source"],
                    "properties": {
                        "at": _TIME,
                        "actor": {"type": "string"},
                        "action": {"type": "string"},
                        "object": {"type": "string"},
                        "detail": {"type": "object"},
                        "source": {"type": "string", "enum": ["alerts", "incidents", "events"]},
                    },
                },
            },
        },
    },
    "stats": {
        "type": "object",
        "required": ["at", "events", "requests", "custom_metrics", "alerts", "incidents"],
        "properties": {
            "at": _TIME,
            "events": {"type": ["object", "null"]},
            "requests": {"type": ["object", "null"]},
            "custom_metrics": {"type": "object"},
            "alerts": {"type": ["object", "null"]},
            "incidents": {"type": ["object", "null"]},
        },
    },
    "incidents": {
        "type": "object",
        "required": ["limit", "offset", "incidents"],
        "properties": {
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "incidents": {"type": "array", "items": _INCIDENT},
        },
    },
    "incident": {
        "type": "object",
        "required": ["incident", "updates", "summary"],
        "properties": {
            "incident": _INCIDENT,
            "updates": {"type": "array", "items": {"type": "object"}},
            "summary": {"type": "object"},
        },
    },
    "incident-timeline": {
        "type": "object",
        "required": ["incident", "from", "to", "total", "truncated", "limit", "offset", "items"],
        "properties": {
            "incident": _INCIDENT,
            "from": _TIME,
            "to": _TIME,
            "total": {"type": "integer"},
            "truncated": {"type": "boolean"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "items": {"type": "array", "items": {"type": "object", "required": ["at", "kind"]}},
        },
    },
    "requests": {
        "type": "object",
        "required": ["limit", "offset", "requests"],
        "properties": {
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "requests": {"type": "array", "items": _RECORD},
        },
    },
}

_GROUP = {"type": "object", "additionalProperties": {"type": "string"}}
_ALERT = {
    "type": "object",
    "required": ["name", "state", "severity", "group", "message"],
    "properties": {
        "name": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "firing"]},
        "severity": {"type": "string"},
        "group": _GROUP,
        "value": _NUMBER_OR_NULL,
        "since": _NUMBER_OR_NULL,
        "episode": {"type": "string"},
        "flapping": {"type": "boolean"},
        "message": {"type": "string"},
        "annotations": _GROUP,
        "muted": {"type": ["string", "null"]},
    },
}
_TRANSITION = {
    "type": "object",
    "required": ["id", "at", "rule", "group", "kind", "from_state", "to_state", "notify"],
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "number"},
        "rule": {"type": "string"},
        "group": _GROUP,
        "kind": {"type": "string"},
        "from_state": {"type": "string"},
        "to_state": {"type": "string"},
        "value": _NUMBER_OR_NULL,
        "severity": {"type": "string"},
        "episode": {"type": "string"},
        "notify": {"type": "boolean"},
        "labels": _GROUP,
        "annotations": _GROUP,
    },
}
_CHANNEL = {
    "type": "object",
    "required": ["name", "state", "notices"],
    "properties": {
        "name": {"type": "string"},
        "state": {"type": "string", "enum": ["ok", "disabled"]},
        "reason": {"type": ["string", "null"]},
        "disabled_at": _NUMBER_OR_NULL,
        "next_probe_at": _NUMBER_OR_NULL,
        "notices": {"type": "object", "additionalProperties": {"type": "integer"}},
        "oldest_pending_at": _NUMBER_OR_NULL,
    },
}
_ATTEMPT = {
    "type": "object",
    "required": ["channel", "at", "outcome", "error", "seconds", "sender"],
    "properties": {
        "channel": {"type": "string"},
        "at": {"type": "number"},
        "outcome": {
            "type": "string",
            "enum": ["delivered", "retry", "failed", "disabled", "skipped"],
        },
        "error": {"type": "string"},
        "seconds": {"type": "number"},
        "sender": {"type": "string"},
    },
}
_SCHEMAS["alerts"] = {
    "type": "object",
    "required": ["evaluating", "alerts", "nodata", "rules"],
    "properties": {
        "evaluating": {"type": "boolean"},
        "interval": _NUMBER_OR_NULL,
        "alerts": {"type": "array", "items": _ALERT},
        "nodata": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "group"],
                "properties": {"name": {"type": "string"}, "group": _GROUP},
            },
        },
        "rules": {"type": "array", "items": {"type": "object"}},
        "channels": {"type": "array", "items": _CHANNEL},
    },
}
_RULE_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$"},
    "input": {"type": "string"},
    "operator": {"type": "string", "enum": [">", ">=", "<", "<="]},
    "threshold": {"type": "number"},
    "window": {"type": ["string", "number"]},
    "for": {"type": ["string", "number"]},
    "keep_firing_for": {"type": ["string", "number"]},
    "resolve_threshold": _NUMBER_OR_NULL,
    "min_requests": {"type": "integer", "minimum": 0},
    "no_data": {"type": "string", "enum": ["nodata", "ok", "alerting", "keep_last"]},
    "route": _STRING_OR_NULL,
    "method": _STRING_OR_NULL,
    "group_by": {"type": "array", "items": {"type": "string"}},
    "severity": {"type": "string", "enum": ["info", "warning", "error", "critical"]},
    "labels": _GROUP,
    "annotations": _GROUP,
    "metric": _STRING_OR_NULL,
    "match": _GROUP,
}
_RULE_BODY = {
    "type": "object",
    "required": ["name", "input", "operator", "threshold"],
    "properties": _RULE_FIELDS,
    "additionalProperties": False,
}
_LEFT_OUT = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name", "reason"],
        "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
    },
}
_SCHEMAS["alert-rules"] = {
    "type": "object",
    "required": ["rules", "left_out"],
    "properties": {
        "left_out": _LEFT_OUT,
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "input", "operator", "threshold", "source"],
                "properties": {
                    **_RULE_FIELDS,
                    "health": _STRING_OR_NULL,
                    "source": {"type": "string", "enum": ["settings", "api", "builtin"]},
                    "updated_at": _NUMBER_OR_NULL,
                    "updated_by": _STRING_OR_NULL,
                },
            },
        },
    },
}
_CHANNEL_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_SCHEMAS["alert-channels"] = {
    "type": "object",
    "required": ["channels", "left_out"],
    "properties": {
        "left_out": _LEFT_OUT,
        "channels": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "type", "source", "severities"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "source": {"type": "string", "enum": ["settings", "api"]},
                    "severities": {"type": "array", "items": {"type": "string"}},
                    "settings": {
                        "type": ["object", "null"],
                        "description": "The API's channels: their settings, each secret given "
                        "as it is shown as (hidden)",
                    },
                    "updated_at": _NUMBER_OR_NULL,
                    "updated_by": _STRING_OR_NULL,
                },
            },
        },
    },
}
_CHANNEL_BODY = {
    "type": "object",
    "required": ["name", "type"],
    "description": "A channel's settings as in alert_channels (docs/alerts.md), with its name; "
    "no allow_private, no ca_file, secrets as text or env:ALERT_SECRET_NAME",
    "properties": {
        "name": _CHANNEL_NAME,
        "type": {"type": "string", "enum": ["webhook", "slack", "pagerduty", "email"]},
    },
}
_NOTICE = {
    "type": "object",
    "required": ["id", "channel", "state", "attempts"],
    "properties": {
        "id": {"type": "integer"},
        "created_at": {"type": "number"},
        "channel": {"type": "string"},
        "notice_key": {"type": "string"},
        "episode": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "delivered", "failed", "skipped"]},
        "attempts": {"type": "integer"},
        "next_at": {"type": "number"},
        "last_error": {"type": "string"},
        "done_at": _NUMBER_OR_NULL,
        "attempt_log": {"type": "array", "items": _ATTEMPT},
    },
}
_SCHEMAS["silences"] = {
    "type": "object",
    "required": ["silences", "mute_windows", "inhibit_rules", "audit"],
    "properties": {
        "silences": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "matchers", "starts_at", "ends_at", "state"],
                "properties": {
                    "id": {"type": "string"},
                    "matchers": {"type": "array", "items": {"type": "string"}},
                    "starts_at": {"type": "number"},
                    "ends_at": {"type": "number"},
                    "created_by": {"type": "string"},
                    "comment": {"type": "string"},
                    "state": {"type": "string", "enum": ["pending", "active", "expired"]},
                },
            },
        },
        "mute_windows": {"type": "array", "items": {"type": "object"}},
        "inhibit_rules": {"type": "array", "items": {"type": "object"}},
        "audit": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["at", "actor", "action", "object"],
                "properties": {
                    "at": {"type": "number"},
                    "actor": {"type": "string"},
                    "action": {
                        "type": "string",
                        "enum": ["create", "update", "expire", "delete", "test"],
                    },
                    "object": {"type": "string"},
                    "detail": {"type": "object"},
                },
            },
        },
    },
}
_SCHEMAS["alert-history"] = {
    "type": "object",
    "required": ["transitions", "notices"],
    "properties": {
        "transitions": {"type": "array", "items": _TRANSITION},
        "notices": {"type": "array", "items": _NOTICE},
    },
}

_CUSTOM_SERIES = {
    "type": "object",
    "required": ["labels"],
    "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "value": _NUMBER_OR_NULL,
        "count": {"type": "integer"},
        "sum": _NUMBER_OR_NULL,
        "buckets": {"type": "array", "items": {"type": "integer"}},
    },
}
#: What a custom metric was declared as, in its answers.
_METRIC_DECLARATION: dict[str, Any] = {
    "name": {"type": "string"},
    "kind": {"type": "string", "enum": ["counter", "gauge", "histogram"]},
    "help": {"type": "string"},
    "labels": {"type": "array", "items": {"type": "string"}},
    "buckets": {"type": "array", "items": {"type": "number"}},
    "multiprocess_mode": {"type": "string", "enum": ["sum", "max", "min"]},
}
_SCHEMAS["custom-metrics"] = {
    "type": "object",
    "required": ["metrics"],
    "properties": {
        "metrics": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "kind", "help", "labels", "overflowed", "series"],
                "properties": {
                    **_METRIC_DECLARATION,
                    "overflowed": {"type": "integer"},
                    "series": {"type": "array", "items": _CUSTOM_SERIES},
                },
            },
        }
    },
}

_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "overview": _RANGE_PARAMETERS,
    "realtime": [],
    "request-rate": _RANGE_PARAMETERS,
    "latency": _RANGE_PARAMETERS,
    "status-distribution": _RANGE_PARAMETERS,
    "top-endpoints": [
        *_RANGE_PARAMETERS,
        _query("limit", _LIMIT, "How many routes (default 10)."),
        _query("sort", {"type": "string", "enum": list(SORTS)}, "Order (default count)."),
    ],
    "requests": [
        _query(
            "route",
            {"type": "string", "maxLength": 1024, "pattern": _NO_CONTROLS},
            "Route template, exactly (no control characters).",
        ),
        _query(
            "method",
            {"type": "string", "enum": sorted({*STANDARD_METHODS, OTHER_METHOD})},
            f"HTTP method (any case); {OTHER_METHOD} for methods outside the standard ones.",
        ),
        _query(
            "status",
            {"type": "string", "pattern": "^([1-5][0-9][0-9]|[1-5][xX][xX])$"},
            "A status code or a class such as 5xx.",
        ),
        _query("min_duration_ms", {"type": "number", "minimum": 0}, "Slowest requests only."),
        _query(
            "trace_id",
            {"type": "string", "pattern": "^(?!0{32})[0-9a-f]{32}$"},
            "Only the requests of this trace (W3C trace id: 32 lowercase hex digits).",
        ),
        _query("since", _TIME, f"Requests that started at or after this time. {_BOUNDS}"),
        _query("until", _TIME, f"Requests that started before this time (after since). {_BOUNDS}"),
        _query("limit", _LIMIT, "Page size (default 100)."),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000}, "Skip."),
    ],
}
_PARAMETERS["custom-metrics"] = [
    _query(
        "name",
        {"type": "string", "maxLength": 1024, "pattern": _NO_CONTROLS},
        "Only the metric of this name (a counter's without _total).",
    )
]
_POINT_FIGURES = (
    "increase", "rate", "value", "low", "high", "count", "sum", "avg", "p50", "p95", "p99",
)  # fmt: skip
_PARAMETERS["custom-metric-history"] = [
    {**_query("name", {"type": "string", "minLength": 1, "maxLength": 1024,
                       "pattern": _NO_CONTROLS},
              "The metric (a counter's name with or without _total)."), "required": True},
    _query(
        "by",
        {"type": "string", "maxLength": 1024, "pattern": _NO_CONTROLS},
        "One series per value of these labels, comma-separated (default: all added up).",
    ),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100},
           "How many series, the largest (default 10)."),
    *_RANGE_PARAMETERS,
]  # fmt: skip
_SCHEMAS["custom-metric-history"] = {
    "type": "object",
    "required": ["name", "kind", "help", "labels", "by", "range", "series", "left_out"],
    "properties": {
        **_METRIC_DECLARATION,
        "by": {"type": "array", "items": {"type": "string"}},
        "range": _RANGE_INFO,
        "series": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["labels", "points"],
                "properties": {
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "points": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["timestamp"],
                            "properties": {
                                "timestamp": {"type": "string"},
                                **dict.fromkeys(_POINT_FIGURES, _NUMBER_OR_NULL),
                            },
                        },
                    },
                },
            },
        },
        "left_out": {"type": "integer", "minimum": 0},
    },
}  # fmt: skip
_PARAMETERS["events"] = [
    _query(
        "type",
        {"type": "string", "pattern": f"^ *({'|'.join(TYPES)})( *, *({'|'.join(TYPES)}))* *$"},
        "Any of these types, comma-separated.",
    ),
    _query(
        "level",
        {"type": "string", "pattern": f"^ *({'|'.join(LEVELS)})( *, *({'|'.join(LEVELS)}))* *$"},
        "Any of these levels, comma-separated.",
    ),
    _query(
        "source",
        {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": _NO_CONTROLS},
        "Only this source (the request log's errors are source app).",
    ),
    _query(
        "tags",
        {"type": "string", "maxLength": 1024, "pattern": _NO_CONTROLS},
        "Every one of these tags, comma-separated.",
    ),
    _query("trace_id", {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "Only this trace."),
    _query("since", _TIME, f"Events at or after this time. {_BOUNDS}"),
    _query("until", _TIME, f"Events before this time (after since). {_BOUNDS}"),
    _query("limit", _LIMIT, "Page size (default 100)."),
    _query("offset", {"type": "integer", "minimum": 0, "maximum": 10_000}, "Skip."),
]
_INCIDENT_ID = [
    {**_query("id", {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": _NO_CONTROLS},
              "The incident's id."), "required": True},
]  # fmt: skip
_PAGE_PARAMETERS = [
    _query("limit", _LIMIT, "Page size (default 100)."),
    _query("offset", {"type": "integer", "minimum": 0, "maximum": 100_000}, "Skip."),
]
_PARAMETERS["incidents"] = [
    _query(
        "status",
        {"type": "string", "maxLength": 1024, "pattern": _NO_CONTROLS},
        "Any of these statuses, comma-separated; active for every one but resolved.",
    ),
    _query(
        "severity",
        {"type": "string", "maxLength": 1024, "pattern": _NO_CONTROLS},
        "Any of these severities, comma-separated.",
    ),
    *_PAGE_PARAMETERS,
]
_PARAMETERS["incident"] = _INCIDENT_ID
_PARAMETERS["incident-timeline"] = [
    *_INCIDENT_ID,
    *_PAGE_PARAMETERS,
    _query(
        "latest",
        {"type": "string", "enum": ["true", "false"]},
        "true: the last limit items (oldest first), without offset; the answer's offset says "
        "where they start.",
    ),
]
_PARAMETERS["stats"] = []
_PARAMETERS["audit"] = [_query("limit", _LIMIT, "How many entries, the latest (default 100).")]
_PARAMETERS["alerts"] = []
_PARAMETERS["alert-rules"] = []
_PARAMETERS["alert-channels"] = []
_PARAMETERS["silences"] = []
_PARAMETERS["alert-history"] = [
    _query("limit", _LIMIT, "Page size (default 100)."),
    _query(
        "before", {"type": "integer", "minimum": 1}, "Transitions with a smaller id (paging back)."
    ),
]
_SUMMARIES = {
    "overview": "Totals, error rate, requests per second and latency over a range",
    "realtime": "The last seconds, from memory (no storage read)",
    "request-rate": "Requests and errors per step",
    "latency": "Average, p50, p95 and p99 latency per step",
    "status-distribution": "Requests per status class per step",
    "top-endpoints": "Routes by request count, p95 latency or errors",
    "requests": "The stored request log, newest first",
    "alerts": "Alerts pending or firing, rules without data, and every rule with its health",
    "alert-rules": "Every rule evaluated, where it comes from, and who wrote those of the API",
    "alert-channels": "Every channel notices go to, where it comes from, and the API's settings "
    "without secrets",
    "alert-history": "Alert transitions and their notices to each channel, newest first",
    "silences": "Silences not yet ended, mute windows, inhibit rules and the silences' audit",
    "custom-metrics": "The app's own counters, gauges and histograms now (every worker's)",
    "custom-metric-history": "One of the app's own metrics over a range, per step, from the "
    "stored history",
    "events": "The app's events and the request log's errors, newest first",
    "incidents": "Incidents, newest first",
    "stats": "Events, requests, custom metrics, alerts and incidents: totals and the last hour",
    "audit": "Who changed what, when and from where: alerting and incidents (admin role)",
    "incident": "One incident, its updates (who changed what, when) and its summary",
    "incident-timeline": "What happened around an incident, oldest first",
}
_ERROR = {
    "description": "Bad input, named in the error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "parameter": {"type": "string"},
                            "field": {"type": "string"},
                        },
                    }
                },
            }
        }
    },
}


_UNAVAILABLE = {
    **_ERROR,
    "description": (
        "Not now: storage_unavailable (the history store cannot be read; while it is "
        "known to be down the answer comes at once), busy (too many monitoring reads "
        "at once), or history_unavailable (no sink keeps history)"
    ),
    "headers": {
        "Retry-After": {
            "description": "Seconds before the store is tried again (storage_unavailable, busy)",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _name_query(name: str, description: str) -> list[dict[str, Any]]:
    return [{**_query(name, {"type": "string", "minLength": 1}, description), "required": True}]


_SILENCE_BODY = {
    "type": "object",
    "required": ["matchers", "comment"],
    "properties": {
        "id": {"type": "string", "description": "An existing silence's id: updated"},
        "matchers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "starts_at": {"type": ["number", "string"]},
        "ends_at": {"type": ["number", "string"]},
        "duration": {
            "type": ["string", "number"],
            "description": "Instead of ends_at: 30m, 2h, 1d, or seconds",
        },
        "comment": {"type": "string", "minLength": 1},
        "created_by": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}
_DRY_RUN_BODY = {
    "type": "object",
    "properties": {
        "rule": _RULE_BODY,
        "name": {"type": "string", "description": "A rule evaluated now, instead of rule"},
        "hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 168},
        "step": {
            "type": ["string", "number"],
            "description": "Between evaluations: 10s, 1m, or seconds (default 60s)",
        },
    },
    "additionalProperties": False,
}
#: (path, method) -> operation id, summary, parameters, body schema
_EVENT_BODY = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {"type": "string", "maxLength": MAX_MESSAGE},
        "type": {"type": "string", "enum": list(TYPES)},
        "level": {"type": "string", "enum": list(LEVELS)},
        "source": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE},
        "tags": {
            "type": ["array", "null"], "maxItems": MAX_TAGS,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG,
                      "pattern": "^[^,\\s]([^,]*[^,\\s])?$"},
        },
        "payload": {"type": ["object", "null"], "description": "Nested 32 deep at most"},
        "timestamp": {
            "type": ["number", "string", "null"], "description": "Seconds or ISO 8601; now",
        },
        "id": {
            "type": ["string", "null"], "maxLength": MAX_ID,
            "pattern": "^(?!request:)[A-Za-z0-9][A-Za-z0-9._:@/-]*$",
            "description": "Stored once per id",
        },
        "trace_id": {
            "type": ["string", "null"], "pattern": "^(?!0{32})[0-9a-f]{32}$",
        },
    },
    "additionalProperties": False,
}  # fmt: skip
#: Text of one line, not blank, without control characters; of several lines:
#: tabs and newlines allowed.
_CONTROLS = "\\u0000-\\u001f\\u007f-\\u009f"
_NOT_BLANK = f"^[^{_CONTROLS}]*[^\\s{_CONTROLS}][^{_CONTROLS}]*$"
_NO_CONTROLS_BUT_LINES = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f]*$"
_INCIDENT_FIELDS = {
    "title": {"type": "string", "maxLength": MAX_TITLE, "pattern": _NOT_BLANK},
    "description": {
        "type": "string",
        "maxLength": MAX_INCIDENT_TEXT,
        "pattern": _NO_CONTROLS_BUT_LINES,
    },
    "severity": {"type": "string", "enum": list(SEVERITIES)},
    "status": {"type": "string", "enum": list(STATUSES)},
    "assignee": {
        "type": ["string", "null"],
        "maxLength": MAX_NAME,
        "pattern": _NOT_BLANK,
    },
    "root_cause": {
        "type": "string",
        "maxLength": MAX_INCIDENT_TEXT,
        "pattern": _NO_CONTROLS_BUT_LINES,
    },
}
_INCIDENT_OPEN = {
    "type": "object", "required": ["title"],
    "properties": {**_INCIDENT_FIELDS, "correlation_key": {
        "type": ["string", "null"], "maxLength": MAX_KEY, "pattern": _NOT_BLANK,
        "description": "One active incident per key: a second opening attaches to it",
    }},
    "additionalProperties": False,
}  # fmt: skip
_INCIDENT_CHANGE = {
    "type": "object", "minProperties": 1,
    "properties": {**_INCIDENT_FIELDS, "note": {
        "type": "string", "maxLength": MAX_INCIDENT_TEXT, "pattern": _NO_CONTROLS_BUT_LINES,
    }},
    "additionalProperties": False,
}  # fmt: skip
_WRITES: dict[tuple[str, str], tuple[str, str, list[dict[str, Any]], Any]] = {
    ("incidents", "post"): (
        "open_incident", "Open an incident, or attach to the active one of its correlation key "
        "(editor role); once per Idempotency-Key", [{
            "name": "Idempotency-Key", "in": "header", "required": False,
            "description": "Opens once per key (and credential) in a day: the key sent again "
            "answers as its first opening did, with Idempotent-Replayed: true; with other "
            "fields, 422.",
            "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
        }], _INCIDENT_OPEN,
    ),
    ("incidents", "patch"): (
        "change_incident", "Change an incident's fields and add a note (editor role)",
        _name_query("id", "The incident's id."), _INCIDENT_CHANGE,
    ),
    ("events", "post"): (
        "post_events", "Send one event, or a list of up to 100: queued, stored once per id, "
        "the post audited (editor role)", [],
        {"oneOf": [_EVENT_BODY, {"type": "array", "items": _EVENT_BODY, "minItems": 1,
                                 "maxItems": 100}]},
    ),
    ("alert-rules", "put"): (
        "put_alert_rule", "Create or replace a rule of the API (editor role)", [], _RULE_BODY
    ),
    ("alert-rules", "delete"): (
        "delete_alert_rule", "Remove a rule of the API; its firing alerts resolve (editor role)",
        _name_query("name", "The rule's name."), None,
    ),
    ("alert-channels", "put"): (
        "put_alert_channel", "Create or replace a channel of the API (admin role)", [],
        _CHANNEL_BODY,
    ),
    ("alert-channels", "delete"): (
        "delete_alert_channel", "Remove a channel of the API; its pending notices are skipped "
        "(admin role)", _name_query("name", "The channel's name."), None,
    ),
    ("alert-rules/dry-run", "post"): (
        "dry_run", "Would this rule fire now, and when over the last hours? (editor role)", [],
        _DRY_RUN_BODY,
    ),
    ("silences", "post"): (
        "put_silence", "Create a silence, or update the one of the given id (editor role)", [],
        _SILENCE_BODY,
    ),
    ("silences", "delete"): (
        "expire_silence", "End a silence now (editor role)",
        _name_query("id", "The silence's id."), None,
    ),
    ("channel-test", "post"): (
        "test_channel", "Send one test notice through a channel: delivered or not (editor role)",
        [], {
            "type": "object", "required": ["channel"],
            "properties": {"channel": {"type": "string"}}, "additionalProperties": False,
        },
    ),
}  # fmt: skip
_WRITE_ERRORS = {
    "description": "Refused, named in the error: 401/403 (not an editor, not an admin for "
    "channels, or from another site), 404 (no such rule, silence or channel), 409 (a rule or "
    "channel of the settings, too many rules or channels, alerts off), 413 (body over 64 KiB), "
    "415 (not JSON), 429 (a dry run is running)",
    "content": _ERROR["content"],
}


def _write_operations(prefix: str, paths: dict[str, Any]) -> None:
    ok = {
        "description": "Done; the object written (or the outcome) under data",
        "content": {"application/json": {"schema": {"type": "object", "required": ["data"]}}},
    }
    for (name, method), (operation, summary, parameters, body) in _WRITES.items():
        responses = {"200": ok, "503": _UNAVAILABLE}
        if method in ("put", "post") and name != "channel-test" and name != "alert-rules/dry-run":
            responses["201"] = ok
        if name == "events":
            responses = {"202": ok, "503": _UNAVAILABLE}
        for status in ("400", "401", "403", "404", "405", "409", "413", "415", "429"):
            responses[status] = _WRITE_ERRORS
        if (name, method) == ("incidents", "post"):
            responses["422"] = {
                "description": "Its Idempotency-Key opened an incident with other fields",
                "content": _ERROR["content"],
            }
        entry: dict[str, Any] = {
            "operationId": operation, "summary": summary, "parameters": parameters,
            "responses": responses,
        }  # fmt: skip
        if body is not None:
            entry["requestBody"] = _body(body)
        paths.setdefault(f"{prefix}/{name}", {})[method] = entry


def openapi_document(prefix: str) -> dict[str, Any]:
    """The description for an API mounted at ``prefix``."""
    paths: dict[str, Any] = {}
    for name, summary in _SUMMARIES.items():
        ok = {
            "description": "The answer, under data",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": _SCHEMAS[name]},
                    }
                }
            },
        }
        responses: dict[str, Any] = {"200": ok, "400": _ERROR, "503": _UNAVAILABLE}
        if name in ("events", "incident", "incident-timeline"):
            # events: the history store keeps none; an incident: none of the id
            responses["404"] = _ERROR
        responses.update({"401": _ERROR, "403": _ERROR, "405": _ERROR})
        paths[f"{prefix}/{name}"] = {
            "get": {
                "operationId": name.replace("-", "_"),
                "summary": summary,
                "parameters": _PARAMETERS[name],
                "responses": responses,
            }
        }
    _write_operations(prefix, paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "aegis_mw metrics API", "version": "1"},
        "paths": paths,
    }

"""A batch as OTLP protobuf: request metrics, session counts, events as logs.

Requests become one ``http.server.request.duration`` histogram data point per
(method, route template, status code, error type), in seconds, with the
semantic conventions' bucket boundaries; WebSocket sessions an
``aegis.websocket.sessions`` count per (route, close code, accepted). Both
are DELTA: a batch's points cover what happened since the last export the
collector took, and nothing is held here between batches. Raw paths never go
into an attribute: a route template is bounded by the app, a path is not.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

try:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    )
    from opentelemetry.proto.common.v1.common_pb2 import (
        AnyValue,
        ArrayValue,
        InstrumentationScope,
        KeyValue,
        KeyValueList,
    )
    from opentelemetry.proto.logs.v1.logs_pb2 import (
        LogRecord,
        ResourceLogs,
        ScopeLogs,
        SeverityNumber,
    )
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        AggregationTemporality,
        Exemplar,
        Histogram,
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the OTLP sink needs opentelemetry-proto: pip install 'aegis_mw[otel]'"
    ) from exc

from ..core.history import is_span_id, is_trace_id
from ..core.record import OVERFLOW_ROUTE, UNMATCHED_ROUTE, EventRecord, RequestRecord
from ..core.record import WebSocketSession as Session

__all__ = [
    "BOUNDS", "InstrumentationScope", "Resource", "Where", "logs_request", "metrics_request",
]  # fmt: skip

DURATION = "http.server.request.duration"
SESSIONS = "aegis.websocket.sessions"
#: Seconds; the semantic conventions' advice for http.server.request.duration.
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
#: No http.route for these: the conventions ask for it only when there is one.
_NO_ROUTE = frozenset({UNMATCHED_ROUTE, OVERFLOW_ROUTE})
_SEVERITY = {
    "debug": SeverityNumber.SEVERITY_NUMBER_DEBUG,
    "info": SeverityNumber.SEVERITY_NUMBER_INFO,
    "warning": SeverityNumber.SEVERITY_NUMBER_WARN,
    "error": SeverityNumber.SEVERITY_NUMBER_ERROR,
    "critical": SeverityNumber.SEVERITY_NUMBER_FATAL,
}
_INT64 = range(-(2**63), 2**63)

#: count, sum, min, max, bucket counts (seconds), and bucket -> the last
#: traced record that fell in it (the point's exemplars; None until one)
_Cell = list[Any]
#: Who sends: the resource (service) and the instrumentation scope (aegis_mw).
Where = tuple[Resource, InstrumentationScope]


def resource(pairs: Iterable[tuple[str, str]]) -> Resource:
    return Resource(attributes=[_text(key, value) for key, value in pairs])


def metrics_request(
    requests: Sequence[RequestRecord],
    sessions: Sequence[Session],
    where: Where,
    start_ns: int,
    end_ns: int,
) -> ExportMetricsServiceRequest:
    """The requests' histogram and the sessions' count over ``[start_ns, end_ns]``."""
    metrics = []
    if requests:
        points = [
            _histogram_point(key, cell, start_ns, end_ns)
            for key, cell in request_cells(requests).items()
        ]
        metrics.append(
            Metric(
                name=DURATION,
                description="Duration of HTTP server requests.",
                unit="s",
                histogram=Histogram(data_points=points, aggregation_temporality=_DELTA),
            )
        )
    if sessions:
        counts: dict[tuple[str, int | None, bool], int] = {}
        for session in sessions:
            key = (session.route, session.close_code, session.accepted)
            counts[key] = counts.get(key, 0) + 1
        numbers = [
            NumberDataPoint(
                attributes=_session_attributes(*key),
                start_time_unix_nano=start_ns,
                time_unix_nano=end_ns,
                as_int=count,
            )
            for key, count in counts.items()
        ]
        metrics.append(
            Metric(
                name=SESSIONS,
                description="WebSocket sessions ended, by route and close code.",
                unit="{session}",
                sum=Sum(data_points=numbers, aggregation_temporality=_DELTA, is_monotonic=True),
            )
        )
    resource_, scope = where
    scoped = ScopeMetrics(scope=scope, metrics=metrics)
    return ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=resource_, scope_metrics=[scoped])]
    )


def request_cells(requests: Sequence[RequestRecord]) -> dict[tuple[str, str, int, str], _Cell]:
    """Requests summed per (method, route, status, error type): the one pass
    over every record, so it is kept to a dict lookup and a bisect each."""
    cells: dict[tuple[str, str, int, str], _Cell] = {}
    get = cells.get
    bounds = BOUNDS
    for record in requests:
        seconds = record.duration_ms / 1000.0
        error = record.error
        # "TypeName: message" (core.labels.describe_error): the type only,
        # which is bounded by the app's code; the message is not.
        key = (
            record.method,
            record.route,
            record.status,
            error.partition(": ")[0] if error else "",
        )
        cell = get(key)
        if cell is None:
            cell = cells[key] = [0, 0.0, seconds, seconds, [0] * (len(bounds) + 1), None]
        cell[0] += 1
        cell[1] += seconds
        if seconds < cell[2]:
            cell[2] = seconds
        elif seconds > cell[3]:
            cell[3] = seconds
        # Upper bounds are inclusive in OTLP: bucket i holds (bounds[i-1], bounds[i]].
        index = bisect_left(bounds, seconds)
        cell[4][index] += 1
        if record.trace_id is not None:
            ended = _exemplar_time(record, seconds)
            if ended is not None:
                if cell[5] is None:  # an exemplar of its bucket: the batch's last
                    cell[5] = {}
                cell[5][index] = (record, ended)
    return cells


def _histogram_point(
    key: tuple[str, str, int, str], cell: _Cell, start_ns: int, end_ns: int
) -> HistogramDataPoint:
    method, route, status, error_type = key
    attributes = [_text("http.request.method", method)]
    if route not in _NO_ROUTE:
        attributes.append(_text("http.route", route))
    attributes.append(KeyValue(key="http.response.status_code", value=AnyValue(int_value=status)))
    if error_type or status >= 500:
        # The conventions' error.type: the exception's type, else the 5xx status.
        attributes.append(_text("error.type", error_type[:128] or str(status)))
    count, total, low, high, buckets, traced = cell
    if not (0.0 <= low <= high < math.inf and math.isfinite(total)):
        # Only a batch built by hand holds one (the pipeline counts such
        # times as invalid); refused, so the flusher sets that record aside.
        raise ValueError(f"a duration that is negative or not finite ({method} {route})")
    return HistogramDataPoint(
        attributes=attributes,
        start_time_unix_nano=start_ns,
        time_unix_nano=end_ns,
        count=count,
        sum=total,
        bucket_counts=buckets,
        explicit_bounds=BOUNDS,
        min=low,
        max=high,
        exemplars=[] if traced is None else _exemplars(traced.values()),
    )


def _exemplar_time(record: RequestRecord, seconds: float) -> int | None:
    """When a traced request ended, in OTLP's nanoseconds; None when it cannot
    be an exemplar: the pipeline's records hold ids the finalizer checked and
    plausible times, a batch built by hand may not (and an exemplar is never
    worth a refused batch)."""
    span_id = record.span_id
    if not is_trace_id(record.trace_id) or not (span_id is None or is_span_id(span_id)):
        return None
    ended = (record.timestamp + seconds) * 1e9
    if not (math.isfinite(ended) and 0 <= ended < 2**64):
        return None
    return min(int(ended), 2**64 - 1)


def _exemplars(marks: Iterable[tuple[RequestRecord, int]]) -> list[Exemplar]:
    """Traced requests (with when they ended) as their data point's exemplars."""
    return [
        Exemplar(
            time_unix_nano=ended,
            as_double=record.duration_ms / 1000.0,
            trace_id=bytes.fromhex(str(record.trace_id)),
            span_id=b"" if record.span_id is None else bytes.fromhex(record.span_id),
        )
        for record, ended in marks
    ]


def _session_attributes(route: str, close_code: int | None, accepted: bool) -> list[KeyValue]:
    attributes = [] if route in _NO_ROUTE else [_text("http.route", route)]
    if close_code is not None:
        code = AnyValue(int_value=close_code)
        attributes.append(KeyValue(key="aegis.websocket.close_code", value=code))
    attributes.append(KeyValue(key="aegis.websocket.accepted", value=AnyValue(bool_value=accepted)))
    return attributes


def logs_request(events: Sequence[EventRecord], where: Where) -> ExportLogsServiceRequest:
    """The app's events as log records; ``log.record.uid`` carries the event's
    id, so a backend can tell an event sent twice from two events."""
    records = [_log_record(event) for event in events]
    resource_, scope = where
    scoped = ScopeLogs(scope=scope, log_records=records)
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource_, scope_logs=[scoped])]
    )


def _log_record(event: EventRecord) -> LogRecord:
    attributes = [
        _text("log.record.uid", event.event_id),
        _text("aegis.event.type", event.type),
        _text("aegis.event.source", event.source),
    ]
    if event.tags:
        tags = ArrayValue(values=[AnyValue(string_value=tag) for tag in event.tags])
        attributes.append(KeyValue(key="aegis.event.tags", value=AnyValue(array_value=tags)))
    if event.payload is not None:
        attributes.append(KeyValue(key="aegis.event.payload", value=any_value(event.payload)))
    nanos = round(event.timestamp * 1e9)
    return LogRecord(
        time_unix_nano=nanos,
        observed_time_unix_nano=nanos,
        severity_number=_SEVERITY.get(event.level, SeverityNumber.SEVERITY_NUMBER_UNSPECIFIED),
        severity_text=event.level.upper(),
        body=AnyValue(string_value=event.message),
        attributes=attributes,
        trace_id=bytes.fromhex(event.trace_id) if event.trace_id else b"",
    )


def any_value(value: Any) -> AnyValue:
    """A JSON value (an event's payload) as OTLP's AnyValue."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        # Past int64 OTLP has no integer: the digits, not a rounded double.
        return AnyValue(int_value=value) if value in _INT64 else AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, dict):
        pairs = [KeyValue(key=str(k), value=any_value(v)) for k, v in value.items()]
        return AnyValue(kvlist_value=KeyValueList(values=pairs))
    if isinstance(value, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def _text(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def partial_rejection(body: bytes, signal: str) -> tuple[int, str]:
    """What a 200 answer says the collector dropped: how many data points
    (log records) and why; ``(0, "")`` when it took everything."""
    answer = ExportMetricsServiceResponse() if signal == "metrics" else ExportLogsServiceResponse()
    try:
        answer.ParseFromString(body)
    except Exception:  # an answer we cannot read still means "stored"
        return 0, ""
    partial = answer.partial_success
    rejected = getattr(partial, "rejected_data_points", 0) or getattr(
        partial, "rejected_log_records", 0
    )
    return int(rejected), partial.error_message

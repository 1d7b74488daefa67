"""The JSON metrics API: ``GET {api_path}/<endpoint>`` answering ``{"data": ...}``.

Every parameter is checked here before any query runs: unknown or repeated
parameters, text that is not valid UTF-8, holds a control character or runs
over 1024 characters, bad ranges, malformed times and out-of-range numbers
answer 400 with ``{"error": {"code", "message", "parameter"}}``, whatever the
sink (PostgreSQL cannot even compare a NUL; no store sees such text). A storage failure
answers 503 ``storage_unavailable`` (with ``Retry-After`` when the store
cannot be reached: its breaker then answers the next reads at once, see
:mod:`aegis_mw.history.breaker`), never 500. Handlers block (they read
storage), so the mounted routes call :meth:`MetricsAPI.respond` in a worker
thread of their own (see :mod:`.reads`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ..alerts.api_channels import public_settings
from ..alerts.channels import channel_kind
from ..core.custom_metrics import MetricSnapshot
from ..core.history import RequestQuery, is_trace_id
from ..core.labels import STANDARD_METHODS
from ..core.record import OTHER_METHOD, RequestRecord
from ..core.rollup import RollupRow
from ..history.breaker import EventsUnavailable, StoreUnavailable
from ..history.custom_series import MAX_SERIES, by_labels, custom_history, find_metric
from ..history.queries import SORTS, HistoryQueries
from ..history.ranges import QueryError, horizons, parse_time
from ..realtime.sections import realtime_api
from .audit import AUDIT_PARAMETERS, audit_answer
from .custom_metrics import custom_metrics_answer
from .events import EVENT_PARAMETERS, event_query, events_answer
from .incidents import INCIDENT_PARAMETERS, incidents_answer
from .openapi import openapi_document
from .response import Response
from .stats import stats_answer
from .store_down import refuse_while_down

if TYPE_CHECKING:
    from ..aegis import Aegis
    from ..alerts.service import AlertService

logger = logging.getLogger("aegis_mw.api")

_RANGE = ("range", "from", "to")
#: endpoint -> the query parameters it takes
PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "overview": _RANGE,
    "realtime": (),
    "request-rate": _RANGE,
    "latency": _RANGE,
    "status-distribution": _RANGE,
    "top-endpoints": (*_RANGE, "limit", "sort"),
    "requests": (
        "route",
        "method",
        "status",
        "min_duration_ms",
        "trace_id",
        "since",
        "until",
        "limit",
        "offset",
    ),
    "alerts": (),
    "alert-rules": (),
    "alert-channels": (),
    "alert-history": ("limit", "before"),
    "silences": (),
    "custom-metrics": ("name",),
    "custom-metric-history": ("name", "by", "limit", *_RANGE),
    "events": EVENT_PARAMETERS,
    **INCIDENT_PARAMETERS,
    "stats": (),
    "audit": AUDIT_PARAMETERS,
    "openapi.json": (),
}
MAX_OFFSET = 1_000_000
MAX_TEXT = 1024
#: Times the answers can be written in: a range's start is moved back by up to
#: a week and its end forward, and ISO 8601 stops at year 9999 (before 1970,
#: some platforms cannot format a time at all), so out-of-range times are bad
#: input here rather than a failure while formatting the answer.
EARLIEST = 0.0
LATEST = 253_370_764_800.0  # 9999-01-01T00:00:00Z
_METHODS = frozenset(STANDARD_METHODS) | {OTHER_METHOD}
#: C0 and C1 controls and DEL; and surrogates, which is how bytes that are not
#: UTF-8 come out of the "surrogateescape" decoding below.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad(parameter: str, message: str) -> QueryError:
    return QueryError(parameter, message)


def _unknown(name: str, allowed: tuple[str, ...]) -> QueryError:
    if _SURROGATE.search(name):
        return _bad("query", "the query string is not valid UTF-8")
    shown = name if len(name) <= 64 else name[:64] + "..."
    known = ", ".join(allowed) or "none"
    return QueryError(
        name[:64], f"unknown parameter {shown!r}; known: {known}", "unknown_parameter"
    )


def check_text(name: str, value: str) -> None:
    """Text no parameter may hold, whichever it is and whatever the sink."""
    if _SURROGATE.search(value):
        raise _bad(name, f"{name} is not valid UTF-8")
    if _CONTROL.search(value):
        raise _bad(name, f"{name} may not contain control characters")
    if len(value) > MAX_TEXT:
        raise _bad(name, f"{name} may be at most {MAX_TEXT} characters")


def _integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _bad(name, f"{name} must be an integer from {low} to {high}")
    return value


def _time(params: Mapping[str, str], name: str) -> float | None:
    text = params.get(name)
    if text is None:
        return None
    moment = parse_time(name, text)
    if not EARLIEST <= moment < LATEST:
        raise _bad(name, f"{name} must be from 1970-01-01 to before 9999-01-01")
    return moment


def query_parameters(query_string: bytes, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters by name; QueryError for one not ``allowed``, one
    given twice, or too many (the writes' endpoints take theirs so too)."""
    try:
        # UTF-8, not latin-1: a server may pass raw (unescaped) UTF-8
        # bytes, which latin-1 would silently turn into mojibake. Bytes that
        # are not UTF-8 (raw or %-escaped) become lone surrogates here, so
        # the parameter holding them can be named.
        pairs = parse_qsl(
            query_string.decode("utf-8", "surrogateescape"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="surrogateescape",
            max_num_fields=len(allowed) + 1,
        )
    except ValueError:
        raise _bad("query", "too many query parameters") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise _unknown(name, allowed)
        if name in params:
            raise _bad(name, f"{name} is given more than once")
        params[name] = value
    return params


def request_query(params: dict[str, str]) -> RequestQuery:
    """A RequestQuery from text parameters (the API's and the CLI's)."""
    status_from = status_to = None
    status = params.get("status")
    if status is not None:
        text = status.strip().lower()
        if len(text) == 3 and text.endswith("xx") and text[0] in "12345":
            status_from = int(text[0]) * 100
            status_to = status_from + 100
        # isascii: str.isdigit() is true for "²" and other digits int() refuses.
        elif len(text) == 3 and text.isascii() and text.isdigit() and 100 <= int(text) <= 599:
            status_from, status_to = int(text), int(text) + 1
        else:
            raise _bad("status", "status must be a code from 100 to 599 or a class such as 5xx")
    method = params.get("method")
    if method is not None and method.upper() not in _METHODS:
        raise _bad("method", f"method must be one of {', '.join(sorted(_METHODS))}")
    route = params.get("route")
    minimum = None
    if "min_duration_ms" in params:
        try:
            minimum = float(params["min_duration_ms"])
        except ValueError:
            minimum = -1.0
        if not (math.isfinite(minimum) and minimum >= 0):
            raise _bad("min_duration_ms", "min_duration_ms must be a number of milliseconds >= 0")
    trace_id = params.get("trace_id")
    if trace_id is not None and not is_trace_id(trace_id):
        # Refused rather than matched against nothing: an uppercase id (a
        # tool's spelling) would find no row, which reads as "no such trace".
        raise _bad("trace_id", "trace_id must be 32 lowercase hex digits, not all zeros")
    since, until = _time(params, "since"), _time(params, "until")
    if since is not None and until is not None and since >= until:
        raise _bad("since", "since must be before until")
    return RequestQuery(
        route=route,
        method=None if method is None else method.upper(),
        status_from=status_from,
        status_to=status_to,
        min_duration_ms=minimum,
        since=since,
        until=until,
        limit=_integer(params, "limit", 100, 1, 1000),
        offset=_integer(params, "offset", 0, 0, MAX_OFFSET),
        trace_id=trace_id,
    )


def answer(queries: HistoryQueries, endpoint: str, params: dict[str, str]) -> Any:
    """One storage endpoint's data for text parameters (the API's and the CLI's)."""
    for name, value in params.items():
        check_text(name, value)
    if endpoint == "requests":
        return queries.requests(request_query(params))
    window = (params.get("range"), _time(params, "from"), _time(params, "to"))
    if endpoint == "top-endpoints":
        sort = params.get("sort", "count")
        if sort not in SORTS:
            raise _bad("sort", f"sort must be one of {', '.join(SORTS)}")
        return queries.top_endpoints(
            *window, limit=_integer(params, "limit", 10, 1, 1000), sort=sort
        )
    series: dict[str, Callable[..., Any]] = {
        "overview": queries.overview,
        "request-rate": queries.request_rate,
        "latency": queries.latency,
        "status-distribution": queries.status_distribution,
    }
    return series[endpoint](*window)


def custom_history_answer(
    queries: HistoryQueries,
    source: Any,
    params: dict[str, str],
    declared: Sequence[MetricSnapshot] = (),
) -> dict[str, Any] | None:
    """``custom-metric-history``'s data (the API's and the CLI's): one metric
    over the range from ``source``'s stored history; None when there is no
    source (after the parameters were checked: bad input is a 400 either way)."""
    for parameter, value in params.items():
        check_text(parameter, value)
    name = params.get("name")
    if not name:
        raise _bad("name", "name is required: the custom metric to chart")
    limit = _integer(params, "limit", 10, 1, MAX_SERIES)
    window = queries.window(params.get("range"), _time(params, "from"), _time(params, "to"))
    stored = [] if source is None else source.read_custom_metrics()
    metric = find_metric(name, stored, declared)
    by = by_labels(metric, params.get("by"))
    if source is None:
        return None
    return custom_history(source.read_custom_rollups, window, metric, by, limit)


def alerts_answer(alerts: AlertService | None) -> dict[str, Any]:
    """The alerts shown now and every rule with its health (no I/O: what
    the alert service last read)."""
    if alerts is None:
        return {
            "evaluating": False, "interval": None, "alerts": [], "nodata": [], "rules": [],
            "channels": [],
        }  # fmt: skip
    return {
        "evaluating": alerts.token is not None,
        "interval": alerts.interval,
        "alerts": alerts.view(),
        "nodata": [{"name": i.rule, "group": dict(i.group)} for i in alerts.nodata],
        "rules": rules_answer(alerts),
        "channels": alerts.channel_view,
    }


def rules_answer(alerts: AlertService | None) -> list[dict[str, Any]]:
    """Every rule evaluated, with its health (the evaluating process's view),
    where it comes from (``settings``, ``api`` or ``builtin``: only the API's
    can be changed through the API) and, for those, who wrote it and when."""
    if alerts is None:
        return []
    health = alerts.health if alerts.token is not None else {}
    out = []
    for rule in alerts.rules:
        row = alerts.api_rule_rows.get(rule.name)
        out.append({
            **rule.to_mapping(), "health": health.get(rule.name),
            "source": alerts.rule_source(rule.name),
            "updated_at": None if row is None else row.updated_at,
            "updated_by": None if row is None else row.updated_by,
        })  # fmt: skip
    return out


def channels_answer(alerts: AlertService | None) -> dict[str, Any]:
    """Every channel notices go to, where it comes from (``settings`` or
    ``api``: only the API's can be changed through it) and, for the API's,
    their settings without secrets, who wrote them and when; the stored
    channels left out, and why."""
    if alerts is None:
        return {"channels": [], "left_out": []}
    out = []
    for name, channel in sorted(alerts.channels.items()):
        row = alerts.api_channel_rows.get(name)
        out.append({
            "name": name, "type": channel_kind(channel), "source": alerts.channel_source(name),
            "severities": list(channel.severities),
            "settings": None if row is None else public_settings(row.data),
            "updated_at": None if row is None else row.updated_at,
            "updated_by": None if row is None else row.updated_by,
        })  # fmt: skip
    return {"channels": out, "left_out": left_out_answer(alerts.channels_left_out)}


def left_out_answer(left_out: Mapping[str, str]) -> list[dict[str, str]]:
    """Stored rules or channels not used, and why, by name."""
    return [{"name": name, "reason": why} for name, why in sorted(left_out.items())]


def silences_answer(alerts: AlertService | None) -> dict[str, Any]:
    """The silences not yet ended, the mute windows, the inhibit rules, and
    the latest changes to silences (who, what, when): theirs only, the rest
    of the audit is the admin's (``GET {api_path}/audit``)."""
    if alerts is None:
        return {"silences": [], "mute_windows": [], "inhibit_rules": [], "audit": []}
    now = alerts.wall()
    return {
        "silences": [
            {**silence.to_mapping(), "state": silence.state(now)}
            for silence in alerts.store.silences(now)
        ],
        "mute_windows": [window.to_mapping() for window in alerts.mute_windows],
        "inhibit_rules": [rule.to_mapping() for rule in alerts.inhibit_rules],
        "audit": alerts.store.audit(100, "silence"),
    }


def _history_unavailable() -> Response:
    return Response.error(
        503,
        "history_unavailable",
        "no configured sink keeps history; use sqlite:///..., postgresql://... or memory://",
    )


class _NoHistory:
    """A source with nothing stored: bad input is checked against it, so it is
    a 400 whether or not a sink keeps history (a 503 would say "retry")."""

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        return []

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        return []

    def prune(self, raw_before: float, rollups_before: Mapping[int, float], limit: int) -> int:
        return 0


class MetricsAPI:
    """Answers the API's endpoints for one pipeline."""

    def __init__(self, aegis: Aegis) -> None:
        self._aegis = aegis
        settings = aegis.settings
        source = aegis.reads.history
        self.queries = (
            None
            if source is None
            else HistoryQueries(
                source,
                clock=aegis.clock.wall,
                horizons=horizons(settings.retention_raw, settings.retention_rollups),
            )
        )
        self._no_history = HistoryQueries(
            _NoHistory(),
            clock=aegis.clock.wall,
            horizons=horizons(settings.retention_raw, settings.retention_rollups),
        )
        self._openapi = openapi_document(settings.api_path)
        # A read that fails for another reason than an unreachable store (a
        # fault of the read) is logged with its traceback once per burst: the
        # first failure after a success. A race costs at most one more line.
        self._failing = False

    def _events(self, params: dict[str, str]) -> Response:
        for name, value in params.items():
            check_text(name, value)
        query = event_query(params, _integer, _time)
        source = self._aegis.reads.history
        if source is None:
            return _history_unavailable()
        events = source.read_events(query)
        self._failing = False
        return Response.json(200, {"data": events_answer(events, query)})

    def _custom_history(self, params: dict[str, str]) -> Response:
        source = self._aegis.reads.history
        data = custom_history_answer(
            self.queries or self._no_history, source, params, self._aegis.custom_metrics.read()
        )
        if data is None:
            return _history_unavailable()
        self._failing = False
        return Response.json(200, {"data": data})

    def respond(self, endpoint: str, query_string: bytes) -> Response:
        """The answer to ``GET {api_path}/{endpoint}?{query_string}``."""
        try:
            params = query_parameters(query_string, PARAMETERS[endpoint])
            if endpoint == "openapi.json":
                return Response.json(200, self._openapi)
            if endpoint == "realtime":
                return Response.json(200, {"data": self._realtime()})
            if endpoint == "custom-metrics":
                name = params.get("name")
                if name is not None:
                    check_text("name", name)
                custom = self._aegis.metrics.read_custom()
                return Response.json(200, {"data": custom_metrics_answer(custom, name)})
            if endpoint == "custom-metric-history":
                return self._custom_history(params)
            if endpoint == "alerts":
                return Response.json(200, {"data": alerts_answer(self._aegis.alerts)})
            if endpoint == "silences":
                if self._aegis.alerts is not None:
                    refuse_while_down(self._aegis)
                return Response.json(200, {"data": silences_answer(self._aegis.alerts)})
            if endpoint == "alert-rules":
                alerts = self._aegis.alerts
                left_out = left_out_answer({} if alerts is None else alerts.left_out)
                data = {"rules": rules_answer(alerts), "left_out": left_out}
                return Response.json(200, {"data": data})
            if endpoint == "alert-channels":
                return Response.json(200, {"data": channels_answer(self._aegis.alerts)})
            if endpoint == "alert-history":
                for name, value in params.items():
                    check_text(name, value)
                limit = _integer(params, "limit", 100, 1, 1000)
                before = _integer(params, "before", 2**62, 1, 2**62)
                alerts = self._aegis.alerts
                if alerts is not None:
                    refuse_while_down(self._aegis)
                rows = [] if alerts is None else alerts.store.history(limit, before)
                notices = [] if alerts is None else alerts.store.notices(limit)
                if notices and alerts is not None:
                    tried = alerts.store.attempts([notice["id"] for notice in notices])
                    notices = [{**n, "attempt_log": tried.get(n["id"], [])} for n in notices]
                return Response.json(200, {"data": {"transitions": rows, "notices": notices}})
            if endpoint == "events":
                return self._events(params)
            if endpoint == "audit":
                for name, value in params.items():
                    check_text(name, value)
                limit = _integer(params, "limit", 100, 1, 1000)
                refuse_while_down(self._aegis)
                log = audit_answer(self._aegis, limit)
                return Response.json(200, {"data": log})
            if endpoint == "stats":
                figures = stats_answer(self._aegis, self.queries)
                self._failing = False
                return Response.json(200, {"data": figures})
            if endpoint in INCIDENT_PARAMETERS:
                for name, value in params.items():
                    check_text(name, value)
                incidents = self._aegis.incidents
                if incidents is None:
                    return _history_unavailable()
                answered = incidents_answer(
                    incidents, endpoint, params, _integer, lambda: refuse_while_down(self._aegis)
                )
                self._failing = False
                return answered
            queries = self.queries
            if queries is None:
                answer(self._no_history, endpoint, params)
                return _history_unavailable()
            data = answer(queries, endpoint, params)
            self._failing = False
            return Response.json(200, {"data": data})
        except QueryError as error:
            return Response.json(
                400,
                {
                    "error": {
                        "code": error.code,
                        "message": error.message,
                        "parameter": error.parameter,
                    }
                },
            )
        except EventsUnavailable:
            return Response.error(
                404, "events_unavailable",
                "the sink that keeps history keeps no events (memory, sqlite and postgresql do)",
            )  # fmt: skip
        except StoreUnavailable as error:
            # Logged by the store's breaker, once per outage.
            return Response.error(
                503,
                "storage_unavailable",
                "the history store cannot be read now; retry after the Retry-After seconds",
                retry_after=str(error.retry_after),
            )
        except Exception:
            if not self._failing:
                self._failing = True
                logger.exception(
                    "aegis metrics API: reading %s failed (not logged again until a read works)",
                    endpoint,
                )
            return Response.error(503, "storage_unavailable", "the history could not be read")

    def _realtime(self) -> dict[str, Any]:
        return realtime_api(self._aegis)

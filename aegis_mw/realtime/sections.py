"""The data of each ``/ws/metrics`` section, read from memory.

Everything here reads the in-memory aggregates (no storage), under their
lock: call it from a worker thread, never from an event loop. Series have
the keys of the history queries' points, so a page draws live and stored
ranges with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..core import histogram
from ..core.aggregates import STATUS_CLASSES, RealtimeSnapshot, SecondFigures
from ..core.custom_metrics import MetricSnapshot
from ..core.labeled import COUNT, DURATION_SUM, LabeledTotals
from ..core.record import isoformat
from ..endpoints.custom_metrics import custom_metrics_answer

if TYPE_CHECKING:
    from ..aegis import Aegis

#: Rows in ``topEndpoints``.
TOP_ENDPOINTS = 10


def realtime_json(snapshot: RealtimeSnapshot) -> dict[str, Any]:
    """The overview, as ``GET /api/metrics/realtime`` answers it too."""
    return {
        key: round(value, 3) if isinstance(value, float) else value
        for key, value in asdict(snapshot).items()
    }


def overview(aegis: Aegis) -> dict[str, Any]:
    """The ``overview`` section: :func:`realtime_json` and the open connections
    to this stream. The app's WebSocket figures leave the stream out (it is not
    app traffic); the page's tile adds both, since its own stream is one."""
    hub = aegis.hub
    # len() of the hub's dict from this thread: one atomic read, maybe a tick old.
    streams = 0 if hub is None else len(hub.subscriptions)
    return {**realtime_json(aegis.realtime()), "stream_connections_active": streams}


#: ``GET {api_path}/realtime`` key -> the stream's section of the same data.
API_SERIES = {
    "request_rate": "requestRate",
    "latency_percentiles": "latencyPercentiles",
    "status_distribution": "statusDistribution",
    "top_endpoints": "topEndpoints",
}


def realtime_api(aegis: Aegis) -> dict[str, Any]:
    """``GET {api_path}/realtime``: the overview's fields, and the last
    minute's series and the live top endpoints, as the stream's frames carry
    them, so a page without the stream draws the same charts by polling."""
    sections = build(aegis, ("overview", *API_SERIES.values()))
    return {
        **sections["overview"],
        **{key: sections[section] for key, section in API_SERIES.items()},
    }


def build(aegis: Aegis, wanted: Collection[str]) -> dict[str, Any]:
    """The ``wanted`` sections, each read once."""
    out: dict[str, Any] = {}
    if "overview" in wanted:
        out["overview"] = overview(aegis)
    if any(section in wanted for section in _POINTS):
        clock = aegis.clock
        now = clock.monotonic()
        offset = clock.wall() - now
        seconds = aegis.aggregates.seconds(int(now), aegis.recorder.pending)
        out.update(_series(seconds, offset, wanted))
    if "topEndpoints" in wanted:
        out["topEndpoints"] = top_endpoints(*aegis.aggregates.live_labeled(aegis.recorder.pending))
    if "alerts" in wanted:
        alerts = aegis.alerts
        out["alerts"] = [] if alerts is None else alerts.view()
    if "customMetrics" in wanted:
        out["customMetrics"] = custom_metrics_section(aegis.metrics.read_custom())
    return out


#: Label sets a ``customMetrics`` section carries at most, over all metrics: a
#: frame goes to every subscriber each second; the JSON API has them all.
MAX_STREAM_SERIES = 500


def custom_metrics_section(metrics: Sequence[MetricSnapshot]) -> dict[str, Any]:
    """The app's own metrics as ``GET {api_path}/custom-metrics`` answers them,
    cut to :data:`MAX_STREAM_SERIES` label sets shared fairly: each metric keeps
    an equal part (more where another needs less), its first label sets by
    value. Each metric says its ``total`` over every label set (a histogram's
    observations) and how many it left out."""
    answer = custom_metrics_answer(metrics, None)
    shown = answer["metrics"]
    for metric in shown:
        series = metric["series"]
        key = "count" if metric["kind"] == "histogram" else "value"
        values = [point[key] for point in series]
        # A non-finite value is null: then so is the total, and a total of
        # finite values that overflows (JSON has no infinity).
        total = None if None in values else sum(values)
        metric["total"] = None if isinstance(total, float) and not math.isfinite(total) else total
    room = _shares([len(metric["series"]) for metric in shown], MAX_STREAM_SERIES)
    for metric, keep in zip(shown, room, strict=True):
        metric["series_left_out"] = len(metric["series"]) - keep
        metric["series"] = metric["series"][:keep]
    answer["series_left_out"] = sum(metric["series_left_out"] for metric in shown)
    return answer


def _shares(sizes: Sequence[int], budget: int) -> list[int]:
    """How many of each size fit ``budget``: equal parts, and what a small one
    leaves over shared out again among the larger ones."""
    given = [0] * len(sizes)
    while budget > 0:
        wanting = [index for index, size in enumerate(sizes) if given[index] < size]
        if not wanting:
            break
        part = max(budget // len(wanting), 1)
        for index in wanting:
            more = min(part, sizes[index] - given[index], budget)
            given[index] += more
            budget -= more
            if budget == 0:
                break
    return given


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


#: Section name -> the figures of one second, as a point of that series.
_POINTS: dict[str, Callable[[SecondFigures], dict[str, Any]]] = {
    "requestRate": lambda f: {
        "requests": f.requests, "errors": f.errors, "requests_per_second": float(f.requests),
    },
    "latencyPercentiles": lambda f: {
        "requests": f.requests, "avg": _ms(f.latency_avg_ms), "p50": _ms(f.latency_p50_ms),
        "p95": _ms(f.latency_p95_ms), "p99": _ms(f.latency_p99_ms),
    },
    "statusDistribution": lambda f: dict(zip(STATUS_CLASSES, f.status, strict=True)),
}  # fmt: skip


def _series(seconds: list[SecondFigures], offset: float, wanted: Collection[str]) -> dict[str, Any]:
    stamps = [isoformat(figures.second + offset) for figures in seconds]
    return {
        name: {
            "step_seconds": 1,
            "points": [
                {"timestamp": stamp, **point(figures)}
                for stamp, figures in zip(stamps, seconds, strict=True)
            ],
        }
        for name, point in _POINTS.items()
        if name in wanted
    }


def top_endpoints(
    labeled: LabeledTotals,
    more_latency: Mapping[tuple[str, str], Sequence[int]] | None = None,
    limit: int = TOP_ENDPOINTS,
) -> list[dict[str, Any]]:
    """Routes by requests since start, with errors (5xx), average and p95
    latency; the p95 from the fine buckets of the realtime ring (about 2%
    wide), never from the exposition's coarse ones, with ``more_latency``
    (the other workers') added for the rows shown."""
    errors: dict[tuple[str, str], int] = {}
    for (method, route, status), count in labeled.requests.items():
        if status[:1] == "5":
            errors[method, route] = errors.get((method, route), 0) + count
    rows: list[dict[str, Any]] = []
    for (method, route), series in labeled.series.items():
        requests = int(series[COUNT])
        if not requests:
            continue
        failed = errors.get((method, route), 0)
        rows.append(
            {
                "route": route,
                "method": method,
                "requests": requests,
                "errors": failed,
                "error_rate": round(failed / requests, 6),
                "latency_ms": {"avg": round(series[DURATION_SUM] * 1000 / requests, 3)},
            }
        )
    rows.sort(key=lambda row: (-row["requests"], row["route"], row["method"]))
    top = rows[:limit]
    for row in top:  # only the rows shown: a percentile reads the whole histogram
        key = (row["method"], row["route"])
        counts: Sequence[int] | None = labeled.latency.get(key)
        more = (more_latency or {}).get(key)
        if more is not None:
            counts = more if counts is None else [a + b for a, b in zip(counts, more, strict=True)]
        [p95] = histogram.percentiles(counts, (0.95,)) if counts is not None else [None]
        row["latency_ms"]["p95"] = _ms(p95)
    return top

"""Our metric families, built at scrape time from the pipeline's aggregates.

One schema for every framework (the names below, under a configurable
namespace, ``aegis`` by default). Label texts repeat from scrape to scrape, so
they are escaped once and cached; the caches are bounded by the route cap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.custom_metrics import OVERFLOW, MetricSnapshot
from ..core.labeled import (
    BUCKETS_BASE,
    COUNT,
    DURATION_SUM,
    REQUEST_BYTES,
    RESPONSE_BYTES,
    TTFB_COUNT,
    TTFB_SUM,
    LabeledTotals,
)
from ..core.stats import PipelineStats, SinkStats
from .system import SystemReading
from .text import Family, label_text, number


@dataclass(frozen=True)
class MetricsReading:
    """What one scrape reads from the pipeline, taken as one moment."""

    labeled: LabeledTotals
    in_flight: int
    websockets_active: int
    stats: PipelineStats
    health: Mapping[str, int]  # check name -> 1 healthy, 0 not (absent: none registered)
    system: SystemReading | None = None  # with metrics_system on
    #: (version, request path: "compiled" or "python"; "" before a middleware attached)
    build: tuple[str, str] = ("", "")
    #: (state, severity) -> alerts in it; None without alert rules. Every
    #: process shows the app's alerts (see aegis_mw.alerts.service), so the
    #: answering process's count is the app's, as health is.
    alerts: Mapping[tuple[str, str], int] | None = None
    #: Each alert channel's health and outbox rows (AlertService.channel_view),
    #: the app's as alerts are; empty without channels.
    alert_channels: Sequence[Mapping[str, Any]] = ()
    #: The app's own metrics (``aegis.counter(...)`` and the like), by name.
    custom: Sequence[MetricSnapshot] = ()


class FamilyBuilder:
    """Turns a :class:`MetricsReading` into families named ``<namespace>_...``.

    ``constant_labels`` (service, environment, ...) are added to every series.
    """

    def __init__(
        self, namespace: str = "aegis", constant_labels: Mapping[str, str] | None = None
    ) -> None:
        self.namespace = namespace
        self._constant = label_text(sorted(dict(constant_labels or {}).items()))
        self._texts: dict[tuple[str, ...], str] = {}
        #: (bounds, their le="..." texts), replaced as one tuple: scrapes run in
        #: worker threads at once, and must never see new bounds with old texts.
        self._le_cache: tuple[tuple[float, ...], list[str]] = ((), ['le="+Inf"'])

    def _labels(self, *pairs: tuple[str, str]) -> str:
        """Label text for these pairs (after the constant labels), cached."""
        key = tuple(value for _, value in pairs) + tuple(name for name, _ in pairs)
        text = self._texts.get(key)
        if text is None:
            own = label_text(pairs)
            text = f"{self._constant},{own}" if self._constant and own else self._constant or own
            if len(self._texts) < 100_000:
                self._texts[key] = text
        return text

    def _le_texts(self, bounds: Sequence[float]) -> list[str]:
        cached_bounds, texts = self._le_cache
        if tuple(bounds) != cached_bounds:
            texts = [f'le="{number(float(bound))}"' for bound in bounds] + ['le="+Inf"']
            self._le_cache = (tuple(bounds), texts)
        return texts

    def build(self, reading: MetricsReading) -> list[Family]:
        ns = self.namespace
        labels = self._labels
        labeled = reading.labeled
        families = [
            self._requests(labeled),
            *self._latency(labeled),
            Family(
                f"{ns}_http_requests_in_progress",
                "gauge",
                "HTTP requests being served now.",
                [("", labels(), reading.in_flight)],
            ),
            *self._sizes(labeled),
            Family(
                f"{ns}_websocket_connections_active",
                "gauge",
                "WebSocket connections open now.",
                [("", labels(), reading.websockets_active)],
            ),
            Family(
                f"{ns}_websocket_sessions",
                "counter",
                "WebSocket sessions ended, by route and close code.",
                [
                    ("_total", labels(("route", route), ("close_code", code)), count)
                    for (route, code), count in sorted(labeled.sessions.items())
                ],
            ),
            *self._pipeline(reading.stats, labeled.route_overflow),
        ]
        version, hot_path = reading.build
        if version:
            families.append(
                Family(
                    f"{ns}_build_info",
                    "gauge",
                    "aegis_mw's version and the request path it runs (compiled or python).",
                    [("", labels(("version", version), ("hot_path", hot_path or "none")), 1)],
                )
            )
        if reading.system is not None:
            families += self._system(reading.system)
        if reading.health:
            families.append(
                Family(
                    f"{ns}_health_check_status",
                    "gauge",
                    "1 when the check's last run passed or warned, 0 when it failed or timed out.",
                    [
                        ("", labels(("check", name)), value)
                        for name, value in sorted(reading.health.items())
                    ],
                )
            )
        if reading.alerts is not None:
            families.append(
                Family(
                    f"{ns}_alerts",
                    "gauge",
                    "Alerts pending or firing, by state and severity (the app's, from its store).",
                    [
                        ("", labels(("state", state), ("severity", severity)), count)
                        for (state, severity), count in sorted(reading.alerts.items())
                    ],
                )
            )
        if reading.alert_channels:
            families += self._alert_channels(reading.alert_channels)
        if reading.custom:
            families += self._custom(reading.custom)
        return families

    def _custom(self, metrics: Sequence[MetricSnapshot]) -> list[Family]:
        """The app's own metrics under their own names, then how many label sets
        each folded into its ``<overflow>`` series."""
        families = []
        labels = self._labels
        for metric in metrics:
            family = Family(metric.name, metric.kind, metric.help)
            names = metric.labels
            samples = family.samples
            if metric.kind == "histogram":
                le = [f'le="{number(bound)}"' for bound in metric.bounds] + ['le="+Inf"']
                for key, values in sorted(metric.series.items()):
                    base = labels(*zip(names, key, strict=True))
                    prefix = f"{base}," if base else ""
                    running = 0
                    for index, text in enumerate(le):
                        running += values[index]
                        samples.append(("_bucket", prefix + text, running))
                    samples.append(("_count", base, running))
                    samples.append(("_sum", base, values[-1]))
            else:
                suffix = "_total" if metric.kind == "counter" else ""
                samples += [
                    (suffix, labels(*zip(names, key, strict=True)), value)
                    for key, value in sorted(metric.series.items())
                ]
            families.append(family)
        families.append(
            Family(
                f"{self.namespace}_custom_metric_overflow",
                "counter",
                f"Label sets of a custom metric past its max_series, recorded as {OVERFLOW}.",
                [
                    ("_total", labels(("metric", metric.name)), metric.overflowed)
                    for metric in metrics
                ],
            )
        )
        return families

    def _alert_channels(self, channels: Sequence[Mapping[str, Any]]) -> list[Family]:
        ns, labels = self.namespace, self._labels
        return [
            Family(
                f"{ns}_alert_channel_up",
                "gauge",
                "1 while the alert channel is enabled, 0 while a failure every notice "
                "would meet keeps it disabled.",
                [("", labels(("channel", c["name"])), int(c["state"] == "ok")) for c in channels],
            ),
            Family(
                f"{ns}_alert_notices",
                "gauge",
                "Alert notices kept in the outbox, by channel and state (pending is the "
                "backlog; delivered and failed ones are kept as long as the history).",
                [
                    ("", labels(("channel", c["name"]), ("state", state)), count)
                    for c in channels
                    for state, count in c["notices"].items()
                ],
            ),
            Family(
                f"{ns}_alert_oldest_pending_notice_timestamp_seconds",
                "gauge",
                "When the oldest notice not yet delivered to the channel was raised "
                "(absent when none waits).",
                [
                    ("", labels(("channel", c["name"])), c["oldest_pending_at"])
                    for c in channels
                    if c["oldest_pending_at"] is not None
                ],
            ),
        ]

    def _system(self, system: SystemReading) -> list[Family]:
        ns, labels = self.namespace, self._labels
        return [
            Family(
                f"{ns}_system_cpu_usage_ratio",
                "gauge",
                "Share of the machine's CPU time in use since the previous scrape.",
                [("", labels(), system.cpu_ratio)],
            ),
            Family(
                f"{ns}_system_memory_bytes",
                "gauge",
                "The machine's memory: total, available and used.",
                [("", labels(("state", state)), value) for state, value in system.memory.items()],
            ),
            Family(
                f"{ns}_system_disk_bytes",
                "gauge",
                "The file system holding metrics_disk_path: total, used and free.",
                [
                    ("", labels(("path", system.disk_path), ("state", state)), value)
                    for state, value in system.disk.items()
                ],
            ),
        ]

    def _requests(self, labeled: LabeledTotals) -> Family:
        labels = self._labels
        keys = sorted(labeled.requests.items())
        family = Family(
            f"{self.namespace}_http_requests",
            "counter",
            "HTTP requests answered, by method, route template and status.",
            [
                ("_total", labels(("method", m), ("route", r), ("status", s)), count)
                for (m, r, s), count in keys
            ],
        )
        if labeled.exemplars.series:
            # A request counted once: the counter's exemplar has the value 1.
            by_key = {
                (method, route, str(status)): (exemplar[0], exemplar[1], 1.0, exemplar[3])
                for (method, route), (_, statuses) in labeled.exemplars.series.items()
                for status, exemplar in statuses.items()
            }
            family.exemplars = {
                index: by_key[key] for index, (key, _) in enumerate(keys) if key in by_key
            }
        return family

    def _latency(self, labeled: LabeledTotals) -> tuple[Family, Family]:
        le = self._le_texts(labeled.bounds)
        width = len(le)
        duration = Family(
            f"{self.namespace}_http_request_duration_seconds",
            "histogram",
            "Time to the last byte of the response, by method and route template.",
        )
        ttfb = Family(
            f"{self.namespace}_http_time_to_first_byte_seconds",
            "histogram",
            "Time to the start of the response, by method and route template.",
        )
        exemplars = labeled.exemplars.series
        for (method, route), values in sorted(labeled.series.items()):
            base = self._labels(("method", method), ("route", route))
            prefix = f"{base}," if base else ""
            entry = exemplars.get((method, route))
            marks = None if entry is None else entry[0]
            if marks is not None and len(marks) == width:
                first = len(duration.samples)
                duration.exemplars.update(
                    (first + offset, exemplar)
                    for offset, exemplar in enumerate(marks)
                    if exemplar is not None
                )
            for family, start, count, total in (
                (duration, BUCKETS_BASE, values[COUNT], values[DURATION_SUM]),
                (ttfb, BUCKETS_BASE + width, values[TTFB_COUNT], values[TTFB_SUM]),
            ):
                samples = family.samples
                running = 0
                for offset in range(width):
                    running += int(values[start + offset])
                    samples.append(("_bucket", prefix + le[offset], running))
                samples.append(("_count", base, int(count)))
                samples.append(("_sum", base, float(total)))
        return duration, ttfb

    def _sizes(self, labeled: LabeledTotals) -> tuple[Family, Family]:
        request = Family(
            f"{self.namespace}_http_request_size_bytes",
            "summary",
            "Request body bytes received, by method and route template.",
        )
        response = Family(
            f"{self.namespace}_http_response_size_bytes",
            "summary",
            "Response body bytes sent, by method and route template.",
        )
        for (method, route), values in sorted(labeled.series.items()):
            base = self._labels(("method", method), ("route", route))
            count = int(values[COUNT])
            request.samples += [("_count", base, count), ("_sum", base, values[REQUEST_BYTES])]
            response.samples += [("_count", base, count), ("_sum", base, values[RESPONSE_BYTES])]
        return request, response

    def _pipeline(self, stats: PipelineStats, route_overflow: int) -> list[Family]:
        ns = self.namespace
        labels = self._labels
        dropped = dict(stats.dropped)
        for sink in stats.sinks:
            for reason, count in sink.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
        for reason, count in stats.events_dropped.items():  # before any sink
            dropped[reason] = dropped.get(reason, 0) + count
        buffers: list[tuple[str, str, float | int]] = [
            ("", labels(("buffer", "inbox")), stats.buffered),
            ("", labels(("buffer", "events")), stats.events_buffered),
        ]
        buffers += [
            ("", labels(("buffer", f"backlog:{sink.name}")), sink.backlog) for sink in stats.sinks
        ]
        return [
            Family(
                f"{ns}_records_dropped",
                "counter",
                "Records lost before reaching a sink, by reason (see docs/metrics.md).",
                [
                    ("_total", labels(("reason", reason)), count)
                    for reason, count in sorted(dropped.items())
                ],
            ),
            Family(
                f"{ns}_events_accepted",
                "counter",
                "The app's events taken in (Aegis.event, POST to the API's events), to be stored.",
                [("_total", labels(), stats.events_accepted)],
            ),
            Family(
                f"{ns}_buffer_records",
                "gauge",
                "Records waiting in memory: the inbox, and each sink's backlog.",
                buffers,
            ),
            Family(
                f"{ns}_sink_flush_seconds",
                "summary",
                "Time spent in successful sink writes, by sink.",
                [
                    sample
                    for sink in stats.sinks
                    for sample in (
                        ("_count", labels(("sink", sink.name)), sink.flushes),
                        ("_sum", labels(("sink", sink.name)), sink.flush_seconds_total),
                    )
                ],
            ),
            Family(
                f"{ns}_sink_errors",
                "counter",
                "Failed or abandoned sink writes, by sink.",
                [("_total", labels(("sink", sink.name)), sink.errors) for sink in stats.sinks],
            ),
            Family(
                f"{ns}_sink_rejected",
                "counter",
                "What a sink's store took but dropped itself, by sink and kind (an OTLP "
                "collector's partial successes).",
                [
                    ("_total", labels(("sink", sink.name), ("kind", kind)), count)
                    for sink in stats.sinks
                    for kind, count in sorted(sink.rejected.items())
                ],
            ),
            Family(
                f"{ns}_retention_deleted_rows",
                "counter",
                "Expired rows deleted by retention, by sink.",
                [("_total", labels(("sink", sink.name)), sink.pruned) for sink in stats.sinks],
            ),
            Family(
                f"{ns}_retention_errors",
                "counter",
                "Retention runs that failed, by sink.",
                [
                    ("_total", labels(("sink", sink.name)), sink.prune_failures)
                    for sink in stats.sinks
                ],
            ),
            Family(
                f"{ns}_retention_lease_held",
                "gauge",
                "Processes holding the sink's retention lease (one of the app's prunes at a time).",
                [("", labels(("sink", sink.name)), sink.prune_lease) for sink in stats.sinks],
            ),
            *_spool_families(ns, labels, [sink for sink in stats.sinks if sink.spool_limit_bytes]),
            Family(
                f"{ns}_route_overflow",
                "counter",
                "Requests whose route was folded into <overflow> by max_routes.",
                [("_total", labels(), route_overflow)],
            ),
        ]


def _spool_families(ns: str, labels: Callable[..., Any], sinks: list[SinkStats]) -> list[Family]:
    """The spools of remote sinks (none without ``spool_dir``)."""
    if not sinks:
        return []
    gauges = (
        ("records", "Records in the spool on disk, waiting for the sink's store.", "spool_records"),
        ("bytes", "Bytes the sink's batches take in the spool.", "spool_bytes"),
        ("limit_bytes", "The spool's bound (spool_max_bytes), for all sinks together.",
         "spool_limit_bytes"),
        ("oldest_age_seconds", "Age of the oldest record in the spool (0 when empty).",
         "spool_oldest_age_seconds"),
    )  # fmt: skip
    counters = (
        ("spooled_records", "Records put in the spool while the store was unreachable.", "spooled"),
        ("replayed_records", "Records replayed from the spool into the store.", "replayed"),
        ("lost_records", "Spooled records the store refused on replay, or unreadable.",
         "spool_lost"),
    )  # fmt: skip
    return [
        Family(
            f"{ns}_spool_{name}",
            kind,
            help_text,
            [(suffix, labels(("sink", sink.name)), getattr(sink, field)) for sink in sinks],
        )
        for kind, suffix, entries in (("gauge", "", gauges), ("counter", "_total", counters))
        for name, help_text, field in entries
    ]

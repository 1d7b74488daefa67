"""The one object that owns a pipeline: settings, recorder, flusher, aggregates.

No module-level state: two apps in one process (or one test building an app
twice) get two independent ``Aegis`` objects.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence, Sized
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from . import speedups
from .access.app_token import monitoring_access
from .alerts.figures import SETTLE_SECONDS
from .alerts.reports import process_report
from .alerts.service import AlertService
from .alerts.store import MemoryAlertStore
from .core.aggregates import RealtimeAggregates, RealtimeSnapshot
from .core.audit_log import AuditLog
from .core.client_address import ClientAddressResolver, parse_networks
from .core.clock import Clock, SystemClock
from .core.custom_history import CustomSampler
from .core.custom_metrics import DEFAULT_MAX_SERIES, Counter, CustomMetrics, Gauge, Histogram
from .core.deque_take import DequeTake
from .core.errors import ConfigError
from .core.events import APP_SOURCE, build_sized_event
from .core.finalize import Finalizer
from .core.flusher import Flusher
from .core.history import HistorySource
from .core.labels import RouteCap
from .core.live_link import STOP_SECONDS as LINK_STOP_SECONDS
from .core.paths import PathFilter
from .core.record import EventRecord
from .core.recorder import Recorder
from .core.retention import Retention, lease_seconds
from .core.server_spans import tracing_hooks
from .core.settings import AegisSettings
from .core.sink import RecordSink
from .core.sink_runner import SinkRunner
from .core.spooling import Spooled
from .core.stats import PipelineStats, SinkStats
from .core.trace_context import TraceSource, otel_source
from .core.tracer_provider import TracerSetup
from .endpoints.reads import MonitoringReads
from .exposition.service import MetricsService
from .health.service import HealthService
from .history.queries import HistoryQueries
from .history.ranges import horizons
from .incidents.service import Incidents
from .sinks import build_sinks
from .sinks.spool_file import attach_spools

logger = logging.getLogger("aegis_mw")

NO_LIFESPAN_WARNING = (
    "aegis_mw: this ASGI app serves requests but its server sent no lifespan startup. "
    "Records are written every flush_interval (%ss) and by an atexit hook, but a process "
    "killed by a signal's default action (uvicorn --lifespan off re-raises SIGTERM) "
    "loses what was recorded since the last flush. Run the server with lifespan "
    "enabled, or call aegis.shutdown() before the process stops."
)


def _warn_if_unflushed(inbox: Sized, backlogs: Sequence[Sized]) -> None:
    left = len(inbox) + sum(len(backlog) for backlog in backlogs)
    if left:
        logger.warning(
            "aegis_mw: a pipeline was discarded without shutdown(); %d records were never written",
            left,
        )


def _backlog_of(recorder: Recorder, backlog: Sized, bound: int) -> Callable[[], float]:
    """The fuller of the inbox and one sink's backlog, as a share of its bound."""
    return lambda: max(recorder.fill(), len(backlog) / bound)


def _registry_has(ref: weakref.ReferenceType[Aegis], family: str) -> bool:
    aegis = ref()  # weakly: a declaration must not keep a discarded Aegis alive
    return aegis is not None and aegis.metrics.registry_has(family)


def _shutdown_if_alive(ref: weakref.ReferenceType[Aegis]) -> None:
    aegis = ref()
    if aegis is not None:
        aegis.shutdown()


def _reinit_if_alive(ref: weakref.ReferenceType[Aegis]) -> None:
    aegis = ref()
    if aegis is not None:
        aegis._after_fork_in_child()


def multiprocess_directory(
    settings: AegisSettings, environ: Mapping[str, str] | None
) -> Path | None:
    """Where worker processes share their metrics: ``metrics_multiprocess_dir``,
    else ``PROMETHEUS_MULTIPROC_DIR`` (which prometheus-client reads too), else
    None. A directory that is missing or not writable fails at start."""
    source = settings.sources.get("metrics_multiprocess_dir", "")
    text = settings.metrics_multiprocess_dir
    if not text:
        environment = os.environ if environ is None else environ
        text, source = environment.get("PROMETHEUS_MULTIPROC_DIR", ""), "PROMETHEUS_MULTIPROC_DIR"
    if not text:
        return None
    path = Path(text)
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            "metrics_multiprocess_dir", text,
            "an existing directory this process can write (create it before the workers start)",
            source,
        )  # fmt: skip
    if sys.platform == "win32":
        raise ConfigError("metrics_multiprocess_dir", text, "not supported on Windows", source)
    return path


def _sink_drops(runner: SinkRunner) -> dict[str, int]:
    """The runner's drops, with the rollups its spool's store refused on replay."""
    dropped = dict(runner.dropped)
    spool = runner.spool
    if spool is not None:
        for reason, count in (
            ("rollups_rejected", spool.rollups_rejected),
            ("custom_rollups_rejected", spool.custom_rollups_rejected),
        ):
            if count:
                dropped[reason] = dropped.get(reason, 0) + count
    return dropped


def _store_rejections(sink: object) -> dict[str, int]:
    """What a sink's store took but dropped itself, by kind: a sink that can
    tell (the OTLP sink) has a ``rejected_by_store`` mapping; others none."""
    counts = getattr(sink, "rejected_by_store", None)
    if not isinstance(counts, Mapping):
        return {}
    # A third-party sink's odd values are left out: the workers' files must
    # stay readable for each other.
    return {
        kind: count
        for kind, count in counts.items()
        if type(kind) is str and type(count) is int and count >= 0
    }


def _spool_figures(spool: Spooled | None, wall: float) -> dict[str, Any]:
    """A sink's spool, as SinkStats fields (none without a spool)."""
    if spool is None:
        return {}
    view = spool.view
    return {
        "spool_limit_bytes": spool.store.limit_bytes,
        "spool_records": view.records,
        "spool_bytes": view.bytes,
        "spool_oldest_age_seconds": max(0.0, wall - view.oldest) if view.batches else 0.0,
        "spooled": spool.spooled,
        "replayed": spool.replayed,
        "spool_lost": spool.rejected + spool.unreadable,
        "spool_error": spool.last_error if spool.failures else "",
    }


#: The most a shutdown waits for the alert threads (an evaluation, a send).
ALERTS_STOP_SECONDS = 5.0


def _reporter(aegis: Aegis) -> Callable[[], dict[str, Any]]:
    """This process's report of its health for the alert service (held
    weakly: the service must not keep a dropped pipeline alive)."""
    ref = weakref.ref(aegis)

    def report() -> dict[str, Any]:
        owner = ref()
        if owner is None:
            return {}
        return process_report(owner.health.runner.last_results, owner.stats())

    return report


def _alert_service(
    settings: AegisSettings,
    sinks: Sequence[RecordSink],
    clock: Clock,
    reporter: Callable[[], dict[str, Any]] | None = None,
) -> AlertService | None:
    """The alert service over the first sink that keeps history, in the
    store beside its data (in the process for the memory sink). It runs
    when the settings give rules or channels (rules may then come through
    the API too), or when ``alerts_enabled`` asks for it."""
    if not (settings.alert_rules or settings.alert_channels or settings.alerts_enabled):
        return None
    source = next((sink for sink in sinks if isinstance(sink, HistorySource)), None)
    if source is None:
        option, shown = (
            ("alert_rules", f"{len(settings.alert_rules)} rules") if settings.alert_rules
            else ("alert_channels", ", ".join(sorted(settings.alert_channels)))
            if settings.alert_channels else ("alerts_enabled", True)
        )  # fmt: skip
        raise ConfigError(
            option, shown,
            "alerts need a sink that keeps history: memory://, sqlite:///... or postgresql://...",
            settings.sources.get(option, ""),
        )  # fmt: skip
    kept = horizons(settings.retention_raw, settings.retention_rollups)
    for rule in settings.alert_rules:
        if rule.window > kept[rule.resolution]:
            raise ConfigError(
                "alert_rules", f"rule {rule.name!r} window {rule.window:g} s",
                f"a window of at most the {kept[rule.resolution]:g} s its "
                f"{rule.resolution} s rollups are kept (retention_raw)",
                settings.sources.get("alert_rules", ""),
            )  # fmt: skip
    windows = {window.name for window in settings.alert_mute_windows}
    for name, channel in settings.alert_channels.items():
        unknown = sorted(set(channel.mute_windows) - windows)
        if unknown:
            raise ConfigError(
                f"alert_channels.{name}.mute_windows", unknown[0],
                f"a name of alert_mute_windows ({', '.join(sorted(windows)) or 'none defined'})",
                settings.sources.get("alert_channels", ""),
            )  # fmt: skip
    make_store = getattr(source, "alert_store", None)
    store = make_store() if callable(make_store) else MemoryAlertStore()
    return AlertService(
        settings.alert_rules, store, source, interval=settings.alert_interval, wall=clock.wall,
        retention=settings.retention_rollups,
        # Items wait up to a flush interval before they are folded at all.
        settle=SETTLE_SECONDS + settings.flush_interval,
        channels=settings.alert_channels, mute_windows=settings.alert_mute_windows,
        inhibit_rules=settings.alert_inhibit_rules, horizons=kept, reporter=reporter,
        readiness_inhibits=settings.alert_readiness_inhibits,
        api_networks=parse_networks(settings.alert_api_networks),
    )  # fmt: skip


def _incidents(aegis: Aegis) -> Incidents | None:
    """The incidents' service over the history sink's store, reading its
    timelines through the same guarded source as the API."""
    source = aegis.reads.history
    sink = next((sink for sink in aegis.sinks if isinstance(sink, HistorySource)), None)
    make_store = getattr(sink, "incident_store", None)
    if source is None or not callable(make_store):
        return None
    settings = aegis.settings
    alert_store = aegis.alerts.store if aegis.alerts is not None else None
    return Incidents(
        make_store(),
        aegis.clock.wall,
        events=source.read_events,
        queries=HistoryQueries(
            source,
            clock=aegis.clock.wall,
            horizons=horizons(settings.retention_raw, settings.retention_rollups),
        ),
        alerts=lambda: alert_store,
    )


def _audit_log(aegis: Aegis) -> AuditLog | None:
    """The audit of the API's writes in the history sink's store (None
    without one: posted events are then audited to the ``aegis_mw.audit``
    logger only)."""
    sink = next((sink for sink in aegis.sinks if isinstance(sink, HistorySource)), None)
    make_log = getattr(sink, "audit_log", None)
    return make_log() if callable(make_log) else None


class Aegis:
    """Records requests into buffers flushed to sinks by a background thread.

    Options are those of :class:`AegisSettings`; keyword arguments win over
    ``AEGIS_*`` environment variables, which win over the ``AEGIS_CONFIG``
    file. The flusher starts at once; call :meth:`shutdown` (the ASGI
    lifespan and an ``atexit`` hook do it for you) to write what is buffered.

    Example::

        aegis = Aegis(sink="sqlite:///aegis.db", sample_rate=0.5)
        app.add_middleware(AegisMiddleware, aegis=aegis)
        ...
        aegis.force_flush()
    """

    def __init__(
        self,
        settings: AegisSettings | None = None,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = AegisSettings.load(environ, **options)
        elif options:
            raise TypeError("pass either settings=AegisSettings(...) or options, not both")
        self.settings = settings
        #: The app's tracing hooks, with ``tracing`` on (request, response):
        #: imported here, where a bad name stops the app at once (some
        #: frameworks build the middleware only at their first call).
        self.tracing_hooks = tracing_hooks(settings) if settings.tracing else (None, None)
        self.clock: Clock = clock if clock is not None else SystemClock()
        named_sinks = build_sinks(settings.sink, settings.sources.get("sink", ""))
        self.sinks: list[RecordSink] = [sink for _, sink in named_sinks]
        #: The rules of the routes we serve, the app token's filled in for the
        #: monitoring data that has none of its own (``access/app_token.py``);
        #: ``access_token`` is that token, None when no route needs it.
        self.access_token, self.access_rules = monitoring_access(settings, self.sinks)
        routes = RouteCap(settings.max_routes)  # records and metric labels share it
        # The compiled finalizer and fold take the clean compiled items; they
        # are used where the compiled request paths would be.
        compiled = speedups.load() if settings.speedups else None
        self.aggregates = RealtimeAggregates(routes, settings.metrics_buckets, compiled)
        #: The app's own metrics: see :meth:`counter`, :meth:`gauge`, :meth:`histogram`.
        self.custom_metrics = CustomMetrics(
            f"{settings.metrics_namespace}_",
            settings.metrics_buckets,
            constant_labels=dict(settings.metrics_labels),
            taken=functools.partial(_registry_has, weakref.ref(self)),
        )
        for sink in self.sinks:  # SQLite binds rows, PostgreSQL formats COPY rows with it
            use_compiled = getattr(sink, "use_compiled", None)
            if use_compiled is not None:
                use_compiled(compiled)
        #: The realtime stream's hub (``aegis_mw.realtime.hub.Hub``), made by
        #: the first ``/ws/metrics`` connection: an app nobody watches has none.
        self.hub: Any = None
        take = DequeTake.chosen(compiled)
        self.recorder = Recorder(
            aggregates=self.aggregates,
            max_buffer=settings.max_buffer,
            batch_size=settings.batch_size,
            take=take,
        )
        self.client_addresses = ClientAddressResolver(
            settings.trusted_proxies, settings.forwarded_header
        )
        self._trace_source: TraceSource | None = None
        self._tracer_setup: TracerSetup | None = None
        self.finalizer = Finalizer(
            clock=self.clock,
            resolver=self.client_addresses,
            routes=routes,
            max_path_length=settings.max_path_length,
            max_error_length=settings.max_error_length,
            sample_rate=settings.sample_rate,
            slow_threshold_ms=settings.slow_threshold_ms,
            compiled=compiled,
            # A sink that counts the records it is given counts every request.
            sample_later=any(getattr(sink, "counts_records", False) for sink in self.sinks),
        )
        runners = [
            SinkRunner(
                sink,
                name,
                max_backlog=settings.max_buffer,
                backoff_initial=settings.retry_backoff_initial,
                backoff_max=settings.retry_backoff_max,
                niceness=settings.background_niceness,
                take=take,
            )
            for name, sink in named_sinks
        ]
        attach_spools(runners, settings)
        for runner in runners:  # the SQLite sink paces its inserts by them, a spool its parts
            backlog = _backlog_of(self.recorder, runner.backlog, runner.max_backlog)
            for paced in (runner.sink, runner.spool):
                pace_by = getattr(paced, "pace_by", None)
                if pace_by is not None:
                    pace_by(backlog)
        self.flusher = Flusher(
            self.recorder,
            self.finalizer,
            runners,
            flush_interval=settings.flush_interval,
            batch_size=settings.batch_size,
            sink_timeout=settings.sink_timeout,
            shutdown_timeout=settings.shutdown_timeout,
            on_first_records=self._warn_without_lifespan,
            niceness=settings.background_niceness,
        )
        #: Whether any sink stores the app's events (see :meth:`event`).
        self.stores_events = any(runner.keeps_events for runner in runners)
        self.flusher.cycle.custom = CustomSampler(self.custom_metrics)
        if settings.metrics_exemplars and settings.trace_context:
            self.flusher.cycle.exemplars = self.aggregates.note_exemplars
        self.flusher.cycle.retention = Retention(
            settings.retention_raw,
            horizons(settings.retention_raw, settings.retention_rollups),
            lease_seconds=lease_seconds(settings.flush_interval, settings.sink_timeout),
            watch_hosts=not settings.live_transport,
        )
        #: None until an ASGI middleware attaches; then whether a lifespan
        #: startup arrived (the flusher warns once if traffic comes without one).
        self.asgi_lifespan: bool | None = None
        #: The request path the attached middleware runs ("compiled" or
        #: "python"), on /metrics as aegis_build_info; "" until one attaches.
        self.hot_path = ""
        #: Paths never recorded: the user's ``exclude_paths`` plus routes
        #: that integrations mount (see :meth:`exclude`).
        self.excluded_paths = PathFilter(settings.exclude_paths)
        #: The threads our routes read in, apart from the app's, and the
        #: breaker that answers history reads at once while the store is down.
        self.reads = MonitoringReads(settings, self.sinks, self.clock.monotonic)
        #: ``/metrics``: our families, the app's registry, a Collector for others.
        self.metrics = MetricsService(self, multiprocess_directory(settings, environ))
        #: Health checks and the liveness/readiness answers.
        self.health = HealthService(self)
        #: The alert rules' evaluation (None without rules): see aegis_mw.alerts.
        self.alerts: AlertService | None = _alert_service(
            settings, self.sinks, self.clock, _reporter(self)
        )
        #: Incidents and their timelines (None without a sink that keeps history).
        self.incidents: Incidents | None = _incidents(self)
        #: The audit of events posted to the API (see aegis_mw.core.audit_log).
        self.audit_log: AuditLog | None = _audit_log(self)
        if settings.alert_incidents and self.alerts is not None:
            if self.incidents is None:  # never: alerts need a sink that keeps history
                raise ConfigError("alert_incidents", True, "needs a sink that keeps history")
            self.alerts.on_firing = self.incidents.open_for_alert
        ref = weakref.ref(self)
        # Weak references: neither hook may keep a discarded Aegis alive.
        self._atexit_hook = functools.partial(_shutdown_if_alive, ref)
        atexit.register(self._atexit_hook)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_reinit_if_alive, ref))
        # Dropped without shutdown (an app built per test, say): its threads end
        # on their own (they hold it weakly); say if records went with it.
        runners = self.flusher.runners
        # The deques, not the runners: the finalizer must not keep the pipeline alive.
        backlogs: list[Sized] = [runner.backlog for runner in runners]
        backlogs += [runner.isolation.held for runner in runners]
        backlogs.append(self.recorder.events)
        weakref.finalize(self, _warn_if_unflushed, self.recorder.inbox, backlogs).atexit = False
        self.flusher.start()
        if self.metrics.link is not None:
            self.metrics.link.start()
        if self.alerts is not None:
            self.alerts.start()

    def start(self) -> None:
        """Start recording again after :meth:`shutdown` (no-op while running).

        The ASGI middleware calls this on ``lifespan.startup``.
        """
        atexit.unregister(self._atexit_hook)
        atexit.register(self._atexit_hook)
        self.flusher.start()
        if self.metrics.link is not None:
            self.metrics.link.start()
        if self.alerts is not None:
            self.alerts.start()

    @property
    def trace_source(self) -> TraceSource | None:
        """Where the request paths read each request's trace context (None:
        trace_context is off). Looked up when a middleware first asks, so an
        installed OpenTelemetry is imported by the app's adapters, never by
        the pipeline alone."""
        if not self.settings.trace_context:
            return None
        if self._trace_source is None:
            self._trace_source = otel_source()
        return self._trace_source

    @property
    def tracer_setup(self) -> TracerSetup:
        """The tracer provider ``tracing`` makes its spans with (the app's
        global one, else one made from the ``OTEL_*`` variables), set up when
        a middleware with ``tracing`` on first asks."""
        if self._tracer_setup is None:
            self._tracer_setup = TracerSetup()
        return self._tracer_setup

    def attached(self, hot_path: str) -> None:
        """A middleware serves this pipeline: the first one says so at start
        (the request path, and the dashboard's link with its token)."""
        if not self.hot_path:
            self.hot_path = hot_path
            from .access.banner import announce

            announce(self, hot_path)

    def exclude(self, *paths: str) -> None:
        """Never record these paths or globs (integrations add their own routes)."""
        self.excluded_paths.add(*paths)

    def force_flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded so far; True when every sink stored it.

        Blocks the calling thread: from async code use
        ``await anyio.to_thread.run_sync(aegis.force_flush)``.
        """
        return self.flusher.force_flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop recording and flush within ``timeout`` (default ``shutdown_timeout``).

        Idempotent: later calls return at once. Records offered afterwards are
        counted as dropped with reason ``shutdown``.
        """
        started = time.monotonic()
        atexit.unregister(self._atexit_hook)
        self.health.stop()
        if self.alerts is not None:
            # Bounded: a receiver that hangs must not hold the flush back.
            limit = self.settings.shutdown_timeout if timeout is None else timeout
            self.alerts.stop(min(limit, ALERTS_STOP_SECONDS))
        flushed = self.flusher.shutdown(timeout)
        if self.metrics.link is not None:
            # After the final flush: its closing frame holds every count. Within
            # what is left of the budget (the thread ends by itself after it).
            limit = self.settings.shutdown_timeout if timeout is None else timeout
            left = limit - (time.monotonic() - started)
            self.metrics.link.stop(min(LINK_STOP_SECONDS, max(0.0, left)))
        if self._tracer_setup is not None:
            # The spans ended so far, exported within what is left of the budget.
            limit = self.settings.shutdown_timeout if timeout is None else timeout
            self._tracer_setup.flush(limit - (time.monotonic() - started))
        return flushed

    def counter(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> Counter:
        """A counter of the app's own, on ``/metrics`` beside ours (``name_total``).

        ``labels`` are its label names; record with ``.labels(...).inc(amount)``,
        or ``.inc(amount)`` without labels. Past ``max_series`` label sets, new
        ones are recorded as ``<overflow>``. Declaring the same metric again
        gives the same object; anything else of the name is a ValueError.
        """
        metric: Counter = self.custom_metrics.declare(
            "counter", name, help, labels, max_series=max_series
        )
        return metric

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_series: int = DEFAULT_MAX_SERIES,
        multiprocess_mode: str = "sum",
    ) -> Gauge:
        """A gauge of the app's own: ``.set(value)``, ``.inc()``, ``.dec()``.

        With several worker processes, ``multiprocess_mode`` says how their
        values make one: ``sum`` (default), ``max`` or ``min``, over the
        processes alive.
        """
        metric: Gauge = self.custom_metrics.declare(
            "gauge", name, help, labels, max_series=max_series, mode=multiprocess_mode
        )
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_series: int = DEFAULT_MAX_SERIES,
        buckets: Sequence[float] | None = None,
    ) -> Histogram:
        """A histogram of the app's own: ``.observe(value)``; its buckets are the
        request latency's (``metrics_buckets``) unless ``buckets`` are given."""
        metric: Histogram = self.custom_metrics.declare(
            "histogram", name, help, labels, max_series=max_series, buckets=buckets
        )
        return metric

    def event(
        self,
        message: str = "",
        *,
        type: str = "log",
        source: str = APP_SOURCE,
        level: str = "info",
        tags: Sequence[str] | None = None,
        payload: Mapping[str, Any] | None = None,
        timestamp: float | datetime | None = None,
        event_id: str | None = None,
        trace_id: str | None = None,
    ) -> bool:
        """Record an event of the app's own (a deploy, a job's outcome, a log
        line worth keeping); stored by every sink that stores events.

        ``type``: log, metric, trace or alert; ``level``: debug, info,
        warning, error or critical; ``tags``: short texts; ``payload``: a
        JSON object; ``timestamp``: seconds since the epoch or a datetime
        (now when not given); ``event_id``: the id that makes a second send
        of the same event stored once (a random one when not given). A bad
        field is an :class:`~aegis_mw.core.events.EventError` (a
        ``ValueError``) naming it. O(1) and no I/O: it is queued for the
        flusher; False when it could not be (the queue full, shutdown
        begun, or no sink stores events), each counted by reason.
        """
        record, size = build_sized_event(
            message, type=type, source=source, level=level, tags=tags, payload=payload,
            timestamp=timestamp, event_id=event_id, trace_id=trace_id, now=self.clock.wall,
            make_id=self.recorder.events.new_id,
        )  # fmt: skip
        return self.offer_event(record, size)

    def offer_event(self, record: EventRecord, size: int | None = None) -> bool:
        """Queue a checked event (see :meth:`event`); False, counted, when it cannot be."""
        events = self.recorder.events
        if not self.stores_events:
            events.refuse_unstored()
            return False
        return events.offer(record, size)

    def realtime(self) -> RealtimeSnapshot:
        """Rates, latency percentiles and totals from the in-memory ring.

        Takes the aggregates' lock (held by the flusher for at most one batch):
        call it from a worker thread, not from an event loop.
        """
        return self.aggregates.snapshot(int(self.clock.monotonic()), self.recorder.pending)

    def stats(self) -> PipelineStats:
        """Counters describing the pipeline itself (drops, backlogs, sink errors).

        Takes the aggregates' lock briefly: call it from a worker thread, not
        from an event loop.
        """
        recorder = self.recorder
        dropped = dict(recorder.dropped)
        inbox = recorder.inbox
        seen = self.aggregates.items_seen(inbox.__len__)
        retention = self.flusher.cycle.retention
        pruned, failed, held = (
            (retention.deleted_by_sink, retention.failures_by_sink, retention.held)
            if retention is not None
            else ({}, {}, {})
        )
        wall = self.clock.wall()
        return PipelineStats(
            # Items refused at the inbox (or lost to our own error) never get there.
            offered=seen + dropped["buffer_full"] + dropped["shutdown"] + dropped["internal_error"],
            buffered=len(inbox),
            dropped=dropped,
            sampled_out=self.finalizer.sampled_out,
            route_overflow=self.finalizer.routes.overflowed,
            flusher_alive=self.flusher.alive,
            flusher_errors=self.flusher.internal_errors,
            events_accepted=recorder.events.accepted,
            events_buffered=len(recorder.events),
            events_dropped=dict(recorder.events.dropped),
            sinks=tuple(
                SinkStats(
                    name=runner.name,
                    written=runner.written,
                    backlog=runner.queued(),
                    dropped=_sink_drops(runner),
                    errors=runner.errors,
                    timeouts=runner.timeouts,
                    consecutive_failures=runner.consecutive_failures,
                    last_error=runner.last_error,
                    last_flush_seconds=runner.last_flush_seconds,
                    flushes=runner.flushes,
                    flush_seconds_total=runner.flush_seconds_total,
                    pruned=pruned.get(runner.name, 0),
                    prune_failures=failed.get(runner.name, 0),
                    prune_lease=int(held.get(runner.name, False)),
                    **_spool_figures(runner.spool, wall),
                    rejected=_store_rejections(runner.sink),
                    counts_every_request=runner.counts_records and self.finalizer.sample_later,
                )
                for runner in self.flusher.runners
            ),
        )

    def _warn_without_lifespan(self) -> None:
        # Runs in the flusher thread, once: logging is I/O, never on the event loop.
        if self.asgi_lifespan is False:
            logger.warning(NO_LIFESPAN_WARNING, self.settings.flush_interval)

    def _after_fork_in_child(self) -> None:
        self.hub = None  # the parent's connections are not the child's
        self.reads.reset_after_fork()
        # The parent keeps and writes everything it buffered before the fork;
        # the child starts empty with its own threads and connections.
        self.recorder.reset_after_fork()
        self.aggregates.reset()
        self.custom_metrics.reset_after_fork()
        self.finalizer.reset_after_fork()
        self.flusher.reset_after_fork()
        if self.metrics.link is not None:
            self.metrics.link.reset_after_fork()
        if self.alerts is not None:
            self.alerts.reset_after_fork()
        stores = (self.incidents.store if self.incidents else None, self.audit_log)
        for store in stores:
            reset = getattr(store, "reset_after_fork", None)
            if reset is not None:
                reset()

    def __enter__(self) -> Aegis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

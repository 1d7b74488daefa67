"""The pipeline's Prometheus side: one reading per scrape, our families, the
app's registry next to them, and a prometheus-client Collector for others."""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.custom_merge import CustomMerge
from ..core.custom_merge import encode as encode_custom
from ..core.custom_metrics import MetricSnapshot
from ..core.errors import ConfigError
from ..core.live_link import LiveLink
from ..core.live_share import Peers
from ..endpoints.metrics import MetricsEndpoint
from .collector import AegisCollector
from .families import FamilyBuilder, MetricsReading

if TYPE_CHECKING:
    from ..aegis import Aegis
    from .live_files import LiveFiles
    from .multiprocess import SnapshotFiles
    from .system import SystemMetrics


#: Every sample name a family may have in either format, prometheus-client's included.
_SAMPLE_SUFFIXES = ("", "_total", "_count", "_sum", "_bucket", "_created", "_info", "_gcount",
                    "_gsum")  # fmt: skip


class MetricsService:
    """Owned by :class:`~aegis_mw.Aegis` as ``aegis.metrics``.

    Example, to scrape our series through a registry of the app's::

        registry.register(aegis.metrics.collector())
    """

    def __init__(self, aegis: Aegis, multiprocess_dir: Path | None = None) -> None:
        settings = aegis.settings
        self._aegis = aegis
        self._multiprocess_dir = multiprocess_dir
        #: Every process's snapshot, when several workers share the metrics.
        self.files: SnapshotFiles | None = None
        #: Every process's live figures, beside the snapshots.
        self.live_files: LiveFiles | None = None
        #: The live figures' exchange with the app's other hosts (``live_transport``).
        self.link: LiveLink | None = None
        if settings.live_transport:
            self.link = _live_link(self)
            # Live reads show every process of every host, this one's own added.
            aegis.aggregates.peers = self.link.board.peers
        if multiprocess_dir is not None:
            from .live_files import LiveFiles
            from .multiprocess import SnapshotFiles

            self.files = SnapshotFiles(multiprocess_dir, aegis.custom_metrics.admits)
            aegis.flusher.after_cycle = self.publish
            if self.link is None:
                # Live reads (stream, realtime API, dashboard) show every worker's traffic.
                self.live_files = LiveFiles(self.files, aegis.clock.monotonic)
                aegis.aggregates.peers = self._others
        self._published: tuple[Any, ...] = ()
        #: Custom metrics another process declared differently, warned about.
        self._custom_conflicts: set[str] = set()
        self._others_read: tuple[Any, Peers | None] = ((), None)
        self.system: SystemMetrics | None = None
        if settings.metrics_system:
            from .system import SystemMetrics

            self.system = SystemMetrics(settings.metrics_disk_path)
        self.builder = FamilyBuilder(settings.metrics_namespace, dict(settings.metrics_labels))
        #: Health check results for the ``health_check_status`` gauge (set by
        #: the health service once checks are registered).
        self.health_reading: Callable[[], Mapping[str, int]] = dict
        # The registry is looked up at the first scrape: building a pipeline
        # imports no prometheus-client.
        self.endpoint = MetricsEndpoint(self.read, self.builder, self._registry)

    def _registry(self) -> Any | None:
        choice = self._aegis.settings.metrics_registry
        if choice == "none":
            return None
        if choice == "default":
            if self._multiprocess_dir is not None:
                # prometheus-client's own multi-process mode: the app's metrics of
                # every worker, read from its files in the same directory.
                from prometheus_client import CollectorRegistry
                from prometheus_client.multiprocess import MultiProcessCollector

                registry = CollectorRegistry()
                MultiProcessCollector(registry, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
                return registry
            from prometheus_client import REGISTRY

            return REGISTRY
        return choice

    def registry_has(self, family: str) -> bool:
        """Whether the app's registry, shown after ours on /metrics, has a metric
        of that family name already. Only a registry in use now can tell (none
        is imported for the asking); prometheus-client's own multi-process
        collector reads its files only at a scrape."""
        if "prometheus_client" not in sys.modules or self._multiprocess_dir is not None:
            return False
        registry = self._registry()
        # Private, but it is how the registry itself refuses a duplicate name.
        names = getattr(registry, "_names_to_collectors", None) or {}
        return any(family + suffix in names for suffix in _SAMPLE_SUFFIXES)

    def read(self) -> MetricsReading:
        """What one scrape shows, taken now: this process's figures, plus the other
        workers' when several share the metrics. Takes the aggregates' lock (held
        by the flusher for at most one batch): call it off the event loop."""
        own = self.read_own()
        reading = own if self.files is None else self.files.merged(own)
        if self.system is not None:
            reading = replace(reading, system=self.system.read())
        return reading

    def read_custom(self) -> tuple[MetricSnapshot, ...]:
        """The app's own metrics for the live views (stream, JSON API): every
        process of every host with a ``live_transport``, as its other live
        figures are (the processes silent for an hour forgotten); else every
        worker's of this host when several share the metrics, as a scrape."""
        custom_metrics = self._aegis.custom_metrics
        own = custom_metrics.read()
        if self.link is not None:
            merge = CustomMerge(own, self._custom_conflicts, custom_metrics.admits)
            for data, live in self.link.board.peers().custom:
                merge.add(data, live=live)
            return merge.reading()
        return own if self.files is None else self.files.merged_custom(own)

    def publish(self) -> None:
        """Flusher thread, after each cycle: this process's snapshot for the others
        (skipped when nothing changed; gauges zero once the pipeline stopped)."""
        aegis = self._aegis
        assert self.files is not None
        aggregates = aegis.aggregates
        signature = (
            aggregates.drained, aggregates.in_flight_now(), aggregates.websockets_active,
            len(aegis.recorder.inbox), aegis.recorder.closed, os.getpid(),
            custom := aegis.custom_metrics.read(),
        )  # fmt: skip
        if signature == self._published:
            return
        reading = self.read_own(custom)
        self.files.publish(reading, live=not aegis.recorder.closed)
        if self.live_files is not None:
            self.live_files.publish(self.live_publication())
        self._published = signature

    def live_publication(self) -> dict[str, Any]:
        """This process's live figures as the others add them (see
        :mod:`aegis_mw.core.live_share`), read as one moment."""
        aegis = self._aegis
        live = aegis.aggregates.publication(int(aegis.clock.monotonic()), aegis.recorder.pending)
        if self.link is not None:  # the other hosts' live views add these up too
            live["custom"] = encode_custom(aegis.custom_metrics.read(), live=True)
        if aegis.recorder.closed:  # stopped: its in-flight and WebSockets no longer count
            live.update(in_flight=0, websockets_active=0)
        return live

    def _others(self) -> Peers:
        """The other workers' live figures, read again from their files only
        when one of them changed (or a worker's process ended): several
        sections of a frame ask, and between two cycles the files stay."""
        files = self.live_files
        assert files is not None
        state = files.state()
        seen, read = self._others_read
        if state != seen or read is None:
            read = files.read()
            self._others_read = (state, read)
        peers: Peers = read
        return peers

    def read_own(self, custom: tuple[MetricSnapshot, ...] | None = None) -> MetricsReading:
        """This process's figures only (``custom``: its custom metrics, when the
        caller has read them already)."""
        from .. import __version__

        aegis = self._aegis
        aggregates = aegis.aggregates
        return MetricsReading(
            labeled=aggregates.labeled_snapshot(aegis.recorder.pending),
            in_flight=aggregates.in_flight_now(),
            websockets_active=aggregates.websockets_active,
            stats=aegis.stats(),
            health=self.health_reading(),
            build=(__version__, aegis.hot_path),
            alerts=None if aegis.alerts is None else aegis.alerts.counts(),
            alert_channels=() if aegis.alerts is None else aegis.alerts.channel_view,
            custom=aegis.custom_metrics.read() if custom is None else custom,
        )

    def collector(self) -> AegisCollector:
        """Our families as a prometheus-client Collector (``registry.register(...)``)."""
        return AegisCollector(self.read, self.builder)


def _live_link(service: MetricsService) -> LiveLink:
    """The link to the app's other hosts that ``live_transport`` names. It
    holds the service weakly: a pipeline dropped without shutdown ends it."""
    from ..transports import transport_factory

    aegis = service._aegis
    settings = aegis.settings
    url = settings.live_transport
    if url == "sink":
        urls = [str(getattr(sink, "url", "")) for sink in aegis.sinks]
        found = [url for url in urls if url.startswith(("postgresql:", "postgres:"))]
        if not found:
            raise ConfigError(
                "live_transport", url, "'sink' needs a PostgreSQL sink (or give a URL)",
                settings.sources.get("live_transport", ""),
            )  # fmt: skip
        url = found[0]
    connect, kind = transport_factory(url, settings.live_group)
    publication = weakref.WeakMethod(service.live_publication)

    def source() -> dict[str, Any]:
        method = publication()
        if method is None:
            raise ReferenceError("the pipeline was dropped")
        return method()

    return LiveLink(connect, source, aegis.clock.monotonic, aegis.clock.wall, kind=kind)

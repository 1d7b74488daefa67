"""The pipeline's Prometheus side: one reading per scrape, our families, the
app's registry next to them, and a prometheus-client Collector for others."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..endpoints.metrics import MetricsEndpoint
from .collector import AegisCollector
from .families import FamilyBuilder, MetricsReading

if TYPE_CHECKING:
    from ..aegis import Aegis


class MetricsService:
    """Owned by :class:`~aegis_mw.Aegis` as ``aegis.metrics``.

    Example, to scrape our series through a registry of the app's::

        registry.register(aegis.metrics.collector())
    """

    def __init__(self, aegis: Aegis) -> None:
        settings = aegis.settings
        self._aegis = aegis
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
            from prometheus_client import REGISTRY

            return REGISTRY
        return choice

    def read(self) -> MetricsReading:
        """What one scrape shows, taken now. Takes the aggregates' lock (held by
        the flusher for at most one batch): call it off the event loop."""
        aegis = self._aegis
        aggregates = aegis.aggregates
        return MetricsReading(
            labeled=aggregates.labeled_snapshot(aegis.recorder.pending),
            in_flight=aggregates.in_flight_now(),
            websockets_active=aggregates.websockets_active,
            stats=aegis.stats(),
            health=self.health_reading(),
        )

    def collector(self) -> AegisCollector:
        """Our families as a prometheus-client Collector (``registry.register(...)``)."""
        return AegisCollector(self.read, self.builder)

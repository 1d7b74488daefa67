"""A point-in-time view of the pipeline's own health."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SinkStats:
    name: str
    written: int
    errors: int
    timeouts: int
    backlog: int
    consecutive_failures: int
    last_error: str
    last_flush_seconds: float


@dataclass(frozen=True)
class PipelineStats:
    """Counters for ``/metrics`` and health checks: nothing is lost silently.

    ``offered`` counts every record the request path produced; each one is
    either buffered, written, sampled out, or counted in ``dropped`` by reason
    (a record a sink could not keep counts once per such sink).
    """

    offered: int
    buffered: int
    dropped: dict[str, int]
    sampled_out: int
    route_overflow: int
    flusher_alive: bool
    flusher_errors: int
    sinks: tuple[SinkStats, ...]

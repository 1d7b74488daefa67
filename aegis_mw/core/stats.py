"""A point-in-time view of the pipeline's own health."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SinkStats:
    """One sink: what it stored, what it still owes, what it lost and why."""

    name: str
    written: int
    backlog: int
    dropped: dict[str, int]
    errors: int
    timeouts: int
    consecutive_failures: int
    last_error: str
    last_flush_seconds: float
    flushes: int
    flush_seconds_total: float
    #: Retention on this sink (see core.retention): rows deleted, prunes that
    #: failed, and the processes holding the sink's retention lease (this
    #: process: 0 or 1; summed over the live workers on a merged ``/metrics``).
    pruned: int = 0
    prune_failures: int = 0
    prune_lease: int = 0
    #: The spool of a remote sink (see core.spooling), with ``spool_dir``: its
    #: bound for all sinks together (0: no spool); what it holds for this sink
    #: now, and the age of the oldest record there; this process's records
    #: spooled, replayed, and lost on replay (refused by the store, or
    #: unreadable); the store's last error while it is unreachable.
    spool_limit_bytes: int = 0
    spool_records: int = 0
    spool_bytes: int = 0
    spool_oldest_age_seconds: float = 0.0
    spooled: int = 0
    replayed: int = 0
    spool_lost: int = 0
    spool_error: str = ""
    #: What the sink's store took but dropped itself, by kind (an OTLP
    #: collector's partial successes: ``data_points``, ``log_records``); empty
    #: for a store that never does (see ``rejected_by_store`` on a sink).
    rejected: dict[str, int] = field(default_factory=dict)
    #: Whether the sink is given every request's record (it counts them:
    #: ``counts_records``), not the sample ``sample_rate`` keeps: for it,
    #: ``sampled_out`` is no part of what it was offered.
    counts_every_request: bool = False


@dataclass(frozen=True)
class PipelineStats:
    """Counters for ``/metrics`` and health checks: nothing is lost silently.

    ``offered`` counts every item the request path produced. For each sink::

        offered == buffered + sum(dropped.values()) + sampled_out
                   + sink.written + sink.backlog + sum(sink.dropped.values())

    leaving ``sampled_out`` out for a sink that ``counts_every_request``.

    ``buffered`` and ``dropped`` are the inbox's (before any sink; ``invalid``
    counts items that could not become a storable record); what a sink could
    not keep is in its own ``SinkStats.dropped``: ``backlog_full``,
    ``shutdown_timeout``, and ``rejected`` for records the sink refused for
    their content (set aside so the rest is stored). The ``rollups_*`` reasons
    of history sinks count requests missing from the stored rollups, not
    records, and stay out of the sum.
    """

    offered: int
    buffered: int
    dropped: dict[str, int]
    sampled_out: int
    route_overflow: int
    flusher_alive: bool
    flusher_errors: int
    sinks: tuple[SinkStats, ...]
    #: The app's events (``Aegis.event``, the API): taken in, waiting for the
    #: flusher, and refused by reason (``event_buffer_full``,
    #: ``event_shutdown``, ``no_event_sink``). Outside the sum above: a sink
    #: that stores events counts them in its ``written``, ``backlog`` and
    #: ``dropped`` too, so for such a sink ``offered + events_accepted`` is
    #: on the left and ``buffered + events_buffered`` on the right.
    events_accepted: int = 0
    events_buffered: int = 0
    events_dropped: dict[str, int] = field(default_factory=dict)

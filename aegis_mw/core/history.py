"""The read side of a sink: what history queries need from storage.

A sink that implements :class:`HistorySource` is given rollups with every
batch (see :mod:`.rollup`) and can answer the JSON API, the CLI and the
dashboard's ranges. Reads come from any thread, concurrently with the
sink's own writes; ``prune`` runs on the sink's thread, between writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .record import RequestRecord
from .rollup import RollupRow


@dataclass(frozen=True)
class RequestQuery:
    """Filters for the stored request log; ``None`` means any.

    ``status_from``/``status_to`` bound the status (``[500, 600)`` for 5xx);
    ``since``/``until`` are seconds since the epoch, ``until`` exclusive;
    ``trace_id`` keeps the requests of that trace only (an exact match: see
    :func:`is_trace_id` for the form). Newest first.

    Example::

        RequestQuery(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", limit=20)
    """

    route: str | None = None
    method: str | None = None
    status_from: int | None = None
    status_to: int | None = None
    min_duration_ms: float | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0
    trace_id: str | None = None


# Lowercase only, as W3C Trace Context writes it: stored ids are compared
# exactly, so an uppercase one would match nothing.
#: A trace id's and a span id's form (W3C Trace Context), and the all-zero
#: ids that form allows but the specification calls invalid: the one check
#: of ids for the API, the events, the exemplars and the traceparent header.
TRACE_ID_DIGITS = re.compile("[0-9a-f]{32}")
NO_TRACE_ID = "0" * 32
SPAN_ID_DIGITS = re.compile("[0-9a-f]{16}")
NO_SPAN_ID = "0" * 16


def is_trace_id(value: object) -> bool:
    """Whether ``value`` is a valid trace id: 32 lowercase hex digits, not all
    zeros (W3C Trace Context's invalid id).

    Example::

        is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736")  # True
    """
    return (
        isinstance(value, str) and value != NO_TRACE_ID and bool(TRACE_ID_DIGITS.fullmatch(value))
    )


def is_span_id(value: object) -> bool:
    """Whether ``value`` is a valid span id: 16 lowercase hex digits, not all zeros."""
    return isinstance(value, str) and value != NO_SPAN_ID and bool(SPAN_ID_DIGITS.fullmatch(value))


@runtime_checkable
class HistorySource(Protocol):
    """Stored rollups and records, read back.

    ``read_rollups`` gives the rows of one resolution (one of
    ``rollup.LEVELS``) whose bucket starts in ``[start, end)``: per route and
    method when ``by_route``, else the totals (route and method empty).
    ``prune`` deletes at most ``limit`` rows of each kind older than its
    horizon and returns how many it deleted, so cleanup runs in small steps.
    """

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]: ...

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]: ...

    def prune(self, raw_before: float, rollups_before: Mapping[int, float], limit: int) -> int: ...

"""The live figures of every worker process of a host, added up.

Each process keeps its realtime ring (:mod:`.aggregates`) of its own
requests. With several workers sharing a metrics directory (see
:mod:`aegis_mw.exposition.multiprocess`), each also publishes, after every
flush cycle, the ring's slots of the last :data:`LIVE_SECONDS` seconds, the
rest of its figures since start as totals, and its WebSocket sessions; the
process that answers a live read (the stream, the realtime API, the
dashboard) adds every other process's latest publication to its own.

Slots are keyed by the second of the monotonic clock, which the processes
of one host share (``CLOCK_MONOTONIC`` counts from boot), so a second of
two workers is one second: counts add, minimum and maximum combine, and the
fine latency histograms add bucket by bucket, so percentiles are computed
from the merged counts, never averaged. Each process's publication replaces
its last, so nothing is counted twice. A process that died still counts
with what it had published (its last seconds, its totals), its in-flight
requests and open WebSockets no longer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import histogram
from .aggregates import (
    DURATION_MAX,
    DURATION_MIN,
    HIST_BASE,
    MASK,
    REQUESTS,
    SECOND,
    SLOT_LEN,
    SUMMED_END,
    WINDOW,
)
from .labeled import COUNT, DURATION_SUM, LabeledTotals

#: Seconds of slots published: the realtime window, and a few for the lag of
#: publishing (a process publishes once per flush cycle).
LIVE_SECONDS = WINDOW + 5
#: Routes whose fine latency counts a process publishes: its busiest.
LATENCY_ROUTES = 32
#: How far ahead of the reader's clock another process's second may be
#: (they read the same clock at slightly different moments).
AHEAD_SECONDS = 2
#: Summed fields of a slot (requests to 5xx), as totals carry them.
SUMMED = SUMMED_END - REQUESTS


@dataclass
class Peers:
    """What the other processes of the host add to this one's live figures."""

    #: Slots of the last seconds, at most one per second.
    slots: dict[int, list[Any]] = field(default_factory=dict)
    #: Their figures since start outside those slots (requests to 5xx).
    totals: list[float] = field(default_factory=lambda: [0] * SUMMED)
    sessions: int = 0
    in_flight: int = 0
    websockets_active: int = 0
    #: (method, route) -> [requests, 5xx responses, duration sum in seconds], since start.
    routes: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    #: (method, route) -> fine latency counts, for each process's busiest routes.
    latency: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: Each process's custom metrics as it sent them, and whether it lives: read
    #: by the caller's rules (``core.custom_merge``), which check them entry by entry.
    custom: list[tuple[Any, bool]] = field(default_factory=list)

    def add(self, data: Any, *, live: bool) -> bool:
        """Add one process's publication (``live``: its gauges count too);
        False, with nothing added, for one that is not well-formed."""
        if not (
            isinstance(data, dict)
            and isinstance(data.get("slots"), list)
            and isinstance(data.get("totals"), list)
        ):
            return False
        rows = [parse_row(row) for row in data["slots"]]
        totals = data["totals"]
        gauges = [data.get(name, 0) for name in ("sessions", "in_flight", "websockets_active")]
        if (
            any(row is None for row in rows)
            or len(totals) != SUMMED
            or not all(map(_number, totals))
            or not all(type(value) is int and 0 <= value <= MAX_COUNT for value in gauges)
        ):
            return False
        routes = data.get("routes", [])
        latency = data.get("latency", [])
        if not (
            isinstance(routes, list)
            and all(map(_route_row, routes))
            and isinstance(latency, list)
            and all(map(_latency_row, latency))
        ):
            return False
        for row in rows:
            assert row is not None
            _add_row(self.slots, *row)
        for method, route, requests, errors, duration in routes:
            held = self.routes.setdefault((method, route), [0, 0, 0.0])
            held[0] += requests
            held[1] += errors
            held[2] += duration
        for method, route, counts in latency:
            full = self.latency.setdefault((method, route), [0] * histogram.COUNT)
            for offset, count in enumerate(counts[1:]):
                full[counts[0] + offset] += count
        for index, value in enumerate(totals):
            self.totals[index] += value
        self.sessions += gauges[0]
        if live:
            self.in_flight += gauges[1]
            self.websockets_active += gauges[2]
        if "custom" in data:
            self.custom.append((data["custom"], live))
        return True

    def published(self, now_second: int) -> dict[str, Any]:
        """Everything added, as one publication (the archive of dead
        processes), its slots outside the last :data:`LIVE_SECONDS` (or
        ahead of ``now_second``: written before the host restarted its
        clock) in the totals, so that the archive stays as small as one
        process's publication."""
        slots, totals = [], list(self.totals)
        for second, slot in sorted(self.slots.items()):
            if now_second - LIVE_SECONDS < second <= now_second + AHEAD_SECONDS:
                slots.append(slot_row(slot))
            else:
                for index in range(SUMMED):
                    totals[index] += slot[REQUESTS + index]
        return {
            "slots": slots,
            "totals": totals,
            "sessions": self.sessions,
            "in_flight": 0,
            "websockets_active": 0,
            "routes": [[*key, *values] for key, values in self.routes.items()],
            "latency": [[*key, dense_counts(counts)] for key, counts in self.latency.items()],
        }


def route_figures(labeled: LabeledTotals) -> dict[str, Any]:
    """A process's figures by route as it publishes them: requests, 5xx
    responses and the duration sum of each, and the fine latency counts of
    its :data:`LATENCY_ROUTES` busiest (all 472 buckets of every route
    would make every worker's file, and every live read of them, ten times
    larger at a thousand routes; the rows a reader shows are the busiest)."""
    errors: dict[tuple[str, str], int] = {}
    for (method, route, status), count in labeled.requests.items():
        if status[:1] == "5":
            errors[(method, route)] = errors.get((method, route), 0) + count
    used = [(key, values) for key, values in labeled.series.items() if values[COUNT]]
    rows = [
        [*key, int(values[COUNT]), errors.get(key, 0), values[DURATION_SUM]] for key, values in used
    ]
    busiest = sorted(used, key=lambda pair: -pair[1][COUNT])[:LATENCY_ROUTES]
    latency = [
        [*key, dense_counts(labeled.latency[key])] for key, _ in busiest if key in labeled.latency
    ]
    return {"routes": rows, "latency": latency}


def publication(
    ring: list[list[Any]],
    totals: list[Any],
    sessions: int,
    now_second: int,
    in_flight: int,
    websockets_active: int,
) -> dict[str, Any]:
    """One process's figures as it publishes them: the slots of the last
    :data:`LIVE_SECONDS` seconds that saw requests, everything else summed
    (its figures by route are :func:`route_figures`')."""
    slots: list[list[Any]] = []
    rest = list(totals[REQUESTS:SUMMED_END])
    for slot in ring:
        if slot[SECOND] < 0 or not slot[REQUESTS]:
            continue
        if slot[SECOND] > now_second - LIVE_SECONDS:
            slots.append(slot_row(slot))
        else:
            for index in range(SUMMED):
                rest[index] += slot[REQUESTS + index]
    slots.sort()
    return {
        "slots": slots,
        "totals": rest,
        "sessions": sessions,
        "in_flight": in_flight,
        "websockets_active": websockets_active,
    }


def slot_row(slot: list[Any]) -> list[Any]:
    """A slot as published: its fields, then its histogram from the first
    bucket used to the last as ``[first_index, count, ...]`` (a slot has 472
    buckets, a few dozen of them used; one flat list is what JSON reads
    fastest)."""
    return [*slot[:HIST_BASE], dense_counts(slot[HIST_BASE:])]


def dense_counts(counts: Any) -> list[int]:
    """``counts`` from the first non-zero one to the last, after its index."""
    used = [index for index, count in enumerate(counts) if count]
    if not used:
        return []
    return [used[0], *counts[used[0] : used[-1] + 1]]


def parse_row(row: Any) -> tuple[list[Any], int, list[int]] | None:
    """A published row's fields, first bucket index and counts; None for a
    row that is not one."""
    if not isinstance(row, list) or len(row) != HIST_BASE + 1:
        return None
    fields, counts = row[:HIST_BASE], row[HIST_BASE]
    if (
        not all(map(_number, fields))
        or type(fields[SECOND]) is not int
        or fields[SECOND] < 0
        or not valid_counts(counts)
    ):
        return None
    return fields, (counts[0] if counts else 0), counts[1:]


def valid_counts(counts: Any) -> bool:
    """``[first_index, count, ...]`` within the buckets (or empty)."""
    return isinstance(counts, list) and (
        not counts
        or (
            all(type(value) is int and 0 <= value <= MAX_COUNT for value in counts)
            and counts[0] + len(counts) - 1 <= histogram.COUNT
        )
    )


def slot_from_row(row: Any) -> list[Any] | None:
    """The slot a published row holds, or None for a row that is not one."""
    parsed = parse_row(row)
    if parsed is None:
        return None
    slots: dict[int, list[Any]] = {}
    _add_row(slots, *parsed)
    return slots[parsed[0][SECOND]]


def _add_row(slots: dict[int, list[Any]], fields: list[Any], first: int, counts: list[int]) -> None:
    """Add a parsed row into the slot of its second in ``slots``."""
    mine = slots.get(fields[SECOND])
    if mine is None:
        mine = slots[fields[SECOND]] = [*fields, *([0] * histogram.COUNT)]
    else:
        for index in range(REQUESTS, SUMMED_END):
            mine[index] += fields[index]
        mine[DURATION_MIN] = min(mine[DURATION_MIN], fields[DURATION_MIN])
        mine[DURATION_MAX] = max(mine[DURATION_MAX], fields[DURATION_MAX])
    base = HIST_BASE + first
    for offset, count in enumerate(counts):
        if count:
            mine[base + offset] += count


def merge_slot(into: list[Any], slot: list[Any]) -> None:
    """Add the counts of ``slot`` (the same second) into ``into``."""
    for index in range(REQUESTS, SUMMED_END):
        into[index] += slot[index]
    into[DURATION_MIN] = min(into[DURATION_MIN], slot[DURATION_MIN])
    into[DURATION_MAX] = max(into[DURATION_MAX], slot[DURATION_MAX])
    for index in range(HIST_BASE, SLOT_LEN):
        if slot[index]:
            into[index] += slot[index]


def merge_into_ring(
    ring: list[list[Any]], totals: list[Any], peers: Peers, now_second: int
) -> None:
    """Add the peers' figures into a copy of a ring and its totals: a slot
    into the ring's slot of the same second (or in its place, when the ring
    holds an older second there, which then counts in the totals), or into
    the totals when the ring holds a newer one, or when the slot lies ahead
    of ``now_second`` (a file from before the host restarted its clock)."""
    for second, slot in peers.slots.items():
        position = second & MASK
        mine = ring[position]
        if second > now_second + AHEAD_SECONDS:
            _into_totals(totals, slot)
        elif mine[SECOND] == second:
            merge_slot(mine, slot)
        elif mine[SECOND] < second:
            _into_totals(totals, mine)
            ring[position] = list(slot)
        else:
            _into_totals(totals, slot)
    for index in range(SUMMED):
        totals[REQUESTS + index] += peers.totals[index]


def _into_totals(totals: list[Any], slot: list[Any]) -> None:
    if slot[SECOND] >= 0:
        for index in range(REQUESTS, SUMMED_END):
            totals[index] += slot[index]


#: The largest count taken from another process's file (far beyond any real
#: one; a larger one is damage, and would overflow the 8-byte counts).
MAX_COUNT = 2**53


def _route_row(row: Any) -> bool:
    return (
        isinstance(row, list)
        and len(row) == 5
        and isinstance(row[0], str)
        and isinstance(row[1], str)
        and all(map(_number, row[2:]))
    )


def _latency_row(row: Any) -> bool:
    return (
        isinstance(row, list)
        and len(row) == 3
        and isinstance(row[0], str)
        and isinstance(row[1], str)
        and valid_counts(row[2])
    )


def _number(value: Any) -> bool:
    """A finite, non-negative number no larger than :data:`MAX_COUNT`."""
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value <= MAX_COUNT

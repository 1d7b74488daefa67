"""Live figures of several processes: what one publishes, and how they add up."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core import histogram
from aegis_mw.core.aggregates import (
    DURATION_MAX,
    DURATION_MIN,
    HIST_BASE,
    REQUESTS,
    RING_SIZE,
    SECOND,
    SUMMED_END,
    _empty_slot,
)
from aegis_mw.core.live_share import (
    LIVE_SECONDS,
    Peers,
    merge_into_ring,
    publication,
    slot_from_row,
    slot_row,
)
from tests.harness import inbox_item


def slot(second: int, *durations: float, status: int = 200) -> list[Any]:
    """A ring slot holding requests of these durations."""
    made = _empty_slot(second)
    for duration in durations:
        made[REQUESTS] += 1
        made[3] += duration
        made[3 + status // 100] += 1
        made[DURATION_MIN] = min(made[DURATION_MIN], duration)
        made[DURATION_MAX] = max(made[DURATION_MAX], duration)
        made[HIST_BASE + histogram.bucket_index(duration)] += 1
    return made


def ring_of(*slots: list[Any]) -> list[list[Any]]:
    ring = [_empty_slot(-1) for _ in range(RING_SIZE)]
    for held in slots:
        ring[held[SECOND] % RING_SIZE] = held
    return ring


def test_a_publication_holds_the_recent_seconds_and_sums_the_rest() -> None:
    now = 5000
    recent, old = slot(now - 3, 1.0, 2.0), slot(now - LIVE_SECONDS - 1, 5.0)
    totals = _empty_slot(-1)
    totals[REQUESTS] = 10
    published = publication(ring_of(recent, old), totals, 4, now, 2, 1)
    assert [row[SECOND] for row in published["slots"]] == [now - 3]
    assert published["totals"][0] == 10 + 1  # the old slot's request with the totals
    assert (published["sessions"], published["in_flight"], published["websockets_active"]) == (
        4,
        2,
        1,
    )
    json.dumps(published, allow_nan=False)  # plain JSON: no infinity of an empty slot


def test_a_slot_row_comes_back_the_same_slot() -> None:
    made = slot(42, 0.5, 0.51, 3.0, 3.0)
    row = slot_row(made)
    assert len(json.dumps(row)) < 600  # from the first bucket used to the last only
    assert slot_from_row(json.loads(json.dumps(row))) == made
    edges = slot(7, 0.001, 2_000_000.0)  # the first bucket and the last
    assert slot_from_row(json.loads(json.dumps(slot_row(edges)))) == edges


@pytest.mark.parametrize(
    "row",
    [
        None,
        [],
        [1, 2],
        [*slot_row(slot(1, 1.0))[:-1], "not pairs"],
        [*slot_row(slot(1, 1.0))[:-1], [histogram.COUNT, 1]],
        [*slot_row(slot(1, 1.0))[:-1], [-1, 1]],
        [*slot_row(slot(1, 1.0))[:-1], [3, -1]],
        [*slot_row(slot(1, 1.0))[:-1], [3.0, 1]],
        ["1", *slot_row(slot(1, 1.0))[1:]],
        [-5, *slot_row(slot(1, 1.0))[1:]],
        [1, float("nan"), *slot_row(slot(1, 1.0))[2:]],
    ],
)
def test_a_row_that_is_not_a_slot_is_refused(row: Any) -> None:
    assert slot_from_row(row) is None


def test_peers_add_up_by_second_and_count_gauges_of_live_ones_only() -> None:
    peers = Peers()
    first = publication(ring_of(slot(100, 1.0), slot(101, 2.0)), _empty_slot(-1), 1, 101, 3, 1)
    second = publication(ring_of(slot(101, 4.0, 8.0)), _empty_slot(-1), 2, 101, 5, 2)
    assert peers.add(first, live=True)
    assert peers.add(second, live=False)  # a process that died: gauges leave
    assert sorted(peers.slots) == [100, 101]
    merged = peers.slots[101]
    assert merged[REQUESTS] == 3
    assert (merged[DURATION_MIN], merged[DURATION_MAX]) == (2.0, 8.0)
    assert sum(merged[HIST_BASE:]) == 3
    assert (peers.sessions, peers.in_flight, peers.websockets_active) == (3, 3, 1)


@pytest.mark.parametrize(
    "damage",
    [
        {"slots": "x"},
        {"slots": [[1]]},
        {"totals": [1, 2]},
        {"totals": ["x"] * (SUMMED_END - REQUESTS)},
        {"sessions": -1},
        {"in_flight": 1.5},
        {"websockets_active": True},
        {"totals": [float("inf"), *([0] * (SUMMED_END - REQUESTS - 1))]},
        {"totals": [-1, *([0] * (SUMMED_END - REQUESTS - 1))]},
        {"in_flight": 2**64},
        {"slots": [[1, 1, 0, 1.0, 0, 1, 0, 0, 0, 1.0, 1.0, [3, 2**64]]]},
        {"slots": [[1, 1, 0, float("inf"), 0, 1, 0, 0, 0, 1.0, 1.0, [3, 1]]]},
        {"routes": "x"},
        {"routes": [["GET", "/r", 1, 0]]},
        {"routes": [["GET", "/r", -1, 0, 0.0]]},
        {"routes": [["GET", 7, 1, 0, 0.0]]},
        {"latency": [["GET", "/r", [3, -1]]]},
        {"latency": [["GET", "/r", [histogram.COUNT, 1]]]},
    ],
)
def test_a_damaged_publication_adds_nothing(damage: dict[str, Any]) -> None:
    peers = Peers()
    good = publication(ring_of(slot(100, 1.0)), _empty_slot(-1), 1, 100, 1, 1)
    assert not peers.add({**good, **damage}, live=True)
    assert peers == Peers()
    assert not peers.add("not a publication", live=True)


def test_merged_into_a_ring_each_second_once() -> None:
    own = ring_of(slot(1000, 1.0), slot(1000 - RING_SIZE + 5, 9.0))
    totals = _empty_slot(-1)
    peers = Peers()
    rows = [slot(1000, 2.0), slot(1005, 3.0), slot(1000 - RING_SIZE, 4.0)]
    peers.add({"slots": [slot_row(row) for row in rows], "totals": [7, 0, 7.0, 0, 7, 0, 0, 0],
               "sessions": 0, "in_flight": 0, "websockets_active": 0}, live=True)  # fmt: skip
    merge_into_ring(own, totals, peers, 1005)
    assert own[1000 % RING_SIZE][REQUESTS] == 2  # the same second: added
    assert own[1005 % RING_SIZE][SECOND] == 1005  # a newer second in an older one's place
    # The older slot it replaced, the peer's slot older than the ring's, and its totals.
    assert totals[REQUESTS] == 1 + 1 + 7
    in_ring = sum(held[REQUESTS] for held in own if held[SECOND] >= 0)
    assert in_ring + totals[REQUESTS] == 2 + 1 + 1 + 1 + 7  # every request once


def test_seconds_ahead_of_the_clock_count_in_the_totals_only() -> None:
    """A file from before the host restarted its clock: its seconds lie far ahead."""
    own = ring_of(slot(1000, 1.0))
    totals = _empty_slot(-1)
    peers = Peers()
    assert peers.add(publication(ring_of(slot(900_000, 2.0)), _empty_slot(-1), 0, 900_000, 0, 0),
                     live=False)  # fmt: skip
    merge_into_ring(own, totals, peers, 1000)
    assert own[1000 % RING_SIZE][REQUESTS] == 1  # the reader's own second kept
    assert totals[REQUESTS] == 1  # the other counted since start, in no second
    archived = peers.published(1000)
    assert archived["slots"] == [] and archived["totals"][0] == 1


def test_the_archive_keeps_the_last_seconds_and_sums_the_older() -> None:
    peers = Peers()
    rows = [slot(1000, 1.0), slot(1000 - LIVE_SECONDS, 2.0)]
    assert peers.add({"slots": [slot_row(row) for row in rows], "totals": [0] * 8,
                      "sessions": 0, "in_flight": 0, "websockets_active": 0}, live=False)  # fmt: skip
    archived = peers.published(1000)
    assert [row[SECOND] for row in archived["slots"]] == [1000]
    assert archived["totals"][0] == 1


def test_route_figures_add_up_with_the_busiest_routes_latency() -> None:
    peers = Peers()
    base = publication(ring_of(slot(100, 1.0)), _empty_slot(-1), 0, 100, 0, 0)
    one = {**base, "routes": [["GET", "/a", 3, 1, 0.5]], "latency": [["GET", "/a", [10, 2, 1]]]}
    two = {**base, "routes": [["GET", "/a", 2, 0, 0.25], ["GET", "/b", 1, 0, 0.1]],
           "latency": [["GET", "/a", [11, 4]]]}  # fmt: skip
    assert peers.add(one, live=True) and peers.add(two, live=True)
    assert peers.routes == {("GET", "/a"): [5, 1, 0.75], ("GET", "/b"): [1, 0, 0.1]}
    assert peers.latency[("GET", "/a")][10:12] == [2, 5]
    archived = Peers()
    assert archived.add({**peers.published(100)}, live=False)
    assert archived.routes == peers.routes and archived.latency == peers.latency


def test_a_publication_reads_its_totals_and_routes_as_one_moment(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Requests that finish while a worker publishes (here: each look at its
    inbox finds one more) are in the published totals and routes alike: a
    reader adds them up apart, and the top endpoints must sum to the
    requests counted."""
    aegis = make_aegis(sink="memory://", flush_interval=3600, metrics_registry="none")
    arriving = [inbox_item(f"/a/{n}", route="/a", start=1000.0) for n in range(6)]
    looks = 0

    def pending() -> list[Any]:
        nonlocal looks
        looks += 1
        return arriving[: 2 + looks]

    live = aegis.aggregates.publication(1000, pending)
    counted = live["totals"][0] + sum(row[REQUESTS] for row in live["slots"])
    assert counted == sum(row[2] for row in live["routes"]) == 3
    assert live["routes"] == [["GET", "/a", 3, 0, pytest.approx(0.006)]]

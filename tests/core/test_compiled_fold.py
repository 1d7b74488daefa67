"""The compiled fold (``_hotpath_c/fold.c``) against the Python one.

Two ``RealtimeAggregates`` in the same state, one with the compiled fold and
one without, fold the same compiled inbox items (and WebSocket sessions)
batch after batch, through ``fold_drained`` as the flusher calls it. The
realtime ring, the totals, the per-label figures, the items kept and the
malformed count must be equal, floats by their bits. The items (from
``test_compiled_finalize``) are mostly clean with a few odd values, their
times spread over a few seconds, so the compiled loop meets new seconds,
new label sets and every kind of value it must leave to the Python code.
"""

from __future__ import annotations

import marshal
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_mw.core.aggregates import RealtimeAggregates
from aegis_mw.core.items import PendingSession
from aegis_mw.core.labeled import REQUEST_BYTES
from aegis_mw.core.labels import STANDARD_METHODS, RouteCap
from tests.conftest import compiled_module
from tests.core.failing_settles import settle_failing_each_allocation
from tests.core.test_compiled_finalize import as_item, items


def exact(value: Any) -> Any:
    """Floats by their bits; arrays and containers element by element."""
    if type(value) is float:
        return ("float", value.hex())
    if isinstance(value, dict):
        return {key: exact(part) for key, part in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
        return (type(value).__name__, [exact(part) for part in value])
    return (type(value).__name__, value)


def shown(aggregates: RealtimeAggregates, good: list[Any], malformed: int) -> Any:
    aggregates.settle()
    labeled = aggregates.labeled
    return exact({
        # marshal keeps each float's bits, and is quick over the whole ring.
        "ring": marshal.dumps(aggregates.ring),
        "totals": marshal.dumps(aggregates.totals),
        "sessions": aggregates.websocket_sessions,
        "drained": aggregates.drained,
        "requests": labeled.requests,
        "series": labeled.series,
        "latency": {key: counts.tobytes() for key, counts in labeled.latency.items()},
        "label_sessions": labeled.sessions,
        "overflow": labeled.route_overflow,
        "routes": (sorted(aggregates.routes.known), aggregates.routes.overflowed),
        "good": [id(item) for item in good],
        "malformed": malformed,
    })  # fmt: skip


def session() -> PendingSession:
    return PendingSession(1.0, "/ws", "/ws", 2.0, 1, 1, 1000, True, None, None, "")


@st.composite
def timed_items(draw: st.DrawFn) -> Any:
    """An item (its duration and time to first byte kept) starting at 100 s or
    a few seconds later, often more than once in a row; or a session."""
    if draw(st.integers(0, 15)) == 0:
        return [session()]
    fields = draw(items())
    # 0.0: durations land on the bucket bounds exactly; 228.0: the slot of
    # 100 s again, a newer second (what it held goes to the totals).
    start = draw(st.sampled_from([0.0, 100.0, 100.5, 101.25, 102.75, -30.0, 228.0]))
    ttfb = None if fields[5] is None else start + (fields[5] - fields[4])
    fields[4:7] = [start, ttfb, start + (fields[6] - fields[4])]
    return [fields] * draw(st.integers(1, 3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.tuples(st.lists(timed_items(), max_size=8), st.booleans()), min_size=1, max_size=4
    ),
    buckets=st.sampled_from([(0.005, 0.01, 0.1, 1.0), (0.5,), ()]),
)
def test_the_compiled_fold_folds_as_the_python_one(
    batches: list[tuple[list[Any], bool]], buckets: tuple[float, ...]
) -> None:
    """Compared after the batches drawn to be read and after the last: the
    compiled fold's sums stay pending across the others."""
    module = compiled_module()
    python = RealtimeAggregates(RouteCap(4), buckets)
    compiled = RealtimeAggregates(RouteCap(4), buckets, module)
    assert compiled._compiled_fold is not None
    for number, (batch, read) in enumerate(batches, 1):
        made = [
            entry if isinstance(entry, PendingSession) else as_item(module, entry)
            for repeated in batch
            for entry in repeated
        ]
        expected = python.fold_drained(lambda: list(made))  # noqa: B023
        got = compiled.fold_drained(lambda: list(made))  # noqa: B023
        assert ([id(item) for item in got[0]], got[1]) == (
            [id(item) for item in expected[0]],
            expected[1],
        )
        if read or number == len(batches):
            assert shown(compiled, *got) == shown(python, *expected)


def test_items_of_a_known_second_and_label_set_take_the_compiled_fold() -> None:
    """After the first item of a second and label set, the compiled fold takes
    the rest of the batch: the Python fold is not called again."""
    module = compiled_module()
    aggregates = RealtimeAggregates(RouteCap(10), compiled=module)
    fields = ["GET", "/a", "/a", 200, 5.0, 5.001, 5.002, 3, 10, None, None, "", False, None]
    items = [module.item_from_fields(fields) for _ in range(40)]
    calls: list[int] = []
    fold = aggregates.labeled.fold
    aggregates.labeled.fold = lambda batch, label: calls.append(len(batch)) or fold(batch, label)  # type: ignore[method-assign]
    good, malformed = aggregates.fold_drained(lambda: items)
    assert (len(good), malformed, calls) == (40, 0, [1])
    aggregates.settle()
    assert aggregates.labeled.requests[("GET", "/a", "200")] == 40
    assert aggregates.labeled.series[("GET", "/a")][0] == 40
    slot = aggregates.ring[5 & 127]
    assert slot[1] == 40


def test_layouts_and_bounds_the_compiled_fold_cannot_take_leave_it_unused() -> None:
    module = compiled_module()
    assert RealtimeAggregates(compiled=module)._compiled_fold is not None
    assert RealtimeAggregates(buckets=(1, 2), compiled=module)._compiled_fold is None
    many = tuple(float(bound) for bound in range(1, 70))
    assert RealtimeAggregates(buckets=many, compiled=module)._compiled_fold is None


def test_a_batch_of_lists_takes_one_python_pass() -> None:
    module = compiled_module()
    aggregates = RealtimeAggregates(RouteCap(10), compiled=module)
    fields = ["GET", "/a", "/a", 200, 5.0, 5.001, 5.002, 3, 10, None, None, "", False, None]
    calls: list[int] = []
    fold = aggregates.labeled.fold
    aggregates.labeled.fold = lambda batch, label: calls.append(len(batch)) or fold(batch, label)  # type: ignore[method-assign]
    batch = [list(fields) for _ in range(30)]
    good, malformed = aggregates.fold_drained(lambda: batch)
    assert (len(good), malformed, calls) == (30, 0, [30])


def clean_items(module: Any, routes: int, count: int, statuses: int = 1) -> list[Any]:
    """Items of one second over `routes` routes and `statuses` statuses (one
    status: every other route failing), the first routes x statuses items
    one of each label set; durations vary."""
    made = []
    for index in range(count):
        label = index % (routes * statuses)
        route, second = label % routes, 5.0
        status = (503 if route % 2 else 200) if statuses == 1 else (200, 503, 404)[label // routes]
        start, end = second + 0.0001 * (index % 13), second + 0.001 * (1 + index % 29)
        fields = ["GET", f"/r{route}", "/p", status, second, start, end]
        made.append(module.item_from_fields([*fields, 3, 10 + index, None, None, "", False, None]))
    return made


def folded_pair(module: Any, batches: list[list[Any]]) -> tuple[Any, Any]:
    python = RealtimeAggregates(RouteCap(2000))
    compiled = RealtimeAggregates(RouteCap(2000), compiled=module)
    for batch in batches:
        python.fold_drained(lambda: list(batch))  # noqa: B023
        compiled.fold_drained(lambda: list(batch))  # noqa: B023
    return python, compiled


def test_readers_see_the_pending_sums_which_stay_out_of_the_lists_until_then() -> None:
    module = compiled_module()
    items = clean_items(module, 3, 90)
    python, compiled = folded_pair(module, [items[:3], items[3:]])
    # The first three taught the label sets; the other 87 are pending.
    assert compiled._pending.sizes()[2] == 87
    assert compiled.ring[5][1] == 3
    assert compiled.labeled.requests[("GET", "/r0", "200")] < 30
    assert compiled.labeled_snapshot(list).series == python.labeled_snapshot(list).series
    assert compiled._pending.sizes() == (0, 0, 0)  # the snapshot settled them
    compiled.fold_drained(lambda: list(items))
    python.fold_drained(lambda: list(items))
    assert compiled._pending.sizes()[2] == 90
    for aggregates in (python, compiled):
        assert aggregates.snapshot(6, list).total_requests == 180
    assert compiled._pending.sizes() == (0, 0, 0)
    assert compiled.seconds(5, list, 3) == python.seconds(5, list, 3)
    assert shown(compiled, [], 0) == shown(python, [], 0)


@pytest.mark.parametrize(("routes", "statuses"), [(700, 1), (300, 2)])
def test_more_label_sets_than_it_keeps_sums_for_are_folded_exactly(
    routes: int, statuses: int
) -> None:
    """Past the lists (700 series) or the request counts (600 keys of 300
    series) a FoldPending holds, the fold stops, the Python code settles and
    folds the item, and the compiled fold goes on."""
    module = compiled_module()
    items = clean_items(module, routes, 3 * routes * statuses, statuses)
    teach = routes * statuses
    python, compiled = folded_pair(module, [items[:teach], items[teach:]])
    assert shown(compiled, [], 0) == shown(python, [], 0)


def test_a_settle_out_of_memory_changes_nothing_and_keeps_the_sums() -> None:
    module = compiled_module()
    # Counts past 256 (ints CPython does not share), in ring, series and keys.
    items = clean_items(module, 2, 1200)
    python, compiled = folded_pair(module, [items[:2], items[2:]])

    def lists() -> bytes:
        labeled = compiled.labeled
        return marshal.dumps((compiled.ring, labeled.series, labeled.requests))

    # Failing at several of its allocations, it changed nothing each time.
    assert settle_failing_each_allocation(compiled._pending, lists) > 5
    assert shown(compiled, [], 0) == shown(python, [], 0)


def test_a_reset_drops_the_pending_sums() -> None:
    module = compiled_module()
    items = clean_items(module, 2, 50)
    python, compiled = folded_pair(module, [items[:2], items[2:]])
    assert compiled._pending.sizes()[2] == 48
    compiled.reset()
    python.reset()
    assert compiled._pending.sizes() == (0, 0, 0)
    assert compiled.snapshot(6, list).total_requests == 0
    again = clean_items(module, 2, 10)
    for aggregates in (python, compiled):
        aggregates.fold_drained(lambda: list(again[:2]))
        aggregates.fold_drained(lambda: list(again[2:]))
    assert compiled._pending.sizes()[2] == 8  # the new counts' sums, pending
    assert shown(compiled, [], 0) == shown(python, [], 0)
    assert compiled.labeled.requests[("GET", "/r0", "200")] == 5


def test_byte_counts_past_64_bits_together_are_summed_as_python_sums_them() -> None:
    """Each count fits 64 bits, their sum does not: the pending sum stops
    short of overflowing, and the list gets Python's exact sum."""
    module = compiled_module()
    largest = 2**63 - 1
    fields = ["GET", "/a", "/a", 200, 5.0, 5.001, 5.002,
              largest, largest, None, None, "", False, None]  # fmt: skip
    items = [module.item_from_fields(fields) for _ in range(5)]
    python, compiled = folded_pair(module, [items[:1], items[1:]])
    assert shown(compiled, [], 0) == shown(python, [], 0)
    assert compiled.labeled.series[("GET", "/a")][REQUEST_BYTES] == 5 * largest


def test_pending_sums_for_lists_that_changed_shape_are_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing in the package changes a list under the pending sums; if
    something did, reading would fail for ever: the sums are dropped once,
    with an error logged, and folding goes on."""
    module = compiled_module()
    items = clean_items(module, 2, 20)
    _, compiled = folded_pair(module, [items[:2], items[2:]])
    compiled.ring[5].append(0)
    assert compiled.snapshot(6, list).total_requests == 2
    assert "pending sums of the realtime figures dropped" in caplog.text
    compiled.ring[5].pop()
    compiled.fold_drained(lambda: list(items))
    assert compiled.snapshot(6, list).total_requests == 22


def test_many_label_sets_and_equal_values_of_other_objects_fold_as_the_python_one() -> None:
    """The compiled fold remembers the label sets it has found by the identity
    of the item's method, route and status objects, in a table of 64 slots
    kept for one call. Items that share two of the three objects and differ in
    the third, more than 64 kinds of it in turn (the table must tell apart
    label sets that land in one slot, and find each again after others took
    its slot), and equal values carried by other objects (a method and route
    built anew, a status of a large int) must fold as the Python fold does
    (HEAD's response bytes left out), every item by the compiled loop once its
    label set is known; and nothing is kept after the call (no reference, no
    histogram's buffer held)."""
    module = compiled_module()
    python = RealtimeAggregates(RouteCap(500))
    compiled = RealtimeAggregates(RouteCap(500), compiled=module)
    names = sorted(STANDARD_METHODS)
    # A method object of its own for each of 117 items (9 values); 100
    # routes; 100 statuses (57 small ints, 43 of their own).
    methods = ["".join([name[:1], name[1:]]) for _ in range(13) for name in names]
    routes = [f"/r{number}" for number in range(100)]
    statuses = [*range(200, 300)]
    order = [
        *((method, "/r0", 200) for method in methods),
        *(("GET", route, 200) for route in routes),
        *(("POST", "/r1", status) for status in statuses),
    ]
    order += order

    def batch(fresh: bool) -> list[Any]:
        made = []
        for number, (method, route, status) in enumerate(order):
            if fresh:  # equal values, other objects
                method = "".join([method[:1], method[1:]])
                route, status = "".join(["/", route[1:]]), int(str(status))
            fields = [
                method, route, route, status, 5.0, 5.0 + number / 1e6, 5.001 + number / 1e5,
                number % 7, number, None, None, "", False, None,
            ]  # fmt: skip
            made.append(module.item_from_fields(fields))
        return made

    def compare(made: list[Any]) -> tuple[list[Any], int]:
        expected = python.fold_drained(lambda: list(made))
        got = compiled.fold_drained(lambda: list(made))
        assert ([id(item) for item in got[0]], got[1]) == (
            [id(item) for item in expected[0]],
            expected[1],
        )
        assert shown(compiled, *got) == shown(python, *expected)
        for counts in compiled.labeled.latency.values():
            counts.append(0)  # BufferError while a buffer of it is held
            counts.pop()
        return got

    for fresh in (False, True, False):
        compare(batch(fresh))
    # Known by now: the last batches never reach the Python fold, and the
    # call keeps no reference to the objects it compared by identity.
    calls: list[int] = []
    fold = compiled.labeled.fold
    compiled.labeled.fold = lambda batch, label: calls.append(len(batch)) or fold(batch, label)  # type: ignore[method-assign]
    for fresh in (True, False):
        made = batch(fresh)
        # Objects of these items alone (not the literals and small ints,
        # which other code holds and lets go meanwhile).
        held = [*methods, *routes, *statuses[57:]]
        if fresh:
            held = [value for item in made[:150] for value in (item[0], item[1], item[3])]
            held = [value for value in held if type(value) is str or value > 256]
        before = [sys.getrefcount(value) for value in held]
        got = compare(made)
        assert (len(got[0]), got[1], calls) == (len(made), 0, [])
        assert [sys.getrefcount(value) for value in held] == before

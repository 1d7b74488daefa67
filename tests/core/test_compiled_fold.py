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
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_mw.core.aggregates import RealtimeAggregates
from aegis_mw.core.items import PendingSession
from aegis_mw.core.labels import RouteCap
from tests.conftest import compiled_module
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
    batches=st.lists(st.lists(timed_items(), max_size=8), min_size=1, max_size=4),
    buckets=st.sampled_from([(0.005, 0.01, 0.1, 1.0), (0.5,), ()]),
)
def test_the_compiled_fold_folds_as_the_python_one(
    batches: list[list[Any]], buckets: tuple[float, ...]
) -> None:
    module = compiled_module()
    python = RealtimeAggregates(RouteCap(4), buckets)
    compiled = RealtimeAggregates(RouteCap(4), buckets, module)
    assert compiled._compiled_fold is not None
    for batch in batches:
        made = [
            entry if isinstance(entry, PendingSession) else as_item(module, entry)
            for repeated in batch
            for entry in repeated
        ]
        expected = shown(python, *python.fold_drained(lambda: list(made)))  # noqa: B023
        assert shown(compiled, *compiled.fold_drained(lambda: list(made))) == expected  # noqa: B023


def test_items_of_a_known_second_and_label_set_take_the_compiled_fold() -> None:
    """After the first item of a second and label set, the compiled fold takes
    the rest of the batch: the Python fold is not called again."""
    module = compiled_module()
    aggregates = RealtimeAggregates(RouteCap(10), compiled=module)
    fields = ["GET", "/a", "/a", 200, 5.0, 5.001, 5.002, 3, 10, None, None, "", False]
    items = [module.item_from_fields(fields) for _ in range(40)]
    calls: list[int] = []
    fold = aggregates.labeled.fold
    aggregates.labeled.fold = lambda batch, label: calls.append(len(batch)) or fold(batch, label)  # type: ignore[method-assign]
    good, malformed = aggregates.fold_drained(lambda: items)
    assert (len(good), malformed, calls) == (40, 0, [1])
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
    fields = ["GET", "/a", "/a", 200, 5.0, 5.001, 5.002, 3, 10, None, None, "", False]
    calls: list[int] = []
    fold = aggregates.labeled.fold
    aggregates.labeled.fold = lambda batch, label: calls.append(len(batch)) or fold(batch, label)  # type: ignore[method-assign]
    batch = [list(fields) for _ in range(30)]
    good, malformed = aggregates.fold_drained(lambda: batch)
    assert (len(good), malformed, calls) == (30, 0, [30])

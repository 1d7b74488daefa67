"""The compiled finalizer (``_hotpath_c/finalize.c``) against the Python loop.

Two finalizers in the same state, one with the compiled loop and one without,
finalize the same compiled inbox items, batch after batch (the first batches
teach both which routes and clients are clean, so later ones take the
compiled path). Everything either shows must be equal: the records, field for
field and float for float, the rollup cells, and every counter. Items are
drawn from clean values and from every kind of odd one the Python loop
repairs, folds or refuses, so the compiled loop is checked both where it
takes an item and where it must leave it alone.
"""

from __future__ import annotations

import copy
import gc
import math
import random
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.trace import NonRecordingSpan, SpanContext

from aegis_mw.core import histogram
from aegis_mw.core.client_address import ClientAddressResolver
from aegis_mw.core.finalize import Finalizer
from aegis_mw.core.labels import RouteCap
from aegis_mw.core.rollup import RollupDelta
from tests.conftest import compiled_module
from tests.core.failing_settles import settle_failing_each_allocation


def span(trace_id: int, span_id: int) -> NonRecordingSpan:
    """An OpenTelemetry span as the request path finds one current."""
    return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False))


class FixedClock:
    """One wall-clock offset for both finalizers (a real one moves between calls)."""

    def __init__(self, wall: float) -> None:
        self._wall = wall

    def monotonic(self) -> float:
        return 1000.0

    def wall(self) -> float:
        return self._wall


class Text(str):
    """A str subclass: equal to a clean value, never taken as one."""


# Each field: clean values first, then odd ones. An item is drawn clean, then
# has a few of its fields (often none) replaced by any value of their list.
METHODS = ["GET", "POST", "HEAD", "DELETE", "get", "BREW", "", Text("GET"), None, 7]
ROUTES = ["/a", "/items/{id}", "/b", None, "/bad\x00", "/é", "/" + "r" * 600, Text("/a"), 3]
PATHS = ["/a", "/items/1", "/b?x=1", "", "/" * 200, "/é", "/ctl\x1f", "/del\x7f", "/" * 201,
         Text("/a"), b"/a", None]  # fmt: skip
STATUSES = [200, 204, 301, 404, 429, 500, 503, 0, 99, 600, 999, 2**30 - 1, -1, 2**30, 2**40,
            200.0, True, "200", HTTPStatus.OK, None]  # fmt: skip
DURATIONS = [0.0, 1e-6, 0.00001, 0.00002, 0.0004, 0.005, 0.012, 0.25, 0.5, 1.0, 3.0, 2000.0,
             -0.5, math.nan, math.inf]  # fmt: skip
BYTES = [0, 17, 4096, 2**30 - 1, 2**30, 2**63 - 1, 2**70, -3, 1.5, True, None]
CLIENTS = [None, ("10.0.0.1", 5), ("10.0.0.2", 6), ("::1", 1), (), ["10.0.0.1", 5],
           ("bad\x00", 1), (7, 1), ("x" * 300, 1), (Text("10.0.0.1"), 1)]  # fmt: skip
FORWARDED = [None, "203.0.113.9", "10.0.0.3, 203.0.113.9"]
ERRORS = ["", "ValueError: boom", "x" * 1024, "x" * 1025, "bad\x00", "é", Text("e"), None, 5]
TTFBS = [None, 0.0, 0.001, math.nan, math.inf]


class RaisingSpan:
    def get_span_context(self) -> None:
        raise RuntimeError("a broken span")


#: The trace contexts the request paths queue; the first five the compiled
#: loop takes, the others too, but for a str subclass or a str past ASCII.
TRACES = [None, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
          span(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7),
          b" \tcc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-later\xff ",
          b"00-xyz", b"", b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
          b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", b"x" * 600,
          b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\x7f",
          b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
          b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", 5, span(0, 0),
          span(1, 2**64), RaisingSpan(), Text("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
          "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-é"]  # fmt: skip
STARTS = [10.0, 12.5, 1e9, 1.7e9, -3.0, 4e15, math.inf]
#: How many values of each list count as clean.
CLEAN = {"method": 4, "route": 3, "path": 5, "status": 12, "duration": 12, "bytes": 4,
         "client": 4, "forwarded": 1, "error": 3, "ttfb": 3, "start": 4,
         "trace": 5}  # fmt: skip
VALUES = {"method": METHODS, "route": ROUTES, "path": PATHS, "status": STATUSES,
          "duration": DURATIONS, "request_bytes": BYTES, "response_bytes": BYTES,
          "client": CLIENTS, "forwarded": FORWARDED, "error": ERRORS, "ttfb": TTFBS,
          "start": STARTS, "trace": TRACES}  # fmt: skip


@st.composite
def items(draw: st.DrawFn) -> list[Any]:
    odd = draw(st.sets(st.sampled_from(sorted(VALUES)), max_size=2))
    odd = odd if draw(st.integers(0, 3)) == 0 else set()  # most items are clean

    def value(name: str) -> Any:
        choices = VALUES[name]
        clean = CLEAN[name.replace("request_", "").replace("response_", "")]
        return draw(st.sampled_from(choices if name in odd else choices[:clean]))

    start = value("start") + draw(st.floats(0, 10, allow_nan=False))
    ttfb = value("ttfb")
    return [
        value("method"),
        value("route"),
        value("path"),
        value("status"),
        start,
        None if ttfb is None else start + ttfb,
        start + value("duration"),
        value("request_bytes"),
        value("response_bytes"),
        value("client"),
        value("forwarded"),
        value("error"),
        draw(st.booleans()),
        value("trace"),
    ]


def as_item(module: Any, fields: list[Any]) -> Any:
    """An HttpItem, or for an item whose last field (``disconnected``) is
    set, the list itself, as a pure-Python request path queues it: the
    compiled loops leave those to the Python code."""
    return list(fields) if fields[12] else module.item_from_fields(fields)


def finalizer(compiled: Any, sample_rate: float, wall: float) -> Finalizer:
    made = Finalizer(
        clock=FixedClock(wall),
        resolver=ClientAddressResolver(["10.0.0.0/8"]),
        routes=RouteCap(4),
        max_path_length=200,
        max_error_length=1024,
        sample_rate=sample_rate,
        slow_threshold_ms=100.0,
        compiled=compiled,
    )
    made.id_prefix = "00c0ffee00c0ffee"
    made._random = random.Random(7)
    return made


def shown(made: Finalizer, records: list[Any]) -> dict[str, Any]:
    """Everything a finalizer shows; floats by their bits (NaN equal to NaN)."""

    def exact(value: Any) -> Any:
        if type(value) is float:
            return ("float", value.hex())
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, [exact(part) for part in value])
        if isinstance(value, dict):
            return {key: exact(part) for key, part in value.items()}
        return (type(value).__name__, value)

    delta: RollupDelta = made.rollups
    return {
        "records": [exact(record) for record in records],
        "cells": {key: exact(cell) for key, cell in delta.cells.items()},
        "rolled": delta.requests,
        "sequence": made.sequence,
        "sampled_out": made.sampled_out,
        "invalid": made.invalid,
        "routes": (sorted(made.routes.known), made.routes.overflowed),
        "clean": (sorted(made._clean_routes), sorted(made._clean_clients)),
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.tuples(st.lists(items(), max_size=16), st.booleans()), min_size=1, max_size=4
    ),
    sample_rate=st.sampled_from([1.0, 1.0, 0.5, 0.0]),
    wall=st.sampled_from([1.7e9, 1.7e9 + 0.3, 0.0, -50.0]),
)
def test_the_compiled_loop_finalizes_as_the_python_loop(
    batches: list[tuple[list[list[Any]], bool]], sample_rate: float, wall: float
) -> None:
    """The records compared after every batch; the rollups (read through
    ``rollups``, which settles the pending sums) after the batches drawn to
    be read and after the last, so sums stay pending across the others."""
    module = compiled_module()
    python = finalizer(None, sample_rate, wall)
    compiled = finalizer(module, sample_rate, wall)
    for number, (batch, read) in enumerate(batches, 1):
        made = [as_item(module, fields) for fields in batch]
        expected, got = python.finalize(made), compiled.finalize(made)
        if read or number == len(batches):
            assert shown(compiled, got) == shown(python, expected)
        else:
            assert shown(compiled, got)["records"] == shown(python, expected)["records"]


def test_clean_items_take_the_compiled_loop() -> None:
    """Once the route and client are known clean, the compiled loop takes every
    item: the Python loop is not called again (and the figures still agree)."""
    module = compiled_module()
    compiled = finalizer(module, 1.0, 1.7e9)
    fields = ["GET", "/a", "/a", 200, 5.0, 5.001, 5.002,
              3, 10, ("10.0.0.1", 1), None, "", False, None]  # fmt: skip
    compiled.finalize([module.item_from_fields(fields)])
    calls = []
    original = compiled._finalize
    compiled._finalize = lambda *args: calls.append(args) or original(*args)  # type: ignore[method-assign]
    batch = [module.item_from_fields(fields) for _ in range(50)]
    records = compiled.finalize(batch)
    assert calls == []
    assert len(records) == 50 and compiled.sequence == 51
    assert compiled.rollups.requests == 51
    [cell] = compiled.rollups.cells.values()
    assert cell[0] == 51 and cell[7] == 510


@pytest.mark.parametrize("trace", TRACES)
def test_traced_items_take_the_compiled_loop_unless_odd(trace: Any) -> None:
    """Headers (valid or not) and spans are parsed by the compiled loop, to the
    same ids; a str subclass or a str past ASCII goes to the Python loop."""
    module = compiled_module()
    fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001, 0, 0, None, None, "", False, None]
    records = []
    for compiled in (None, module):
        made = finalizer(compiled, 1.0, 1.7e9)
        made.finalize([module.item_from_fields(fields)])  # the route and client now clean
        [record] = made.finalize([module.item_from_fields([*fields[:13], trace])])
        records.append(record[1:])
    assert records[0] == records[1]
    # The Python loop is called for the odd ones only.
    calls: list[Any] = []
    original = made._finalize
    made._finalize = lambda *args: calls.append(args) or original(*args)  # type: ignore[method-assign]
    made.finalize([module.item_from_fields([*fields[:13], trace])])
    odd = isinstance(trace, str) and (type(trace) is not str or not trace.isascii())
    assert (calls != []) is odd


def test_a_failing_sampler_counts_the_item_invalid_after_its_rollup() -> None:
    """An exception inside an item's handling (here the sampler's) counts that
    item invalid and goes on with the next, as the Python loop's except does."""
    module = compiled_module()
    fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001, 0, 0, None, None, "", False, None]
    results = []
    for compiled in (None, module):
        made = finalizer(compiled, 0.5, 1.7e9)
        made.finalize([module.item_from_fields(fields)])  # the route becomes clean

        def broken() -> float:
            raise RuntimeError("sampler failed")

        made._random.random = broken  # type: ignore[method-assign]
        records = made.finalize([module.item_from_fields(fields) for _ in range(3)])
        results.append(shown(made, records))
        assert made.invalid == 3 and made.rollups.requests == 4
    assert results[0] == results[1]


def test_bad_arguments_raise_a_type_error() -> None:
    module = compiled_module()
    with pytest.raises(TypeError):
        module.finalize_items()
    with pytest.raises(ValueError):
        module.item_from_fields([1, 2])


def test_buckets_at_their_edges_match_python_floor_division() -> None:
    """The compiled loop finds a record's 5-second bucket without fmod: at the
    edges of buckets (multiples of 5 and the doubles either side of them),
    negative times and near its limit of 1e15, it gives what
    ``int(timestamp // 5) * 5`` gives."""
    module = compiled_module()
    starts: list[float] = [0.0, -0.0, 1e-300, -1e-300, 0.3, -0.3, 4.999999, -4.999999]
    for base in (5.0, 10.0, 1.7e9, 1_700_000_005.0, 2.0**40 * 5, 9.99e14, 1e15 - 5, -5.0, -1.7e9):
        for offset in (-1, 0, 1):
            starts.append(
                math.nextafter(base, math.inf if offset > 0 else -math.inf) if offset else base
            )
            starts.append(base + 2.5 + offset * 1e-6)
    # And the doubles either side of random multiples of 5 at every magnitude.
    chance = random.Random(5)
    for _ in range(2000):
        multiple = 5.0 * chance.randrange(1, 2 * 10**14) * chance.choice((1, -1))
        multiple = multiple / 10 ** chance.randrange(0, 12) // 5 * 5 or 5.0
        starts += [
            math.nextafter(multiple, -math.inf),
            multiple,
            math.nextafter(multiple, math.inf),
        ]
    results = []
    for compiled in (None, module):
        made = finalizer(compiled, 1.0, 1000.0)  # wall - monotonic = 0: timestamp = start
        fields = ["GET", "/a", "/a", 200, 1.0, None, 1.001, 0, 0, None, None, "", False, None]
        made.finalize([module.item_from_fields(fields)])
        batch = []
        for start in starts:
            fields[4], fields[6] = start, start + 0.001
            batch.append(module.item_from_fields(fields))
        records = made.finalize(batch)
        results.append(sorted(made.rollups.cells))
        assert len(records) == len(starts)
    assert results[0] == results[1]
    assert len(results[1]) > 2000


def test_compiled_records_hash_as_tuples_and_leave_the_collector() -> None:
    module = compiled_module()
    made = finalizer(module, 1.0, 1.7e9)
    fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001,
              0, 0, ("10.0.0.1", 1), None, "", False, None]  # fmt: skip
    made.finalize([module.item_from_fields(fields)])
    [record] = made.finalize([module.item_from_fields(fields)])
    assert made._progress[0] == 1 and made._progress[4] == 0  # the compiled loop built it
    assert hash(record) == hash(tuple(record)) and record == tuple(record)
    assert not gc.is_tracked(record)


def test_a_sampler_that_changes_the_item_leaves_the_record_as_python_does() -> None:
    """The sampler is Python code called mid-item: if it replaces the item's
    fields, the record still holds what the item held before, as the Python
    loop's unpacking keeps it (and nothing freed is read)."""
    module = compiled_module()
    results = []
    for compiled in (None, module):
        made = finalizer(compiled, 0.5, 1.7e9)
        fields = ["GET", "/a", "/" + "q" * 40, 200, 5.0, None, 5.001,
                  0, 0, None, None, "", False, None]  # fmt: skip
        made.finalize([module.item_from_fields(fields)])
        item = module.item_from_fields(["GET", "/a", "".join(["/", "q" * 40]), *fields[3:]])
        junk: list[str] = []

        def chance(item: Any = item, junk: list[str] = junk) -> float:
            item[2] = "/replaced"
            item[11] = "".join(["replaced", "!"])
            junk.extend("".join(["Z"] * 41) for _ in range(1000))
            return 0.0

        made._random.random = chance  # type: ignore[method-assign]
        records = made.finalize([item])
        assert records[0].path == "/" + "q" * 40 and records[0].error == ""
        results.append(shown(made, records))
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "cell",
    [
        [1.0, 0, 0, 1.0, 1.0, 1.0, 0, 0, {}],  # a float count
        [2**63 - 1, 0, 0, 1.0, 1.0, 1.0, 0, 0, {}],  # a count at the end of 64 bits
        [1, 0, 0, 1.0, 1.0, 1.0, 2**70, 0, {}],  # a byte total past them
        [1, 0, 0, 1, 1.0, 1.0, 0, 0, {}],  # an int duration sum
        # A count at the end of 64 bits in the bucket the items land in (1 ms).
        [1, 0, 0, 1.0, 1.0, 1.0, 0, 0, {histogram.bucket_index(1.0): 2**63 - 1}],
        (1, 0, 0, 1.0, 1.0, 1.0, 0, 0, {}),  # not a list
    ],
)
def test_cells_of_another_shape_are_folded_as_python_folds_them(cell: Any) -> None:
    """A rollup cell the compiled loop cannot add to exactly is left to the
    Python code, with the item, and both end the same (or raise the same)."""
    module = compiled_module()
    fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001, 3, 4, None, None, "", False, None]
    results = []
    for compiled in (None, module):
        made = finalizer(compiled, 1.0, 1000.0)
        made.finalize([module.item_from_fields(fields)])
        [key] = made.rollups.cells
        made.rollups.cells[key] = copy.deepcopy(cell)
        try:
            records = made.finalize([module.item_from_fields(fields) for _ in range(3)])
            results.append(shown(made, records))
        except Exception as error:  # compared below
            results.append(repr(error))
    assert results[0] == results[1]


def test_a_batch_of_lists_takes_one_python_pass() -> None:
    """Items of a pure-Python path (lists) go to the Python loop in one pass
    per run, not one call per item."""
    module = compiled_module()
    made = finalizer(module, 1.0, 1.7e9)
    fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001, 0, 0, None, None, "", False, None]
    calls: list[int] = []
    original = made._finalize
    made._finalize = lambda batch, *rest: calls.append(len(batch)) or original(batch, *rest)  # type: ignore[method-assign]
    batch = [list(fields) for _ in range(20)]
    batch[10:12] = [module.item_from_fields(fields), module.item_from_fields(fields)]
    assert len(made.finalize(batch)) == 20
    assert calls == [10, 8]  # the first compiled item was clean already


def test_new_clients_are_taken_and_remembered_as_the_python_loop_does() -> None:
    """A printable client address not seen before is the compiled loop's too:
    remembered as clean, the memory emptied when full (4,096), as the Python
    loop does; an address it cannot take as it is stops the loop."""
    module = compiled_module()
    results = []
    for compiled in (None, module):
        made = finalizer(compiled, 1.0, 1.7e9)
        fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001, 0, 0, None, None, "", False, None]
        made.finalize([module.item_from_fields(fields)])
        batch = []
        for index in range(5000):
            fields[9] = (f"10.{index // 65536}.{index // 256 % 256}.{index % 256}", 1)
            batch.append(module.item_from_fields(fields))
        fields[9] = ("é-host", 1)
        batch.append(module.item_from_fields(fields))
        fields[9] = ("x" * 300, 1)
        batch.append(module.item_from_fields(fields))
        records = made.finalize(batch)
        results.append(shown(made, records))
        assert len(made._clean_clients) == 5000 - 4096 + 1
    assert results[0] == results[1]


def spread_items(module: Any, buckets: int, count: int, durations: int = 97) -> list[Any]:
    """Clean items of one route over `buckets` 5-second buckets (one cell
    each), the first `buckets` items one in each; durations and statuses vary
    (new histogram buckets, errors, 429s)."""
    made = []
    for index in range(count):
        start = 10.0 + 5.0 * (index % buckets)
        status = (200, 500, 429, 201)[index % 4]
        fields = ["GET", "/a", "/a", status, start, None, start + 0.0001 * (1 + index % durations)]
        made.append(module.item_from_fields([*fields, 3, index, None, None, "", False, None]))
    return made


def finalized_pair(
    module: Any, batches: list[list[Any]], pair: tuple[Finalizer, Finalizer] | None = None
) -> tuple[Finalizer, Finalizer]:
    python, compiled = pair or (finalizer(None, 1.0, 1000.0), finalizer(module, 1.0, 1000.0))
    for batch in batches:
        # Records only (by repr, floats round-trip): reading the rollups
        # would settle their pending sums.
        assert repr(compiled.finalize(batch)) == repr(python.finalize(batch))
    return python, compiled


def test_sums_stay_pending_until_the_rollups_are_read_or_taken() -> None:
    module = compiled_module()
    items = spread_items(module, 3, 300)
    python, compiled = finalized_pair(module, [items[:3], items[3:150], items[150:]])
    # Every cell (3 buckets, 3 status classes) has sums pending: each still
    # holds only the item it was made with.
    assert compiled._pending.sizes()[0] == len(compiled._rollups.cells) == 9
    assert max(cell[0] for cell in compiled._rollups.cells.values()) == 1
    assert shown(compiled, []) == shown(python, [])  # ``rollups`` settles
    assert compiled._pending.sizes() == (0, 0, 0)
    compiled.finalize(items[:30])
    python.finalize(items[:30])
    taken, expected = compiled.take_rollups(), python.take_rollups()
    assert shown_cells(taken) == shown_cells(expected)
    assert compiled.rollups.cells == {} and compiled._pending.sizes() == (0, 0, 0)


def shown_cells(delta: RollupDelta) -> Any:
    return {key: [repr(value) for value in cell] for key, cell in delta.cells.items()}


def test_more_cells_than_it_keeps_sums_for_are_rolled_up_exactly() -> None:
    """Past the cells a FoldPending holds, the compiled loop stops, the Python
    loop settles and folds the item, and the compiled loop goes on."""
    module = compiled_module()
    items = spread_items(module, 700, 2800)
    python, compiled = finalized_pair(module, [items[:700], items[700:]])
    assert shown(compiled, []) == shown(python, [])


def test_a_rollup_settle_out_of_memory_changes_nothing_and_keeps_the_sums() -> None:
    """Including the histogram keys a settle adds: taken out again when a
    later one cannot be added; and the counts it replaces are put back
    (past 256, ints CPython does not share)."""
    module = compiled_module()
    items = spread_items(module, 3, 600)
    many = spread_items(module, 3, 1800, durations=2)
    python, compiled = finalized_pair(module, [many[:3], many[3:], items[3:]])
    assert compiled.take_rollups().cells == python.take_rollups().cells
    python, compiled = finalized_pair(module, [many, items[3:]], (python, compiled))
    failures = settle_failing_each_allocation(
        compiled._pending, lambda: shown_cells(compiled._rollups)
    )
    assert failures > 5
    assert shown(compiled, []) == shown(python, [])


def test_a_changed_cell_drops_its_pending_sums_with_an_error_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing in the package replaces a cell's histogram under its pending
    sums; if something did, the sums could not be written: dropped once, with
    an error logged, and the finalizer goes on."""
    module = compiled_module()
    items = spread_items(module, 2, 40)
    _, compiled = finalized_pair(module, [items[:2], items[2:]])
    cells = compiled._rollups.cells
    key = next(iter(cells))
    cells[key][8] = {}
    assert compiled.rollups is not None  # read: dropped, logged
    assert "pending sums of the rollups dropped" in caplog.text
    # Every cell holds only the item it was made with: the others' sums went.
    assert compiled._pending.sizes() == (0, 0, 0)
    assert [cell[0] for cell in cells.values()] == [1] * len(cells)
    compiled.finalize(items[:4])
    assert sum(cell[0] for cell in compiled.rollups.cells.values()) == len(cells) + 4


def test_rollups_taken_by_the_sampler_midway_end_as_the_python_loops() -> None:
    """A sampler that takes the rollups (Python code between two items): the
    rest of that call adds to the cells it began with, as the Python loop
    does, and the next call's items go to the new delta's cells."""
    module = compiled_module()
    fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001, 0, 0, None, None, "", False, None]
    results = []
    for compiled in (None, module):
        made = finalizer(compiled, 0.5, 1000.0)
        made.finalize([module.item_from_fields(fields) for _ in range(3)])
        taken: list[RollupDelta] = []
        chance = made._random.random

        def taking() -> float:
            if not taken:  # noqa: B023
                taken.append(made.take_rollups())  # noqa: B023
            return chance()  # noqa: B023

        made._random.random = taking  # type: ignore[method-assign]
        made.finalize([module.item_from_fields(fields) for _ in range(3)])
        made.finalize([module.item_from_fields(fields)])
        results.append((shown_cells(taken[0]), shown_cells(made.rollups)))
    assert results[0] == results[1]
    assert results[1][1]  # the last item is in the new delta


def test_a_fork_drops_the_pending_sums() -> None:
    module = compiled_module()
    items = spread_items(module, 2, 40)
    _, compiled = finalized_pair(module, [items[:2], items[2:]])
    assert compiled._pending.sizes()[0] == len(compiled._rollups.cells) == 4
    compiled.reset_after_fork()
    assert compiled._pending.sizes() == (0, 0, 0)
    assert compiled.rollups.cells == {}


def test_a_module_built_for_other_pipeline_loops_is_not_used() -> None:
    """An older build left in place (its loops called another way): the
    Python code does the work, it does not fail."""
    from types import SimpleNamespace

    from aegis_mw.core.aggregates import RealtimeAggregates

    module = compiled_module()
    older = SimpleNamespace(**{
        name: getattr(module, name) for name in dir(module) if name != "PIPELINE_LOOPS"
    })  # fmt: skip
    assert RealtimeAggregates(compiled=older)._compiled_fold is None
    made = finalizer(older, 1.0, 1000.0)
    assert made._compiled is None and made._pending is None
    fields = ["GET", "/a", "/a", 200, 5.0, None, 5.001, 0, 0, None, None, "", False, None]
    assert len(made.finalize([module.item_from_fields(fields)])) == 1

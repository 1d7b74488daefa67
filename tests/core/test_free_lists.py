"""The compiled module's free lists of items and records (``_hotpath_c/free_lists.c``).

Each request leaves an HttpItem in the inbox until the flusher drains it, and a
RequestRecord until the sink has written it. Allocated and freed the usual way,
thousands of them alive at once push CPython's young-generation count past its
threshold dozens of times a second under load, and those collections promote the
app's own objects into full collections (the server's p99.9). Taken from and given
back to the free lists they do not move that count. These tests hold the lists to
that, to their bounds, and to handing out objects indistinguishable from new ones.
"""

from __future__ import annotations

import gc
import random
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from aegis_mw.core.client_address import ClientAddressResolver
from aegis_mw.core.finalize import Finalizer
from aegis_mw.core.labels import RouteCap
from aegis_mw.core.record import RequestRecord
from tests.conftest import compiled_module

FIELDS = ["GET", "/a", "/a", 200, 5.0, 5.001, 5.002, 3, 10, ("10.0.0.1", 1), None, "", False, None]


class FixedClock:
    def monotonic(self) -> float:
        return 1000.0

    def wall(self) -> float:
        return 1.7e9


def finalizer(module: Any) -> Finalizer:
    """A finalizer with the compiled loop (which makes RequestRecord reusable),
    its route and client already known clean so items take the loop."""
    made = Finalizer(
        clock=FixedClock(),
        resolver=ClientAddressResolver([]),
        routes=RouteCap(4),
        max_path_length=200,
        max_error_length=1024,
        sample_rate=1.0,
        slow_threshold_ms=100.0,
        compiled=module,
    )
    made._random = random.Random(7)
    made.finalize([module.item_from_fields(FIELDS)])
    return made


@pytest.fixture
def module() -> Iterator[Any]:
    compiled = compiled_module()
    compiled.reuse_records(RequestRecord)
    compiled.clear_free_lists()
    yield compiled
    compiled.clear_free_lists()


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No collection while a test reads gc.get_count() (a collection resets it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def young_count_after(make: Any) -> int:
    """How far making (and keeping) what ``make`` returns moves the young count."""
    before = gc.get_count()[0]
    kept = make()
    grown = gc.get_count()[0] - before
    del kept
    return grown


@pytest.mark.usefixtures("collector_off")
def test_items_from_the_list_do_not_move_the_collectors_count(module: Any) -> None:
    def make() -> list[Any]:
        return [module.item_from_fields(FIELDS) for _ in range(500)]

    # Empty lists: each new item counts as an allocation (the list the test
    # keeps them in is one more).
    assert young_count_after(make) >= 500
    # Those 500, freed, are now in the list: the next 500 are taken from it.
    assert module.free_list_sizes()[0] == 500
    assert young_count_after(make) <= 5


@pytest.mark.usefixtures("collector_off")
def test_records_from_the_list_do_not_move_the_collectors_count(module: Any) -> None:
    made = finalizer(module)

    def make() -> list[Any]:
        records = made.finalize([module.item_from_fields(FIELDS) for _ in range(500)])
        assert len(records) == 500
        return records

    module.clear_free_lists()
    first = young_count_after(make)
    assert first >= 500  # the records are new (the items came from the list)
    assert module.free_list_sizes()[2] == 500
    assert young_count_after(make) <= 5


def test_the_lists_are_bounded(module: Any) -> None:
    """More than a list holds, freed at once: the list stops at its bound and
    the rest is freed as usual."""
    _, item_limit, _, record_limit = module.free_list_sizes()
    made = finalizer(module)
    items = [module.item_from_fields(FIELDS) for _ in range(record_limit + 1000)]
    records = made.finalize(items)
    assert len(records) == record_limit + 1000
    del items, records
    assert module.free_list_sizes() == (item_limit, item_limit, record_limit, record_limit)


def test_a_reused_item_starts_as_a_new_one(module: Any) -> None:
    """An item given back holding objects, big counts and a disconnect comes
    back with only what the new request gives it."""
    route = object()
    used = module.item_from_fields(
        ["POST", route, "/x", 503, 1.0, 2.0, 3.0, 2**70, 1.5, ("h", 2), "1.2.3.4", "E", True,
         b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    )  # fmt: skip
    assert gc.is_tracked(used)  # it holds an object that could lead back to it
    address = id(used)
    del used
    assert module.free_list_sizes()[0] == 1
    fresh = module.item_from_fields(FIELDS)
    assert id(fresh) == address  # the same memory, taken from the list
    assert list(fresh) == FIELDS
    assert not gc.is_tracked(fresh)  # atoms only, as a new item of these fields
    assert sys.getrefcount(fresh) == 2
    fresh[1] = route
    assert gc.is_tracked(fresh)


def test_a_reused_record_is_a_record(module: Any) -> None:
    made = finalizer(module)
    first = made.finalize([module.item_from_fields(FIELDS) for _ in range(50)])
    addresses = {id(record) for record in first}
    expected = [tuple(record)[1:] for record in first]
    type_references = sys.getrefcount(RequestRecord)
    del first
    assert sys.getrefcount(RequestRecord) == type_references - 50
    assert module.free_list_sizes()[2] == 50
    again = made.finalize([module.item_from_fields(FIELDS) for _ in range(50)])
    assert sys.getrefcount(RequestRecord) == type_references
    assert {id(record) for record in again} == addresses
    assert [tuple(record)[1:] for record in again] == expected
    for record in again:
        assert type(record) is RequestRecord and len(record) == 14
        assert record.route == "/a" and record.status == 200
        assert hash(record) == hash(tuple(record))
        assert not gc.is_tracked(record)
        assert sys.getrefcount(record) == 3  # the list, the loop, getrefcount's argument
    assert len({record[0] for record in again}) == 50  # request ids


def test_records_made_in_python_are_kept_and_reused(module: Any) -> None:
    """The Python loop's records (and any other RequestRecord) join the list when
    freed; the compiled loop then reuses their memory."""
    made = finalizer(module)
    module.clear_free_lists()
    python_made = RequestRecord("id", 1.0, "GET", "/", "/", 200, 1.0, None, 0, 0, None, "")
    address = id(python_made)
    del python_made
    assert module.free_list_sizes()[2] == 1
    [record] = made.finalize([module.item_from_fields(FIELDS)])
    assert id(record) == address and record.route == "/a"


def test_other_types_and_sizes_are_freed_as_before(module: Any) -> None:
    class Subclass(RequestRecord):
        __slots__ = ()

    values = ("id", 1.0, "GET", "/", "/", 200, 1.0, None, 0, 0, None, "")
    derived = Subclass(*values)
    longer = tuple.__new__(RequestRecord, (*values, "extra"))
    plain = tuple(values)
    del derived, longer, plain
    assert module.free_list_sizes()[2] == 0


def test_reuse_records_is_for_one_record_type(module: Any) -> None:
    """Another RequestRecord class (a second interpreter's, a reloaded module's)
    is left as it is, never an error that would stop an Aegis from starting."""
    assert module.reuse_records(RequestRecord) is True  # again: nothing to do

    class Other(tuple):  # type: ignore[type-arg]
        __slots__ = ()

    assert module.reuse_records(Other) is False
    assert Other.__basicsize__ == tuple.__basicsize__
    other = tuple.__new__(Other, range(12))
    del other
    assert module.free_list_sizes()[2] == 0
    with pytest.raises(TypeError, match="takes a type"):
        module.reuse_records(
            RequestRecord("id", 1.0, "GET", "/", "/", 200, 1.0, None, 0, 0, None, "")
        )
    with pytest.raises(TypeError, match="tuple subclass"):
        module.reuse_records(list)

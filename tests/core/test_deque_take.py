"""The pipeline's deque steps (aegis_mw.core.deque_take): the compiled
functions held to the Python reference, and both to what they promise under
producers that keep appending."""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mw import Aegis
from aegis_mw.core import deque_take
from aegis_mw.core.deque_take import DequeTake
from aegis_mw.core.flush_cycle import COMPILED_INGEST_STEP, INGEST_STEP
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.record import RequestRecord
from aegis_mw.core.sink_runner import SinkRunner
from aegis_mw.sinks.memory import MemorySink
from tests.conftest import compiled_module
from tests.core.faulty_sinks import http_item, offer_all
from tests.sinks.test_sqlite import make_request, make_session


class Kind(tuple):  # type: ignore[type-arg]
    """The type split_left picks out (a tuple subclass, as RequestRecord)."""


class KindChild(Kind):
    """Not exactly Kind: goes with the others, as ``type(x) is Kind`` says."""


VALUES = st.one_of(
    st.integers(),
    st.text(max_size=3),
    st.none(),
    st.builds(Kind, st.lists(st.integers(), max_size=2)),
    st.builds(KindChild, st.lists(st.integers(), max_size=2)),
    st.builds(tuple, st.lists(st.integers(), max_size=2)),
)
COUNTS = st.integers(-3, 40)


def both() -> list[DequeTake]:
    return [deque_take.PYTHON, DequeTake.chosen(compiled_module())]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(VALUES, max_size=30), count=COUNTS)
def test_take_left_is_the_reference(values: list[Any], count: int) -> None:
    results = []
    for take in both():
        queue = deque(values)
        taken = take.take_left(queue, count)
        results.append((taken, list(queue)))
        assert type(taken) is list
        assert all(a is b for a, b in zip(taken + list(queue), values, strict=True))
        # What a sink runner keeps of its backlog after a write: the front
        # taken and let go.
        assert list(queue) == values[max(0, min(count, len(values))) :]
    assert results[0] == results[1]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(VALUES, max_size=30), count=COUNTS)
def test_split_left_is_the_reference(values: list[Any], count: int) -> None:
    results = []
    for take in both():
        queue = deque(values)
        matching, others = take.split_left(queue, count, Kind)
        assert list(queue) == values  # left in place
        front = values[: max(0, count)]
        assert matching == [x for x in front if type(x) is Kind]
        assert all(type(x) is Kind for x in matching)
        assert len(matching) + len(others) == len(front)
        results.append((matching, others))
    assert results[0] == results[1]
    # The very objects, in order.
    for index in range(2):
        assert [id(x) for x in results[index][1]] == [
            id(x) for x in values[: max(0, count)] if type(x) is not Kind
        ]


def test_compiled_refuses_other_queues() -> None:
    module = compiled_module()

    class Queue(deque):  # type: ignore[type-arg]
        def popleft(self) -> Any:
            return "not the deque's"

    for queue in ([1, 2], (1, 2), Queue([1, 2])):
        for call in (
            lambda q: module.take_left(q, 1),
            lambda q: module.split_left(q, 1, int),
        ):
            with pytest.raises(TypeError, match=r"collections\.deque is required"):
                call(queue)
    with pytest.raises(TypeError):
        module.split_left(deque([1]), 1, "not a type")
    with pytest.raises(TypeError):
        module.take_left(deque([1]), "1")
    with pytest.raises(TypeError):
        module.take_left(deque([1]))
    with pytest.raises(OverflowError):
        module.take_left(deque([1]), 2**70)


def test_compiled_keeps_references_exact() -> None:
    """Each item is held once by whatever holds it: the queue, or the list
    returned; items taken and let go are released."""
    module = compiled_module()
    marker = object()
    base = sys.getrefcount(marker)
    queue = deque([marker] * 10)
    assert sys.getrefcount(marker) == base + 10
    taken = module.take_left(queue, 4)
    assert sys.getrefcount(marker) == base + 10
    matching, others = module.split_left(queue, 100, object)
    assert len(matching) == 6 and others == []
    assert sys.getrefcount(marker) == base + 16
    del matching, others
    module.take_left(queue, 3)  # let go at once
    assert sys.getrefcount(marker) == base + 7
    del taken
    assert sys.getrefcount(marker) == base + 3


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_take_left_beside_producers_loses_nothing(compiled: bool) -> None:
    """Threads append while a consumer takes in small steps (the flusher's
    drain): every item is taken once, each producer's in its own order."""
    take = DequeTake.chosen(compiled_module()) if compiled else deque_take.PYTHON
    queue: deque[tuple[int, int]] = deque()
    producers, per_producer = 4, 20_000
    done = threading.Event()
    taken: list[tuple[int, int]] = []

    def produce(number: int) -> None:
        append = queue.append
        for index in range(per_producer):
            append((number, index))

    def consume() -> None:
        while not (done.is_set() and not queue):
            taken.extend(take.take_left(queue, 32))

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    done.set()
    consumer.join(timeout=60)
    assert not consumer.is_alive()
    assert len(taken) == producers * per_producer
    for number in range(producers):
        assert [i for n, i in taken if n == number] == list(range(per_producer))


@pytest.mark.parametrize("speedups", [False, True], ids=["python", "compiled"])
def test_the_pipeline_uses_the_chosen_steps(speedups: bool, tmp_path: Any) -> None:
    """An Aegis with the compiled module moves records with its functions;
    with ``speedups=False`` with the Python ones; both store every record."""
    module = compiled_module() if speedups else None
    aegis = Aegis(sink=f"sqlite:///{tmp_path / 'a.db'}", speedups=speedups, environ={})
    try:
        runner = aegis.flusher.cycle.runners[0]
        chosen = (aegis.recorder._take_left, runner._take.take_left, runner._take.split_left)
        if module is not None:
            assert chosen == (module.take_left, module.take_left, module.split_left)
        else:
            assert chosen == (deque_take.take_left, deque_take.take_left, deque_take.split_left)
        paths = [f"/items/{index}" for index in range(300)]
        offer_all(aegis, paths)
        assert aegis.force_flush(30)
        stored = aegis.sinks[0].read_requests(RequestQuery(limit=1000))  # type: ignore[attr-defined]
        assert sorted(record.path for record in stored) == sorted(paths)
    finally:
        aegis.shutdown()


def test_steps_are_long_only_while_the_compiled_loops_take_every_item(tmp_path: Any) -> None:
    """Steps of COMPILED_INGEST_STEP items after a step the compiled loops
    took whole; a step with items for the Python loops (here a pure-Python
    request path's lists) makes the next short again, so a slice never runs
    four times longer than it should."""
    module = compiled_module()
    aegis = Aegis(sink=f"sqlite:///{tmp_path / 'a.db'}", environ={})
    cycle = aegis.flusher.cycle
    try:
        assert cycle.ingest_step == INGEST_STEP  # nothing seen yet
        for path in (f"/c/{index}" for index in range(300)):
            aegis.recorder.offer(module.item_from_fields(http_item(path)))
        assert aegis.force_flush(30)
        assert cycle.ingest_step == COMPILED_INGEST_STEP
        assert aegis.finalizer.python_items == 0
        offer_all(aegis, [f"/p/{index}" for index in range(300)])  # lists: the Python loops'
        assert aegis.force_flush(30)
        assert cycle.ingest_step == INGEST_STEP
        assert aegis.finalizer.python_items > 0
        assert aegis.stats().sinks[0].written == 600
    finally:
        aegis.shutdown()

    python = Aegis(sink=f"sqlite:///{tmp_path / 'b.db'}", speedups=False, environ={})
    try:
        offer_all(python, [f"/p/{index}" for index in range(300)])
        assert python.force_flush(30)
        assert python.flusher.cycle.ingest_step == INGEST_STEP
    finally:
        python.shutdown()


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_batches_of_mixed_records_keep_order(compiled: bool) -> None:
    """A batch takes the requests and sessions at the backlog's front, each in
    order (split_left), and removes exactly those once stored (take_left)."""
    take = DequeTake.chosen(compiled_module()) if compiled else deque_take.PYTHON
    sink = MemorySink()
    runner = SinkRunner(
        sink, "memory", max_backlog=100, backoff_initial=1, backoff_max=1, take=take
    )
    records: list[Any] = [make_session(n) if n % 3 == 0 else make_request(n) for n in range(10)]
    runner.offer(records)
    batch, taken = runner.next_batch(7, rollups=False)
    assert taken == 7
    assert batch.requests == [r for r in records[:7] if type(r) is RequestRecord]
    assert batch.sessions == [r for r in records[:7] if type(r) is not RequestRecord]
    sink.write(batch)
    runner.succeeded(taken, 0.001)
    assert list(runner.backlog) == records[7:]
    batch, taken = runner.next_batch(7, rollups=False)
    assert taken == 3 and len(batch) == 3

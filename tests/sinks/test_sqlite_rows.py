"""The compiled row inserts of the SQLite sink (``_hotpath_c/sqlite_rows.c``)
against the sqlite3 module's binding, which stays the reference.

Two sinks on two real files, one offered the compiled module and one not, are
given the same batches; what each stores (every column, with SQLite's own
type of each value) and what each raises must be equal. Batches are drawn
from clean records and from every kind of value the compiled inserts must
leave to the sqlite3 module (a bool, a str or int subclass, bytes, an int past
64 bits, a lone surrogate) or that SQLite refuses (NaN or None where NOT NULL).
"""

from __future__ import annotations

import faulthandler
import gc
import math
import os
import random
import sqlite3
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_mw import Batch, RecordRejected, RequestRecord
from aegis_mw.sinks import SQLiteSink, sqlite_rows
from aegis_mw.sinks.sqlite_schema import (
    INSERT_REQUEST,
    INSERT_REQUESTS,
    REQUEST_COLUMNS,
    ROWS_PER_INSERT,
)
from tests.conftest import compiled_module
from tests.sinks.test_sqlite import make_request


class Text(str):
    """A str subclass: the sqlite3 module adapts it; the compiled inserts leave it."""


class Number(int):
    pass


# Odd values by field: what the compiled inserts must hand back, and what SQLite
# stores differently or refuses.
ODD: dict[str, list[Any]] = {
    "request_id": ["", "é" * 40, "nul\x00inside", Text("x"), 12, 2**63 - 1, -(2**63), 2.5],
    "timestamp": [math.inf, -math.inf, -0.0, 0, 2**62, math.nan, None, True],
    "method": ["", "ÜBER", Text("GET"), b"GET", 2**63, None],
    "route": ["/caf\udce9", "/" + "r" * 5000, "😀", Number(3)],
    "path": ["/a\x00b", "", None, "/" * 3000],
    "status": [0, -1, 2**63 - 1, 2**63, 200.0, True, Number(200), "200"],
    "duration_ms": [math.nan, 1e308, -0.0, 5e-324, 7],
    "ttfb_ms": [None, math.nan, math.inf, 0],
    "request_bytes": [-(2**63), 2**64, False, 1.5],
    "response_bytes": [0, 2**63 - 1, None],
    "client_ip": [None, "", "::1", "é"],
    "error": ["", "Traceback\n" * 100, None, 0.5],
}


def open_pair(tmp_path: Path) -> tuple[SQLiteSink, SQLiteSink]:
    compiled = SQLiteSink(str(tmp_path / "compiled.db"))
    compiled.use_compiled(compiled_module())
    reference = SQLiteSink(str(tmp_path / "reference.db"))
    reference.use_compiled(None)
    return compiled, reference


def stored(path: Path) -> list[tuple[Any, ...]]:
    columns = ", ".join(f"{name}, typeof({name})" for name in REQUEST_COLUMNS)
    with sqlite3.connect(path) as connection:
        rows = connection.execute(f"SELECT {columns} FROM aegis_requests ORDER BY rowid").fetchall()
    connection.close()
    # Floats compared by their bits (-0.0 and 0.0 differ; NaN is never stored).
    return [tuple(_exact(value) for value in row) for row in rows]


def _exact(value: Any) -> Any:
    return (float, value.hex()) if isinstance(value, float) else value


def outcome(sink: SQLiteSink, batch: Batch) -> tuple[str, str, object] | None:
    try:
        sink.write(batch)
    except RecordRejected as exc:
        cause = exc.__cause__
        # The code the sqlite3 module sets on 3.11 and later (its extended one).
        return (type(cause).__name__, str(cause), getattr(cause, "sqlite_errorcode", None))
    return None


def compiled_insert(
    sink: SQLiteSink, records: list[RequestRecord], then: str = "COMMIT", pause: float = 0.0
) -> int:
    """The compiled inserts called on their own in one transaction of the
    sink's connection, ended by ``then``: how many records they took."""
    connection = sink._connect()
    # What the sink checks before its first insert (it also finds SQLite's functions).
    assert sqlite_rows.compiled_rows(connection, compiled_module()) is compiled_module()
    connection.execute("BEGIN IMMEDIATE")
    taken = sqlite_rows.insert(
        compiled_module(), connection, INSERT_REQUESTS, INSERT_REQUEST,
        ROWS_PER_INSERT, len(REQUEST_COLUMNS), records, pause,
    )  # fmt: skip
    connection.execute(then)
    return taken


def store_both(directory: Path, records: list[RequestRecord]) -> list[tuple[Any, ...]]:
    """``records`` stored by the compiled inserts, which must take them all,
    and by the sqlite3 module; the two files must hold the same rows, which
    are returned."""
    compiled, reference = open_pair(directory)
    try:
        assert compiled_insert(compiled, records) == len(records)
        reference.write(Batch(requests=records))
    finally:
        compiled.close()
        reference.close()
    rows = stored(directory / "compiled.db")
    assert rows == stored(directory / "reference.db")
    return rows


def test_the_sink_takes_the_compiled_inserts_where_the_module_is_used(tmp_path: Path) -> None:
    compiled, reference = open_pair(tmp_path)
    try:
        compiled.write(Batch(requests=[make_request(n) for n in range(3)]))
        reference.write(Batch(requests=[make_request(n) for n in range(3)]))
        assert compiled._rows is compiled_module()
        assert reference._rows is None
    finally:
        compiled.close()
        reference.close()


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 1023, 1024, 1025, 2 * 1024 + 64 * 3 + 5])
def test_every_record_is_stored_as_the_sqlite3_module_stores_it(tmp_path: Path, count: int) -> None:
    records = [make_request(n, path=f"/items/{n}é" if n % 7 else "/items") for n in range(count)]
    assert len(store_both(tmp_path, records)) == count


@st.composite
def batches(draw: st.DrawFn) -> list[RequestRecord]:
    count = draw(st.sampled_from([1, 2, 63, 64, 65, 130, 1100]))
    records = [make_request(n) for n in range(count)]
    for _ in range(draw(st.integers(0, 3))):
        index = draw(st.integers(0, count - 1))
        field = draw(st.sampled_from(sorted(ODD)))
        records[index] = records[index]._replace(**{field: draw(st.sampled_from(ODD[field]))})
    return records


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=batches())
def test_odd_values_are_stored_or_refused_as_the_sqlite3_module_does(
    tmp_path_factory: pytest.TempPathFactory, records: list[RequestRecord]
) -> None:
    directory = tmp_path_factory.mktemp("pair")
    compiled, reference = open_pair(directory)
    try:
        assert outcome(compiled, Batch(requests=records)) == outcome(
            reference, Batch(requests=records)
        )
        # Both connections still work after a refusal (the batch rolled back).
        compiled.write(Batch(requests=[make_request(10_000)]))
        reference.write(Batch(requests=[make_request(10_000)]))
    finally:
        compiled.close()
        reference.close()
    assert stored(directory / "compiled.db") == stored(directory / "reference.db")


def _same_text(text: str) -> str:
    """``text`` (two characters or more: shorter ones are shared) as another
    object, equal, at another address."""
    copy = "".join(list(text))
    assert copy is not text
    return copy


#: Values the compiled inserts take, some equal in value, kind or address
#: only, so that a parameter often keeps its value from one statement to the
#: next and often changes in one of those only (the compiled inserts bind
#: only what changed). Some pairs SQLite stores alike in these columns (1
#: and "1" as text, 0 and 0.0 as an integer); the others show a bind skipped
#: wrongly: 1 and 1.0 as text ('1', '1.0'), texts of one length, floats one
#: bit apart, None and a value.
REBOUND: dict[str, list[Any]] = {
    "ttfb_ms": [None, 0.1, math.nextafter(0.1, 1.0), 1, 2.5],
    "client_ip": [None, "ab", _same_text("ab"), "ba", 1, 1.0],
    "error": ["", "ab", _same_text("ab"), "ba", 1, 1.0, 0.5],
    "request_bytes": [0, 0.0, 1, "1", 2**40],
    "method": ["GET", _same_text("GET"), "PUT"],
}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.sampled_from([2 * 64 + 5, 1024 + 64 + 3]),
    seed=st.integers(0, 2**32),
    fields=st.lists(st.sampled_from(sorted(REBOUND)), min_size=1, max_size=3, unique=True),
    choices=st.integers(1, 3),
)
def test_parameters_are_bound_again_whenever_their_value_or_kind_changes(
    tmp_path_factory: pytest.TempPathFactory,
    count: int,
    seed: int,
    fields: list[str],
    choices: int,
) -> None:
    """The compiled inserts skip binding a parameter whose value is bound
    already (same kind, same bits, same text at the same address); whatever
    the values repeat or change between statements and chunks, every row is
    stored as the sqlite3 module stores it."""
    chance = random.Random(seed)
    pools = {
        field: chance.sample(REBOUND[field], min(choices, len(REBOUND[field]))) for field in fields
    }
    records = [
        make_request(n)._replace(**{field: chance.choice(pool) for field, pool in pools.items()})
        for n in range(count)
    ]
    store_both(tmp_path_factory.mktemp("rebound"), records)


@pytest.mark.parametrize(
    ("field", "first", "second"),
    [
        ("error", 1, 1.0),
        ("error", "ab", "ba"),
        ("client_ip", 2, 2.5),
        ("client_ip", None, ""),
        ("ttfb_ms", 0.1, math.nextafter(0.1, 1.0)),
        ("ttfb_ms", None, 0.0),
    ],
)
def test_a_parameter_whose_value_changes_only_in_kind_or_bits_is_bound_again(
    tmp_path: Path, field: str, first: Any, second: Any
) -> None:
    """Statements alternate between two values that a looser comparison would
    take for one; the second statement of each pair must store its own."""
    statements = 2 * 4 + 1
    records = [
        make_request(n)._replace(**{field: first if n // ROWS_PER_INSERT % 2 == 0 else second})
        for n in range(statements * ROWS_PER_INSERT)
    ]
    store_both(tmp_path, records)


@pytest.mark.parametrize("odd", [0, 63, 64, 130, 1023, 1024, 1100, 1199])
def test_a_value_left_to_the_sqlite3_module_stops_the_compiled_inserts_before_its_statement(
    tmp_path: Path, odd: int
) -> None:
    compiled, _ = open_pair(tmp_path)
    records = [make_request(n) for n in range(1200)]
    records[odd] = records[odd]._replace(status=True)  # bound by the sqlite3 module
    try:
        taken = compiled_insert(compiled, records, then="ROLLBACK")
        # Whole statements only: the sqlite3 module binds the rows from there
        # in the statements it would have used for them from the start.
        assert taken == odd - odd % ROWS_PER_INSERT
        compiled.write(Batch(requests=records))
    finally:
        compiled.close()
    assert len(stored(tmp_path / "compiled.db")) == 1200


def test_a_refusal_comes_from_the_statement_the_sqlite3_module_would_have_run(
    tmp_path: Path,
) -> None:
    """A NaN where NOT NULL (refused by SQLite as the statement runs) before a
    lone surrogate in the same 64 rows (refused by the sqlite3 module as it
    binds): the sqlite3 module binds that statement, so the error is its."""
    compiled, reference = open_pair(tmp_path)
    records = [make_request(n) for n in range(100)]
    records[3] = records[3]._replace(duration_ms=math.nan)
    records[5] = records[5]._replace(route="/caf\udce9")
    try:
        found = outcome(compiled, Batch(requests=records))
        assert found == outcome(reference, Batch(requests=records))
        assert found is not None and found[0] == "UnicodeEncodeError"
    finally:
        compiled.close()
        reference.close()


def test_an_error_of_sqlite_is_the_one_the_sqlite3_module_raises(tmp_path: Path) -> None:
    compiled, reference = open_pair(tmp_path)
    try:
        for sink in (compiled, reference):
            sink.write(Batch(requests=[make_request(0)]))  # opened and migrated
            sink._connect().execute("PRAGMA query_only = 1")
        errors = []
        for sink in (compiled, reference):
            with pytest.raises(sqlite3.OperationalError) as caught:
                sink.write(Batch(requests=[make_request(n) for n in range(1, 100)]))
            errors.append(str(caught.value))
        assert errors[0] == errors[1] == "attempt to write a readonly database"
    finally:
        compiled.close()
        reference.close()


def test_error_codes_map_to_the_sqlite3_module_exceptions() -> None:
    assert type(sqlite_rows.error_for(19 | (5 << 8), "x")) is sqlite3.IntegrityError
    assert type(sqlite_rows.error_for(5, "locked")) is sqlite3.OperationalError
    assert type(sqlite_rows.error_for(11, "x")) is sqlite3.DatabaseError
    assert type(sqlite_rows.error_for(18, "x")) is sqlite3.DataError
    assert type(sqlite_rows.error_for(21, "x")) is sqlite3.InterfaceError
    assert type(sqlite_rows.error_for(7, "x")) is MemoryError
    assert type(sqlite_rows.error_for(99, "x")) is sqlite3.DatabaseError


def test_a_handle_that_names_no_file_is_not_trusted(tmp_path: Path) -> None:
    module = compiled_module()
    memory = sqlite3.connect(":memory:")
    try:
        assert sqlite_rows.compiled_rows(memory, module) is None
    finally:
        memory.close()
    on_file = sqlite3.connect(tmp_path / "x.db")
    assert sqlite_rows.compiled_rows(on_file, module) is module
    assert module.sqlite_filename(on_file) == str(tmp_path / "x.db")
    on_file.close()
    assert module.sqlite_filename(on_file) is None  # closed: no handle
    with pytest.raises(ValueError, match="closed"):
        module.sqlite_insert_rows(on_file, INSERT_REQUESTS, INSERT_REQUEST, 64, 12, [], 0, 0.0, 0.0)
    with pytest.raises(TypeError):
        module.sqlite_filename(object())
    assert sqlite_rows.compiled_rows(on_file, None) is None


def test_statements_that_do_not_fit_the_shape_are_refused(tmp_path: Path) -> None:
    module = compiled_module()
    connection = sqlite3.connect(tmp_path / "x.db")
    connection.execute("CREATE TABLE t (a, b)")
    try:
        assert sqlite_rows.compiled_rows(connection, module) is module
        with pytest.raises(ValueError, match="do not fit"):
            module.sqlite_insert_rows(
                connection, "INSERT INTO t VALUES (?, ?)", "INSERT INTO t VALUES (?, ?)",
                64, 2, [(1, 2)], 0, 0.0, 0.0,
            )  # fmt: skip
        with pytest.raises(ValueError, match="shape"):
            module.sqlite_insert_rows(
                connection, "INSERT INTO t VALUES (?, ?)", "INSERT INTO t VALUES (?, ?)",
                3, 2, [(1, 2)], 0, 0.0, 0.0,
            )  # fmt: skip
        done, code, message = module.sqlite_insert_rows(
            connection, "INSERT INTO nowhere VALUES (?, ?)", "INSERT INTO t VALUES (?, ?)",
            1, 2, [(1, 2)], 0, 0.0, 0.0,
        )  # fmt: skip
        assert (done, code) == (0, 1) and "no such table" in message
    finally:
        connection.close()


def test_the_gil_is_released_while_sqlite_takes_the_rows(tmp_path: Path) -> None:
    """A thread that waits in short steps runs while a large insert is under way,
    with a switch interval so long that only a released GIL lets it in."""
    compiled, _ = open_pair(tmp_path)
    records = [make_request(n) for n in range(60_000)]
    ticks = [0]
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.0002):
            ticks[0] += 1

    connection = compiled._connect()
    ticker = threading.Thread(target=tick)
    interval = sys.getswitchinterval()
    ticker.start()
    sys.setswitchinterval(30.0)
    try:
        connection.execute("BEGIN IMMEDIATE")
        before = ticks[0]
        taken = sqlite_rows.insert(
            compiled_module(), connection, INSERT_REQUESTS, INSERT_REQUEST,
            ROWS_PER_INSERT, len(REQUEST_COLUMNS), records, 0.0,
        )  # fmt: skip
        during = ticks[0] - before
        connection.execute("COMMIT")
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        ticker.join()
        compiled.close()
    assert taken == len(records)
    assert during >= 5


def test_sqlite_work_pauses_between_slices(tmp_path: Path) -> None:
    """With slices of no length, a pause after every statement: 50 statements of
    64 rows, each followed by 2 ms of sleep, last at least 100 ms."""
    module = compiled_module()
    connection = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    connection.execute("CREATE TABLE t (a, b)")
    rows = [(n, "x") for n in range(50 * 64)]
    many = "INSERT INTO t VALUES " + ", ".join(["(?, ?)"] * 64)
    try:
        began = time.perf_counter()
        done, code, _ = module.sqlite_insert_rows(
            connection, many, "INSERT INTO t VALUES (?, ?)", 64, 2, rows, 0, 0.0, 0.002
        )
        assert time.perf_counter() - began >= 0.1
        assert (done, code) == (len(rows), 0)
        for bad in ((-1.0, 0.0), (0.0, -0.5), (0.0, 1.0), (math.nan, 0.0)):
            with pytest.raises(ValueError, match="slice or pause"):
                module.sqlite_insert_rows(
                    connection, many, "INSERT INTO t VALUES (?, ?)", 64, 2, rows, 0, *bad
                )
    finally:
        connection.close()


def test_an_adapter_for_a_type_bound_in_c_sends_the_rows_to_the_sqlite3_module(
    tmp_path: Path,
) -> None:
    """The sqlite3 module calls an adapter registered for str, int or float on
    every such value; the compiled inserts would not, so they step aside."""
    compiled, reference = open_pair(tmp_path)
    records = [make_request(n) for n in range(100)]
    key = (float, sqlite3.PrepareProtocol)
    sqlite3.register_adapter(float, lambda value: round(value, 1))
    try:
        assert sqlite_rows.adapted()
        compiled.write(Batch(requests=records))
        reference.write(Batch(requests=records))
    finally:
        del sqlite3.adapters[key]
        compiled.close()
        reference.close()
    assert not sqlite_rows.adapted()
    assert stored(tmp_path / "compiled.db") == stored(tmp_path / "reference.db")
    # The adapter ran: 1_700_000_000.125 was stored rounded.
    assert stored(tmp_path / "compiled.db")[1][2] == (float, round(1_700_000_000.125, 1).hex())


def test_a_compiled_module_that_does_not_fit_is_dropped_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A build of the module older than this code (its inserts take other
    arguments): the call fails before any row is written, the sqlite3 module
    binds this batch and every later one, and the failure is logged."""
    module = compiled_module()
    stale = types.SimpleNamespace(
        sqlite_rows_init=module.sqlite_rows_init,
        sqlite_filename=module.sqlite_filename,
        sqlite_insert_rows=lambda *args: module.sqlite_insert_rows(*args[:7]),
    )
    sink = SQLiteSink(str(tmp_path / "stale.db"))
    sink.use_compiled(stale)  # type: ignore[arg-type]
    try:
        sink.write(Batch(requests=[make_request(n) for n in range(100)]))
        assert sink._rows is None
        sink.write(Batch(requests=[make_request(n) for n in range(100, 300)]))
    finally:
        sink.close()
    assert len(stored(tmp_path / "stale.db")) == 300
    assert "compiled SQLite inserts failed" in caplog.text


# -- the statements kept between calls (sqlite_rows_cache) -----------------------

MANY_T = "INSERT INTO t VALUES " + ", ".join(["(?, ?)"] * 64)
ONE_T = "INSERT INTO t VALUES (?, ?)"


def prepared_inserts(connection: sqlite3.Connection) -> list[int]:
    """Counts SQLite's compilations of an INSERT on ``connection``: its
    authorizer is asked at prepare time only, never at a step."""
    prepared: list[int] = []

    def authorize(action: int, *_: object) -> int:
        if action == sqlite3.SQLITE_INSERT:
            prepared.append(action)
        return sqlite3.SQLITE_OK

    connection.set_authorizer(authorize)
    return prepared


def file_with_table(path: Path, table: str = "CREATE TABLE t (a, b)") -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(table)
    assert sqlite_rows.compiled_rows(connection, compiled_module()) is compiled_module()
    return connection


def count(path: Path, sql: str) -> tuple[Any, ...]:
    with sqlite3.connect(path) as check:
        found = check.execute(sql).fetchone()
    check.close()
    return tuple(found)


def test_kept_statements_are_prepared_once_per_connection(tmp_path: Path) -> None:
    """Three calls with one cache prepare the two statements once; a call
    without a cache prepares its own; rows land in the file of the
    connection given, also when the cache was filled on another one."""
    module = compiled_module()
    first, second = file_with_table(tmp_path / "a.db"), file_with_table(tmp_path / "b.db")
    cache = sqlite_rows.statement_cache(module)
    try:
        prepared = prepared_inserts(first)
        rows = [(n, "x") for n in range(130)]
        for _ in range(3):
            assert module.sqlite_insert_rows(
                first, MANY_T, ONE_T, 64, 2, rows, 0, 0.0, 0.0, cache
            ) == (130, 0, None)
        assert len(prepared) == 2
        module.sqlite_insert_rows(first, MANY_T, ONE_T, 64, 2, rows, 0, 0.0, 0.0)
        assert len(prepared) == 4
        # Another connection: its own statements, and the rows in its file.
        done = module.sqlite_insert_rows(
            second, MANY_T, ONE_T, 64, 2, rows[:70], 0, 0.0, 0.0, cache
        )
        assert done == (70, 0, None)
        # Other statements on the first connection again: prepared anew.
        one_b = "INSERT INTO t (b, a) VALUES (?, ?)"
        many_b = "INSERT INTO t (b, a) VALUES " + ", ".join(["(?, ?)"] * 64)
        done = module.sqlite_insert_rows(
            first, many_b, one_b, 64, 2, [("y", 1)] * 65, 0, 0.0, 0.0, cache
        )
        assert done == (65, 0, None) and len(prepared) == 6
    finally:
        del cache
        first.close()
        second.close()
    assert count(tmp_path / "a.db", "SELECT count(*), count(DISTINCT a) FROM t WHERE b = 'x'") == (
        520,
        130,
    )
    assert count(tmp_path / "a.db", "SELECT count(*) FROM t WHERE b = 'y' AND a = 1") == (65,)
    assert count(tmp_path / "b.db", "SELECT count(*) FROM t") == (70,)


def test_a_call_while_the_cache_is_in_use_prepares_its_own(tmp_path: Path) -> None:
    """A call made while another one holds the cache (here from a function
    SQLite calls back during the first call's step, on the same connection)
    prepares statements of its own, and leaves the cache to the first: a
    third call with the first's statements prepares nothing."""
    module = compiled_module()
    connection = file_with_table(tmp_path / "a.db", "CREATE TABLE u (a, b)")
    cache = sqlite_rows.statement_cache(module)
    inner: list[tuple[int, int, object]] = []
    many_u = "INSERT INTO u VALUES " + ", ".join(["(?, ?)"] * 64)

    def reenter(_: object) -> int:
        if not inner:
            rows = [(n, "in") for n in range(70)]
            one_u = "INSERT INTO u VALUES (?, ?)"
            arguments = (connection, many_u, one_u, 64, 2, rows, 0, 0.0, 0.0, cache)
            inner.append(module.sqlite_insert_rows(*arguments))
        return 1

    connection.create_function("reenter", 1, reenter, deterministic=True)
    connection.execute("CREATE TABLE t (a, b CHECK (reenter(b)))")
    prepared = prepared_inserts(connection)
    try:
        rows = [(n, "x") for n in range(130)]
        done = module.sqlite_insert_rows(connection, MANY_T, ONE_T, 64, 2, rows, 0, 0.0, 0.0, cache)
        assert done == (130, 0, None) and inner == [(70, 0, None)]
        assert len(prepared) == 4  # t's two, then u's two
        done = module.sqlite_insert_rows(connection, MANY_T, ONE_T, 64, 2, rows, 0, 0.0, 0.0, cache)
        assert done == (130, 0, None) and len(prepared) == 4
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (260,)
        assert connection.execute("SELECT count(*) FROM u").fetchone() == (70,)
    finally:
        connection.close()


def test_threads_sharing_a_connection_and_a_cache_do_not_deadlock(tmp_path: Path) -> None:
    """Three threads insert on one connection with one cache while an
    authorizer (Python that SQLite calls with the connection's mutex held)
    runs at every prepare: every call the inserts make that takes that mutex
    runs without the GIL, or a thread holding the GIL would wait for the
    mutex while the mutex's holder waits for the GIL. A deadlock would also
    stop the test's own timeout, which needs the GIL: faulthandler's
    watchdog ends the process instead."""
    module = compiled_module()
    connection = file_with_table(tmp_path / "a.db")
    cache = sqlite_rows.statement_cache(module)
    prepared = prepared_inserts(connection)
    results: list[tuple[int, int, object]] = []

    def insert(base: int) -> None:
        rows = [(base + n, "x") for n in range(64 * 200)]
        results.append(
            module.sqlite_insert_rows(connection, MANY_T, ONE_T, 64, 2, rows, 0, 0.0, 0.0, cache)
        )

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        threads = [
            threading.Thread(target=insert, args=(base,), daemon=True)
            for base in (0, 10**6, 2 * 10**6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive()
        assert results == [(64 * 200, 0, None)] * 3
        assert 2 <= len(prepared) <= 6  # each call the cache's, or its own
        assert connection.execute("SELECT count(*), count(DISTINCT a) FROM t").fetchone() == (
            3 * 64 * 200,
            3 * 64 * 200,
        )
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.setswitchinterval(interval)
        connection.close()


def test_a_cache_is_checked(tmp_path: Path) -> None:
    module = compiled_module()
    connection = file_with_table(tmp_path / "a.db")
    try:
        for wrong in (object(), "cache", 1):
            with pytest.raises((TypeError, ValueError)):
                module.sqlite_insert_rows(connection, MANY_T, ONE_T, 64, 2, [], 0, 0.0, 0.0, wrong)
        # None: no cache, as with nine arguments.
        assert module.sqlite_insert_rows(
            connection, MANY_T, ONE_T, 64, 2, [(1, 2)], 0, 0.0, 0.0, None
        ) == (1, 0, None)
    finally:
        connection.close()


def test_an_error_is_reported_with_kept_statements(tmp_path: Path) -> None:
    """A statement SQLite refuses midway (a NOT NULL column): its code and
    message, as without a cache; the cache serves the next call."""
    module = compiled_module()
    connection = file_with_table(tmp_path / "a.db", "CREATE TABLE t (a NOT NULL, b)")
    cache = sqlite_rows.statement_cache(module)
    try:
        rows = [(n, "x") for n in range(200)]
        rows[150] = (None, "x")
        for kept in (cache, cache, None):
            done, code, message = module.sqlite_insert_rows(
                connection, MANY_T, ONE_T, 64, 2, rows, 0, 0.0, 0.0, kept
            )
            assert (done, code) == (128, 1299)  # SQLITE_CONSTRAINT_NOTNULL
            assert message == "NOT NULL constraint failed: t.a"
        rows[150] = (150, "x")
        assert module.sqlite_insert_rows(
            connection, MANY_T, ONE_T, 64, 2, rows, 0, 0.0, 0.0, cache
        ) == (200, 0, None)
    finally:
        del cache
        connection.close()


def test_a_build_without_a_cache_keeps_its_compiled_inserts(tmp_path: Path) -> None:
    """A build of the module from before the cache takes nine arguments: the
    sink calls it with nine, and goes on using it."""
    module = compiled_module()
    calls: list[int] = []

    def nine_only(*args: Any) -> Any:
        calls.append(len(args))
        if len(args) != 9:
            raise TypeError("sqlite_insert_rows takes nine arguments")
        return module.sqlite_insert_rows(*args)

    older = types.SimpleNamespace(
        sqlite_rows_init=module.sqlite_rows_init,
        sqlite_filename=module.sqlite_filename,
        sqlite_insert_rows=nine_only,
    )
    sink = SQLiteSink(str(tmp_path / "older.db"))
    sink.use_compiled(older)  # type: ignore[arg-type]
    try:
        for first in (0, 100):
            sink.write(Batch(requests=[make_request(n) for n in range(first, first + 100)]))
        assert sink._rows is older and sink._statements is None
    finally:
        sink.close()
    assert calls == [9, 9]
    assert len(stored(tmp_path / "older.db")) == 200


def test_a_closed_sink_leaves_no_statement_open(tmp_path: Path) -> None:
    """After a write of whole statements the sink's close ends the file's use:
    SQLite removes the WAL file when its last connection closes, which a
    statement left unfinalized would keep open."""
    sink = SQLiteSink(str(tmp_path / "x.db"))
    sink.use_compiled(compiled_module())
    try:
        sink.write(Batch(requests=[make_request(n) for n in range(200)]))
        assert sink._statements is not None  # the compiled inserts kept their statements
        assert (tmp_path / "x.db-wal").exists()
    finally:
        sink.close()
    assert not (tmp_path / "x.db-wal").exists()
    assert len(stored(tmp_path / "x.db")) == 200


@pytest.mark.forks
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kept_statements_after_a_fork(tmp_path: Path) -> None:
    """A forked child leaves the parent's statements alone: dropping the
    parent's cache there finalizes nothing and keeps its reference to the
    parent's connection (the sink never closes that connection in a child),
    and the child writes through a connection and statements of its own. The
    parent goes on with its kept statements; every row of both is stored."""
    from tests.core.test_fork import run_in_child

    sink = SQLiteSink(str(tmp_path / "x.db"))
    sink.use_compiled(compiled_module())
    try:
        sink.write(Batch(requests=[make_request(n) for n in range(100)]))
        # The child empties it: there the parent's cache is then the sink's alone.
        kept = [sink._statements]
        parents = sink._connection

        def child() -> dict[str, Any]:
            kept.clear()
            before = sys.getrefcount(parents)
            sink._statements = None  # the parent's cache, dropped in the child
            gc.collect()
            left = sys.getrefcount(parents) - before
            sink.write(Batch(requests=[make_request(n) for n in range(1000, 1100)]))
            own = sink._connection is not parents and sink._statements is not None
            return {"ok": left == 0 and own, "left": left, "own": own}

        code, report = run_in_child(child)
        assert code == 0, report
        assert sink._statements is kept[0]
        sink.write(Batch(requests=[make_request(n) for n in range(2000, 2100)]))
        assert sink._statements is kept[0]
        kept.clear()
        # Here, in the process that prepared them, dropping the cache releases
        # its reference to the connection (the statements are finalized).
        before = sys.getrefcount(parents)
        sink._statements = None
        assert sys.getrefcount(parents) == before - 1
    finally:
        sink.close()
    assert len(stored(tmp_path / "x.db")) == 300


def test_statements_of_a_connection_left_behind_stay_with_it(tmp_path: Path) -> None:
    """A write from another thread (the one before was abandoned) opens a
    connection of its own; the statements kept on the old one are left with
    it, never finalized from here (that would wait for the old connection's
    mutex, which a hung write may hold)."""
    sink = SQLiteSink(str(tmp_path / "x.db"))
    sink.use_compiled(compiled_module())
    written, ended = threading.Event(), threading.Event()

    def first_writer() -> None:
        sink.write(Batch(requests=[make_request(n) for n in range(100)]))
        owned = sink._connection
        written.set()
        ended.wait(60)
        assert owned is not None
        owned.close()  # its own thread's to close, once the test is done with it

    writer = threading.Thread(target=first_writer, daemon=True)
    writer.start()
    try:
        assert written.wait(60)
        earlier = sink._statements
        assert earlier is not None
        sink.write(Batch(requests=[make_request(n) for n in range(100, 200)]))
        assert sink._statements is not earlier
        assert any(kept is earlier for kept in sink._left_behind)
    finally:
        sink.close()
        # The statements first (finalized here: nothing uses them now), then
        # their connection, by the thread that opened it.
        earlier = None
        sink._left_behind.clear()
        ended.set()
        writer.join(timeout=60)
        assert not writer.is_alive()
    assert len(stored(tmp_path / "x.db")) == 200

"""The SQLite request log's time blocks (``aegis_mw/sinks/sqlite_blocks.py``).

The request table has no index on ``timestamp``: a row per block of rows
stands for one. Every read through the blocks is held to a sort of every row
written to the real file, both ways of reading (newest first with a heap, and one
statement for a deep page) against the memory sink's, and the blocks' invariant (ranges that do not
overlap, every row in exactly one block whose time range holds it) is
checked after each kind of change: writes of every size, several writers,
retention, the log emptied, rows deleted by hand, the migration from the
per-row index.
"""

from __future__ import annotations

import itertools
import math
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mw import Batch, RequestRecord
from aegis_mw.core.history import RequestQuery
from aegis_mw.sinks import MemorySink, SQLiteSink, sqlite_blocks, sqlite_schema
from tests.conftest import compiled_module
from tests.sinks.test_sqlite import make_request, query

BLOCK = sqlite_blocks.BLOCK_ROWS


def record(number: int, timestamp: float, **changes: Any) -> RequestRecord:
    return make_request(number, timestamp=timestamp, **changes)


def check_blocks(path: Path) -> list[tuple[int, int, float, float]]:
    """The blocks, checked: ranges apart, every row in one block that holds
    its timestamp; returned in rowid order."""
    blocks = query(
        path,
        "SELECT first_row, last_row, time_min, time_max FROM aegis_request_blocks "
        "ORDER BY first_row",
    )
    for (_, last, _, _), (first, _, _, _) in itertools.pairwise(blocks):
        assert first > last, blocks
    for first, last, _, _ in blocks:
        assert first <= last
    rows = query(path, "SELECT rowid, timestamp FROM aegis_requests ORDER BY rowid")
    index = 0
    for rowid, timestamp in rows:
        while index < len(blocks) and blocks[index][1] < rowid:
            index += 1
        assert index < len(blocks), f"row {rowid} is in no block"
        first, last, time_min, time_max = blocks[index]
        assert first <= rowid <= last, f"row {rowid} is in no block"
        assert time_min <= timestamp <= time_max, (rowid, timestamp, blocks[index])
    return blocks


def expected(rows: list[RequestRecord], request: RequestQuery) -> list[RequestRecord]:
    """What a read must answer: the memory sink's, which filters and sorts
    every row in Python."""
    reference = MemorySink()
    reference.write(Batch(requests=rows))
    return reference.read_requests(request)


def queries(chance: random.Random, start: float, end: float, count: int) -> Iterator[RequestQuery]:
    span = end - start
    for _ in range(count):
        since = chance.choice([None, start + chance.random() * span])
        until = chance.choice([None, start + chance.random() * span * 1.2])
        yield RequestQuery(
            route=chance.choice([None, None, "/a", "/absent"]),
            method=chance.choice([None, "POST"]),
            status_from=chance.choice([None, 500]),
            min_duration_ms=chance.choice([None, None, 50.0]),
            since=since,
            until=until,
            limit=chance.choice([1, 7, 100, 1000]),
            offset=chance.choice([0, 0, 3, 900, 20_000]),
        )


def traffic(chance: random.Random, first: int, count: int, start: float) -> list[RequestRecord]:
    """Records of one write: times that go forward with some jitter, a few
    slow requests that started long before, ties in time."""
    rows = []
    for number in range(first, first + count):
        timestamp = start + (number - first) * 0.001 + chance.random() * 0.5
        if chance.random() < 0.02:
            timestamp -= chance.random() * 60  # a slow request, stored when it ended
        if chance.random() < 0.05:
            timestamp = math.floor(timestamp)  # ties, ordered by request id
        rows.append(
            record(
                number,
                timestamp,
                route=chance.choice(["/a", "/b", "/c"]),
                method=chance.choice(["GET", "GET", "POST"]),
                status=chance.choice([200, 200, 404, 500]),
                duration_ms=chance.random() * 100,
            )
        )
    return rows


@pytest.fixture(params=["as configured", "heap", "one statement"])
def read_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of reading, over every query: as the module chooses (small
    pages by the newest-first heap, deep ones by the statement), the heap
    alone, and the statement alone."""
    if request.param == "heap":
        monkeypatch.setattr(sqlite_blocks, "KEPT_AT_MOST", 10**9)
    elif request.param == "one statement":
        monkeypatch.setattr(sqlite_blocks, "KEPT_AT_MOST", 0)
    return str(request.param)


@pytest.mark.parametrize("compiled", [False, True], ids=["sqlite3 module", "compiled"])
def test_reads_equal_a_sort_of_every_row(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink], read_way: str, compiled: bool
) -> None:
    """Two processes' sinks on one file write batches of every size around a
    block's, with times overlapping between writers; every read, filtered
    or not, paged deep or not, answers what sorting every row does. The
    rows bound and the blocks' time ranges read by the compiled module or
    by the sqlite3 module and Python."""
    path = tmp_path / "aegis.db"
    writers = [sink_factory(path), sink_factory(path)]
    for writer in writers:
        writer.use_compiled(compiled_module() if compiled else None)
    chance = random.Random(7)
    rows: list[RequestRecord] = []
    number = 0
    start = 1_700_000_000.0
    for size in (1, 1, 3, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 5, 5000, 1, 70, 1):
        batch = traffic(chance, number, size, start)
        chance.choice(writers).write(Batch(requests=batch))
        rows.extend(batch)
        number += size
        start += chance.choice([0.5, 5.0, 40.0])
    check_blocks(path)
    reader = writers[0]
    for request in queries(chance, 1_700_000_000.0, start, 300):
        assert reader.read_requests(request) == expected(rows, request), request


def test_a_quiet_app_widens_its_newest_block(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """One request a write (a quiet second) widens the newest block until it
    holds BLOCK_ROWS rows: a few blocks, not one a second."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    count = 2 * BLOCK + 10
    for number in range(count):
        sink.write(Batch(requests=[record(number, 1_700_000_000.0 + number)]))
    blocks = check_blocks(path)
    assert [(first, last) for first, last, _, _ in blocks] == [
        (1, BLOCK),
        (BLOCK + 1, 2 * BLOCK),
        (2 * BLOCK + 1, count),
    ]
    assert blocks[0][2:] == (1_700_000_000.0, 1_700_000_000.0 + BLOCK - 1)
    newest = sink.read_requests(RequestQuery(limit=3))
    assert [row.request_id for row in newest] == [
        make_request(n).request_id for n in (count - 1, count - 2, count - 3)
    ]


def test_a_write_larger_than_a_block_is_cut_into_blocks(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A write of many rows fills the newest block's room, then makes blocks
    of BLOCK_ROWS rows, each with its own rows' time range."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    sink.write(Batch(requests=[record(0, 100.0)]))
    rows = [record(n, 100.0 + n) for n in range(1, 3 * BLOCK)]
    sink.write(Batch(requests=rows))
    blocks = check_blocks(path)
    assert [(first, last) for first, last, _, _ in blocks] == [
        (1, BLOCK),
        (BLOCK + 1, 2 * BLOCK),
        (2 * BLOCK + 1, 3 * BLOCK),
    ]
    assert [block[2:] for block in blocks] == [
        (100.0, 100.0 + BLOCK - 1),
        (100.0 + BLOCK, 100.0 + 2 * BLOCK - 1),
        (100.0 + 2 * BLOCK, 100.0 + 3 * BLOCK - 1),
    ]


def test_retention_deletes_expired_rows_then_their_blocks(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink], read_way: str
) -> None:
    """Pruned in small steps, expired rows go first and a block goes once it
    holds none; a block that straddles the horizon keeps its newer rows.
    Emptied, the log hands out rowid 1 again, and the blocks still hold."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    chance = random.Random(3)
    rows: list[RequestRecord] = []
    for write in range(6):
        batch = traffic(chance, write * 1500, 1500, 1_000.0 + write * 100)
        sink.write(Batch(requests=batch))
        rows.extend(batch)
    horizon = 1_250.0
    while sink.prune(horizon, {}, 700):
        check_blocks(path)
    rows = [row for row in rows if row.timestamp >= horizon]
    blocks = check_blocks(path)
    assert min(block[3] for block in blocks) >= horizon
    # A block that straddled the horizon now starts at it: no later prune or
    # read before the horizon looks into it again.
    assert min(block[2] for block in blocks) >= horizon
    assert sink.read_requests(RequestQuery(limit=1000)) == expected(rows, RequestQuery(limit=1000))
    for request in queries(chance, 1_000.0, 1_700.0, 50):
        assert sink.read_requests(request) == expected(rows, request), request

    while sink.prune(10_000.0, {}, 5000):
        pass
    assert query(path, "SELECT count(*) FROM aegis_request_blocks") == [(0,)]
    later = [record(n, 20_000.0 + n) for n in range(5)]
    sink.write(Batch(requests=later))
    assert query(path, "SELECT min(rowid) FROM aegis_requests") == [(1,)]
    check_blocks(path)
    assert sink.read_requests(RequestQuery()) == later[::-1]


def test_rows_deleted_at_the_top_cut_the_blocks_back(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """Rows deleted by hand at the end of the log: SQLite gives their rowids
    to the next rows, so the blocks are cut back first and no row is read
    twice or under another block's times."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    sink.write(Batch(requests=[record(n, 100.0 + n) for n in range(3 * BLOCK)]))
    connection = sqlite3.connect(path)
    connection.execute("DELETE FROM aegis_requests WHERE rowid > ?", (BLOCK + 10,))
    connection.commit()
    connection.close()
    later = [record(10_000 + n, 50.0 + n) for n in range(20)]  # earlier times, reused rowids
    sink.write(Batch(requests=later))
    check_blocks(path)
    rows = [record(n, 100.0 + n) for n in range(BLOCK + 10)] + later
    for request in (RequestQuery(limit=1000), RequestQuery(until=70.0), RequestQuery(since=1100.0)):
        assert sink.read_requests(request) == expected(rows, request)


def test_version_12_log_becomes_blocks_and_loses_its_index(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A file at version 12, its rows indexed by timestamp: the migration
    makes blocks of its rows, drops the index, and the log reads the same."""
    path = tmp_path / "aegis.db"
    connection = sqlite3.connect(path)
    connection.create_function("aegis_histogram_v3", 1, lambda text: text)
    for version in range(12):
        for statement in sqlite_schema.MIGRATIONS[version]:
            connection.execute(statement)
    chance = random.Random(5)
    old = traffic(chance, 0, 2500, 500.0)
    connection.executemany(
        f"INSERT INTO aegis_requests VALUES ({', '.join('?' * 12)})",
        [
            row[:12] for row in sorted(old, key=lambda row: row.timestamp)
        ],  # as version 4 copied them
    )
    connection.execute("PRAGMA user_version = 12")
    connection.commit()
    connection.close()
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'aegis_requests_timestamp'")

    sink = sink_factory(path)
    new = traffic(chance, 5000, 100, 600.0)
    sink.write(Batch(requests=new))
    assert query(path, "PRAGMA user_version") == [(sqlite_schema.SCHEMA_VERSION,)]
    # The time index gone; a later version's partial index of server errors only.
    assert query(path, "SELECT name FROM sqlite_master WHERE tbl_name = 'aegis_requests' "
                       "AND type = 'index' ORDER BY name") == [
        ("aegis_requests_errors",), ("aegis_requests_trace",)]  # fmt: skip
    blocks = check_blocks(path)
    assert [(first, last) for first, last, _, _ in blocks[:3]] == [
        (1, 1023),  # rowid / 1024: the first group starts at 1
        (1024, 2047),
        (2048, 2600),  # 2048 to 2500, widened by the new write's 100 rows
    ]
    for request in queries(chance, 500.0, 700.0, 100):
        assert sink.read_requests(request) == expected([*old, *new], request), request


def test_timestamps_the_records_do_not_compare_are_read_back_by_sqlite(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """An int timestamp, text that SQLite stores as text, text that it
    stores as a number: the block's time range comes from SQLite where the
    records' are not all numbers, and the rows stay in their blocks."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    sink.write(Batch(requests=[record(1, 100.0), record(2, 150), record(3, 120.5)]))
    sink.write(Batch(requests=[record(4, 200.0), record(5, "soon")]))  # type: ignore[arg-type]
    blocks = query(path, "SELECT first_row, last_row, time_min, time_max FROM aegis_request_blocks")
    assert blocks == [(1, 5, 100.0, "soon")]
    # Text that SQLite stores as a number (REAL affinity) would compare as
    # text in Python ("99" > "150"): its range is SQLite's too.
    sink.write(Batch(requests=[record(n, 5000) for n in range(6, BLOCK + 1)]))
    sink.write(Batch(requests=[record(7000, "99"), record(7001, "150")]))  # type: ignore[arg-type]
    assert query(
        path, "SELECT time_min, time_max FROM aegis_request_blocks WHERE last_row = ?", BLOCK + 2
    ) == [(99.0, 150.0)]
    assert [
        row.request_id for row in sink.read_requests(RequestQuery(since=100.0, until=151.0))
    ] == [
        make_request(7001).request_id,  # "150", stored as 150.0: tied, the larger id first
        make_request(2).request_id,
        make_request(3).request_id,
        make_request(1).request_id,
    ]
    assert [
        row.request_id for row in sink.read_requests(RequestQuery(since=110.0, until=180.0))
    ] == [
        make_request(7001).request_id,
        make_request(2).request_id,
        make_request(3).request_id,
    ]


def test_reads_and_retention_use_the_blocks_indexes(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """The statements' plans: blocks found by an index on their times, rows
    by rowid range; never a scan of the request log."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    sink.write(Batch(requests=[record(1, 100.0)]))
    connection = sqlite3.connect(path)
    plans = {
        "blocks": connection.execute(
            "EXPLAIN QUERY PLAN " + sqlite_blocks._BLOCKS, (0.0, 1.0)
        ).fetchall(),
        "prune rows": connection.execute(
            "EXPLAIN QUERY PLAN " + sqlite_blocks.DELETE_REQUESTS, {"before": 0.0, "limit": 10}
        ).fetchall(),
        "prune blocks": connection.execute(
            "EXPLAIN QUERY PLAN " + sqlite_blocks.DELETE_BLOCKS, {"before": 0.0, "limit": 10}
        ).fetchall(),
        "raise time_min": connection.execute(
            "EXPLAIN QUERY PLAN " + sqlite_blocks.RAISE_TIME_MIN, {"before": 0.0, "limit": 10}
        ).fetchall(),
    }
    connection.close()
    text = {name: " | ".join(step[-1] for step in plan) for name, plan in plans.items()}
    assert "USING INDEX aegis_request_blocks_time_max" in text["blocks"], text
    assert "USING INDEX aegis_request_blocks_time_min" in text["prune rows"], text
    assert "USING INDEX aegis_request_blocks_time_max" in text["prune blocks"], text
    assert "USING INDEX aegis_request_blocks_time_min" in text["raise time_min"], text
    for name in ("prune rows", "prune blocks", "raise time_min"):
        assert "SCAN r" not in text[name] and "SCAN aegis_requests" not in text[name], text


def test_rows_a_writer_without_blocks_appended_are_taken_in(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A process of an older aegis_mw that had its connection open when the
    file was migrated appends rows without blocks: the next write, or the
    next prune, puts them in blocks, so they are read and pruned."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    sink.write(Batch(requests=[record(n, 100.0 + n) for n in range(10)]))
    older = [record(100 + n, 200.0 + n) for n in range(BLOCK + 5)]
    connection = sqlite3.connect(path)
    connection.executemany(f"INSERT INTO aegis_requests VALUES ({', '.join('?' * 14)})", older)
    connection.commit()
    assert sink.prune(0.0, {}, 100) == 0  # nothing expired: the rows are only taken in
    blocks = check_blocks(path)
    assert blocks[-1][1] == 10 + BLOCK + 5
    connection.executemany(
        f"INSERT INTO aegis_requests VALUES ({', '.join('?' * 14)})", [record(4999, 50.0)]
    )
    connection.commit()
    connection.close()
    sink.write(Batch(requests=[record(5000, 300.0)]))
    check_blocks(path)
    rows = [
        *(record(n, 100.0 + n) for n in range(10)),
        *older,
        record(4999, 50.0),
        record(5000, 300.0),
    ]
    for request in (RequestQuery(limit=1000), RequestQuery(until=60.0), RequestQuery(since=250.0)):
        assert sink.read_requests(request) == expected(rows, request)
    while sink.prune(150.0, {}, 400):
        pass
    assert query(path, "SELECT count(*) FROM aegis_requests WHERE timestamp < 150") == [(0,)]


def test_a_limit_of_zero_reads_nothing(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink], read_way: str
) -> None:
    sink = sink_factory(tmp_path / "aegis.db")
    sink.write(Batch(requests=[record(1, 100.0)]))
    assert sink.read_requests(RequestQuery(limit=0)) == []
    assert sink.read_requests(RequestQuery(limit=0, offset=20_000)) == []


# -- the compiled time range, against Python's min() and max() ---------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, math.nan])


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(FLOATS | st.integers(-5, 5) | st.none(), min_size=1, max_size=40),
    bounds=st.tuples(st.integers(0, 40), st.integers(1, 40)),
)
def test_compiled_time_range_is_pythons(values: list[Any], bounds: tuple[int, int]) -> None:
    """Over floats (NaN and signed zeros in any place), ints and None:
    the compiled loop answers what min() and max() do, the very objects, or
    hands the slice to Python (None), which takes numbers only."""
    module = compiled_module()
    records = [(str(index), value) for index, value in enumerate(values)]
    start = min(bounds[0], len(records) - 1)
    stop = min(max(bounds[1], start + 1), len(records))
    found = module.column_range(records, 1, start, stop)
    part = [value for _, value in records[start:stop]]
    if all(type(value) is float for value in part):
        assert found is not None
        assert found[0] is min(part) and found[1] is max(part)
    else:
        assert found is None
    assert sqlite_blocks.time_range(records, start, stop, module.column_range) == _python(part)


def _python(part: list[Any]) -> tuple[Any, Any] | None:
    """min() and max() of numbers; None (SQLite reads the range back) else."""
    if all(type(value) in (float, int) for value in part):
        return min(part), max(part)
    return None


def test_compiled_time_range_refuses_what_it_does_not_read() -> None:
    module = compiled_module()
    rows = [("a", 1.0), ("b", 2.0)]
    assert module.column_range([("a", 1.0), ["b", 2.0]], 1, 0, 2) is None  # a list, not a tuple
    assert module.column_range([("a",), ("b", 2.0)], 1, 0, 2) is None  # too short
    assert module.column_range(rows, 1, 1, 2) == (2.0, 2.0)
    for arguments in ((rows, 1, 0, 3), (rows, 1, 1, 1), (rows, -1, 0, 1), (rows, 1, -1, 1)):
        with pytest.raises(ValueError, match="bad column or bounds"):
            module.column_range(*arguments)
    with pytest.raises(TypeError):
        module.column_range(tuple(rows), 1, 0, 1)
    with pytest.raises(TypeError):
        module.column_range(rows, 1, 0)

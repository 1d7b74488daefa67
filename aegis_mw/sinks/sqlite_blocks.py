"""The SQLite request log's time blocks: its time index, one row per block.

A per-row index on ``timestamp`` cost a third of a request row's insert
(``bench/pipeline.py``). Instead, each write records the rowid range it
appended and the range of its rows' timestamps in ``aegis_request_blocks``,
one row per block of at most :data:`BLOCK_ROWS` rows (schema version 13),
widening the newest block while it has room, so a quiet app does not make a
block per second. Reads find the blocks that overlap a time range and read
their rows by rowid range, which a rowid table does without an index.

Invariant, kept by :func:`settle` and :func:`after_insert`: the blocks'
rowid ranges do not overlap, and every row of the log lies in the one block
whose time range holds its timestamp. Rows are appended past the largest
rowid; when rows at the top were deleted (the table emptied by retention,
say), SQLite hands out their rowids again, so the blocks are cut back to
the largest rowid before every write; rows appended by something that
keeps no blocks (an older aegis_mw still connected) are put in blocks at
the next write or prune. A row inserted by hand among older rows is in no
block: reads and retention do not see it.

Newest first with a small page (the request log's usual read) reads blocks
from the latest ``time_max`` down and stops when no later block can hold a
row newer than the rows kept (:func:`read_newest`); past :data:`KEPT_AT_MOST`
rows (offset plus limit) one statement lets SQLite sort, in bounded memory,
the rows from a time found by counting blocks (:func:`read_far`). Columns of
the log are written behind a unary ``+`` in every statement, so that SQLite
finds rows by rowid range only and never builds an index over the whole log
for one statement.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ..core.history import RequestQuery
from . import history_sql
from .sqlite_schema import REQUEST_COLUMNS

#: Rows a block grows to before a write starts a new one; a read of any
#: range reads at most this many rows of a block it only touches.
BLOCK_ROWS = 1024
#: Row keys the newest-first read keeps (offset plus limit); a deeper page
#: is read by :func:`read_far`, which is faster from about there on (on
#: 300,000 rows: offset 990, 1.8 ms against 3.3; offset 90, 1.1 against 0.8).
KEPT_AT_MOST = 500
#: Blocks read per step of :func:`read_newest`, at most (the steps double up to it).
BLOCKS_PER_STEP = 32
#: Bound parameters per ``IN`` list: under the 999 of SQLite before 3.32.
_IN_LIST = 500

#: ``_hotpath.column_range``: (records, column, start, stop) -> (min, max) or None.
ColumnRange = Callable[[list[Any], int, int, int], "tuple[Any, Any] | None"]

_NUMBERS = frozenset({float, int})

_LAST_ROW = "SELECT max(rowid) FROM aegis_requests"
# Blocks wholly past the last row, then the one reaching past it, cut back.
# Numbered placeholders (?1) with a sequence of values are deprecated from
# Python 3.12 on (an error from 3.14): plain ones, values repeated.
_DROP_PAST = "DELETE FROM aegis_request_blocks WHERE last_row > ? AND first_row > ?"
_CUT_BACK = "UPDATE aegis_request_blocks SET last_row = ? WHERE last_row > ?"
_NEWEST_END = "SELECT max(last_row) FROM aegis_request_blocks"
# Rows past ?, in blocks of BLOCK_ROWS rowids counted from it (the value
# repeated: see above).
_ADOPT = (
    "INSERT INTO aegis_request_blocks (last_row, first_row, time_min, time_max) "
    "SELECT max(rowid), min(rowid), min(timestamp), max(timestamp) FROM aegis_requests "
    f"WHERE rowid > ? GROUP BY (rowid - ? - 1) / {BLOCK_ROWS:d}"
)
_APPENDED = (
    "SELECT min(timestamp), max(timestamp) FROM aegis_requests WHERE rowid > ? AND rowid <= ?"
)
_NEWEST = "SELECT first_row FROM aegis_request_blocks WHERE last_row = ?"
_WIDEN = (
    "UPDATE aegis_request_blocks SET last_row = ?, time_min = min(time_min, ?), "
    "time_max = max(time_max, ?) WHERE last_row = ?"
)
_ADD = (
    "INSERT INTO aegis_request_blocks (first_row, last_row, time_min, time_max) VALUES (?, ?, ?, ?)"
)

_COLUMNS = ", ".join(REQUEST_COLUMNS)
# Blocks by their time_max index, latest first (the + keeps SQLite from
# taking the time_min index instead, which ``until`` alone would favour).
_BLOCKS = (
    "SELECT first_row, last_row, time_max FROM aegis_request_blocks "
    "WHERE time_max >= ? AND +time_min < ? ORDER BY time_max DESC"
)
_FAR_BLOCKS = (
    "SELECT first_row, last_row, time_min FROM aegis_request_blocks "
    "WHERE time_max >= ? AND +time_min < ? ORDER BY time_max DESC"
)

#: Retention, in steps of at most ``limit`` rows: the expired rows of the
#: blocks that begin before the horizon; then the blocks that end after it
#: and hold no expired row any more start at it (a slow request's early
#: start no longer makes every prune and read look into them); then the
#: blocks that ended before it and hold no expired row go. Bound by name
#: (``before``, ``limit``).
DELETE_REQUESTS = (
    "DELETE FROM aegis_requests WHERE rowid IN (SELECT r.rowid FROM aegis_request_blocks AS b "
    "CROSS JOIN aegis_requests AS r ON r.rowid BETWEEN b.first_row AND b.last_row "
    "WHERE b.time_min < :before AND +r.timestamp < :before LIMIT :limit)"
)
RAISE_TIME_MIN = (
    "UPDATE aegis_request_blocks SET time_min = :before WHERE last_row IN (SELECT b.last_row "
    "FROM aegis_request_blocks AS b WHERE b.time_min < :before AND b.time_max >= :before "
    "AND NOT EXISTS (SELECT 1 FROM aegis_requests AS r "
    "WHERE r.rowid BETWEEN b.first_row AND b.last_row AND +r.timestamp < :before) LIMIT :limit)"
)
DELETE_BLOCKS = (
    "DELETE FROM aegis_request_blocks WHERE last_row IN (SELECT b.last_row "
    "FROM aegis_request_blocks AS b WHERE b.time_max < :before AND NOT EXISTS ("
    "SELECT 1 FROM aegis_requests AS r WHERE r.rowid BETWEEN b.first_row AND b.last_row "
    "AND +r.timestamp < :before) LIMIT :limit)"
)


def settle(connection: sqlite3.Connection) -> int:
    """Make the blocks end at the log's largest rowid, and return it (0 for
    an empty log): blocks past it cut back, rows past the newest block put
    in blocks of their own. Before each write, inside its transaction; its
    answer is where the write's rows begin (see :func:`after_insert`).

    Such rows were appended by something that keeps no blocks: a process of
    an aegis_mw before schema version 13 that still had its connection open
    when the file was migrated (its schema is checked when it connects). Read
    back by SQLite, once; every write starts with two lookups at the ends of
    their indexes.
    """
    last = connection.execute(_LAST_ROW).fetchone()[0] or 0
    connection.execute(_DROP_PAST, (last, last))
    connection.execute(_CUT_BACK, (last, last))
    newest = connection.execute(_NEWEST_END).fetchone()[0] or 0
    if newest < last:
        connection.execute(_ADOPT, (newest, newest))
    return int(last)


def after_insert(
    connection: sqlite3.Connection,
    before: int,
    records: Sequence[Sequence[Any]],
    column_range: ColumnRange | None = None,
) -> None:
    """Record the rows appended past ``before`` (``records``, in the order
    inserted): the newest block, when it ends there, is widened up to
    :data:`BLOCK_ROWS` rows, and the rest become blocks of that many.

    The rows took the rowids after ``before`` one by one (the write holds the
    file's lock), so a block's time range is that of its records
    (:func:`time_range`). Should the count disagree, or a timestamp not be a
    number, SQLite reads the range back from the rows.
    """
    last = connection.execute(_LAST_ROW).fetchone()[0] or 0
    if last <= before:
        return
    counted = last == before + len(records)
    newest = connection.execute(_NEWEST, (before,)).fetchone() if before else None
    room = BLOCK_ROWS - (before - newest[0] + 1) if newest is not None else 0
    edge = before + max(room, 0)
    spans = [(before, min(edge, last))] if room > 0 else []
    spans.extend((low, min(low + BLOCK_ROWS, last)) for low in range(edge, last, BLOCK_ROWS))
    for low, high in spans:
        found = time_range(records, low - before, high - before, column_range) if counted else None
        if found is None:
            found = connection.execute(_APPENDED, (low, high)).fetchone()
        if low == before and room > 0:
            connection.execute(_WIDEN, (high, *found, before))
        else:
            connection.execute(_ADD, (low + 1, high, *found))


def time_range(
    records: Sequence[Sequence[Any]],
    start: int,
    stop: int,
    column_range: ColumnRange | None = None,
) -> tuple[Any, Any] | None:
    """The smallest and largest timestamp of ``records[start:stop]``, or None
    when they are not all numbers. The compiled loop (``column_range.c``), where
    offered, reads a list of tuples of floats without building one: a
    quarter of the Python code's 0.1 µs a row."""
    if column_range is not None and type(records) is list:
        try:
            found = column_range(records, 1, start, stop)
        except (TypeError, ValueError):  # a build that does not fit this code
            found = None
        if found is not None:
            return found
    timestamps = [record[1] for record in records[start:stop]]
    # Numbers only: text compares as text here, and SQLite may have stored
    # it as a number (REAL affinity); anything else is read back from SQLite.
    if not set(map(type, timestamps)) <= _NUMBERS:
        return None
    return min(timestamps), max(timestamps)


def _filters(query: RequestQuery) -> tuple[str, list[object]]:
    """The query's clauses on the rows (its time range included), as `` AND ...``."""
    # The columns behind a unary +: no index on them, so SQLite never builds
    # one over the whole log for a statement (an automatic index); rows are
    # found by rowid range only.
    clauses, params = history_sql.request_filters(history_sql.SQLITE, query, prefix="+r.")
    return "".join(f" AND {clause}" for clause in clauses), params


def _time_bounds(query: RequestQuery) -> tuple[float, float]:
    since = float("-inf") if query.since is None else query.since
    until = float("inf") if query.until is None else query.until
    return since, until


def read_requests(connection: sqlite3.Connection, query: RequestQuery) -> list[tuple[Any, ...]]:
    """The rows ``query`` asks for, newest first (timestamp, then request id,
    descending), in one read transaction."""
    if query.limit <= 0:
        return []
    connection.execute("BEGIN")
    try:
        if query.offset + query.limit > KEPT_AT_MOST:
            return read_far(connection, query)
        return read_newest(connection, query)
    finally:
        if connection.in_transaction:
            connection.execute("COMMIT")


def read_far(connection: sqlite3.Connection, query: RequestQuery) -> list[tuple[Any, ...]]:
    """One statement over the blocks in range from :func:`far_floor` on:
    SQLite sorts the rows that match and skips the offset, spilling to a
    temporary file if it must."""
    where, params = _filters(query)
    since, until = _time_bounds(query)
    since = far_floor(connection, query, since, until, where, params)
    sql = (
        f"SELECT {', '.join('r.' + name for name in REQUEST_COLUMNS)} "
        "FROM aegis_request_blocks AS b CROSS JOIN aegis_requests AS r "
        "ON r.rowid BETWEEN b.first_row AND b.last_row "
        f"WHERE b.time_max >= ? AND +b.time_min < ? AND +r.timestamp >= ?{where} "
        "ORDER BY r.timestamp DESC, r.request_id DESC LIMIT ? OFFSET ?"
    )
    bounds = [since, until, since, *params, query.limit, query.offset]
    return connection.execute(sql, bounds).fetchall()


def far_floor(
    connection: sqlite3.Connection,
    query: RequestQuery,
    since: float,
    until: float,
    where: str,
    params: list[object],
) -> float:
    """A time no later than the ``offset + limit``-th newest matching row's,
    found by counting the matching rows of blocks, newest-ending first,
    until there are that many: every row counted is at or after the
    earliest time of the blocks counted, so the page lies there. A deep page
    then reads about as many rows as it skips, not the whole log."""
    wanted = query.offset + query.limit
    count = f"SELECT count(*) FROM aegis_requests AS r WHERE r.rowid BETWEEN ? AND ?{where}"
    counted = 0
    floor = until
    for first, last, time_min in connection.execute(_FAR_BLOCKS, (since, until)):
        if type(time_min) not in _NUMBERS:  # a timestamp stored as text: the whole range
            return since
        counted += connection.execute(count, [first, last, *params]).fetchone()[0]
        floor = min(floor, float(time_min))
        if counted >= wanted:
            return max(since, floor)
    return since


def read_newest(connection: sqlite3.Connection, query: RequestQuery) -> list[tuple[Any, ...]]:
    """The top ``offset + limit`` row keys kept in a heap while blocks are
    read newest-ending first; a block whose latest time is below the
    smallest key kept cannot add one, nor can any after it."""
    wanted = query.offset + query.limit
    where, params = _filters(query)
    since, until = _time_bounds(query)
    rows_sql = (
        "SELECT r.timestamp, r.request_id, r.rowid FROM aegis_requests AS r "
        f"WHERE r.rowid BETWEEN ? AND ? AND +r.timestamp >= ?{where} "
        "ORDER BY r.timestamp DESC, r.request_id DESC LIMIT ?"
    )
    kept: list[tuple[Any, str, int]] = []  # a min-heap of (timestamp, request_id, rowid)
    blocks = connection.execute(_BLOCKS, (since, until))
    size = 1  # a first block often holds the whole page: read more only if not
    while step := blocks.fetchmany(size):
        size = min(size * 2, BLOCKS_PER_STEP)
        if len(kept) == wanted:
            floor = kept[0][0]
            step = [block for block in step if block[2] >= floor]
            if not step:
                break
        else:
            floor = since
        for first, last in _merged(step):
            # Blocks do not overlap (the invariant), so no row comes twice.
            for key in connection.execute(rows_sql, [first, last, floor, *params, wanted]):
                if len(kept) < wanted:
                    heapq.heappush(kept, key)
                elif key > kept[0]:
                    heapq.heapreplace(kept, key)
    blocks.close()
    page = sorted(kept, reverse=True)[query.offset :]
    return _rows_by_rowid(connection, [rowid for _, _, rowid in page])


def _merged(blocks: list[Any]) -> list[tuple[int, int]]:
    """The blocks' rowid ranges, sorted, adjacent ones joined: a quiet
    app's consecutive blocks become one range read."""
    ranges: list[tuple[int, int]] = []
    for first, last, _ in sorted(blocks):
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(last, ranges[-1][1]))
        else:
            ranges.append((first, last))
    return ranges


def _rows_by_rowid(connection: sqlite3.Connection, rowids: list[int]) -> list[tuple[Any, ...]]:
    """The rows of ``rowids``, in that order."""
    found: dict[int, tuple[Any, ...]] = {}
    for start in range(0, len(rowids), _IN_LIST):
        chunk = rowids[start : start + _IN_LIST]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT rowid, {_COLUMNS} FROM aegis_requests WHERE rowid IN ({marks})"
        for row in connection.execute(sql, chunk):
            found[row[0]] = row[1:]
    return [found[rowid] for rowid in rowids if rowid in found]

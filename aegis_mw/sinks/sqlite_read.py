"""Reading history back from an SQLite file, from any thread.

Readers never use the writer's connection (it belongs to the sink's thread).
They borrow one from a small pool instead: a connection serves one thread at
a time, and in WAL mode a read never waits for a write or holds one up.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..core.history import RequestQuery
from ..core.record import RequestRecord
from ..core.rollup import RollupRow, decode_histogram
from . import history_sql

_SELECT_ROUTES = history_sql.select_rollups(history_sql.SQLITE, by_route=True)
_SELECT_TOTALS = history_sql.select_rollups(history_sql.SQLITE, by_route=False)


class SQLiteReader:
    """A pool of read-only connections, opened by ``open`` as they are needed."""

    def __init__(self, path: str, open_connection: Callable[[], sqlite3.Connection]) -> None:
        self.path = path
        self._open = open_connection
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's are not ours
                self._idle, self._pid = [], os.getpid()
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._open()
            connection.execute("PRAGMA query_only = 1")
        try:
            yield connection
        except BaseException:
            connection.close()  # in an unknown state (an interrupted read, say)
            raise
        with self._lock:
            if self._pid == os.getpid():
                self._idle.append(connection)

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        sql = _SELECT_ROUTES if by_route else _SELECT_TOTALS
        with self._connection() as connection:
            rows = connection.execute(sql, (resolution, start, end)).fetchall()
        return [RollupRow._make((*row[:-1], decode_histogram(row[-1]))) for row in rows]

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        sql, params = history_sql.select_requests(history_sql.SQLITE, query)
        with self._connection() as connection:
            rows = connection.execute(sql, params).fetchall()
        return [RequestRecord._make(row) for row in rows]

    def close(self) -> None:
        """Close the idle connections (borrowed ones close when returned late)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

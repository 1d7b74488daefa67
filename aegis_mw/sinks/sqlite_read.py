"""Reading history back from an SQLite file, from any thread.

Readers never use the writer's connection (it belongs to the sink's thread).
They borrow one from a small pool instead: a connection serves one thread at
a time, and in WAL mode a read never waits for a write or holds one up. A
read waits at most ``timeout`` (``read_timeout``) for a lock that is held
(the file locked exclusively by another program, say); the sink's own open
of a new connection, which may migrate the schema, waits as its writes do.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..core.history import RequestQuery
from ..core.record import RequestRecord
from . import history_sql, sqlite_blocks


class SQLiteReader(history_sql.RowReader):
    """A pool of read-only connections, opened by ``open`` as they are needed."""

    dialect = history_sql.SQLITE

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
            connection.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000):d}")
        try:
            yield connection
        except BaseException:
            connection.close()  # in an unknown state (an interrupted read, say)
            raise
        with self._lock:
            if self._pid == os.getpid():
                self._idle.append(connection)

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        """Through the log's time blocks (:mod:`.sqlite_blocks`): the table
        has no index on ``timestamp``; one trace's requests or the server
        errors through their partial indexes."""
        with self._connection() as connection:
            if history_sql.one_trace(query) or history_sql.errors_only(query):
                # A trace's requests and the server errors have an index of
                # their own (a partial one): a few rows, where the blocks
                # would read the whole range.
                sql, params = history_sql.select_requests(self.dialect, query)
                rows = connection.execute(sql, params).fetchall()
            else:
                rows = sqlite_blocks.read_requests(connection, query)
        return [RequestRecord._make(row) for row in rows]

    def unavailable(self, error: Exception) -> bool:
        # OperationalError: locked, unable to open, disk I/O error, read-only;
        # a plain DatabaseError: not a database, or a malformed one. Their
        # other subclasses (ProgrammingError and the rest) are a read's fault.
        return isinstance(error, sqlite3.OperationalError | OSError) or (
            type(error) is sqlite3.DatabaseError
        )

    def close(self) -> None:
        """Close the idle connections (borrowed ones close when returned late)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

"""``sqlite:///path``: the embedded default.

One connection, opened by the sink's own thread on first use (and again in a
forked child), in WAL mode so readers never block the writer, with a busy
timeout so several processes can share one file. Each batch is one
transaction of ``INSERT OR IGNORE`` keyed by id, so a retried batch is stored
once.
"""

from __future__ import annotations

import os
import sqlite3
import time

from ..core.record import Batch
from .sqlite_schema import INSERT_REQUEST, INSERT_SESSION, migrate

BUSY_TIMEOUT_MS = 5000


class SQLiteSink:
    """Writes records to ``aegis_requests`` and ``aegis_websocket_sessions``.

    Example::

        app.add_middleware(AegisMiddleware, sink="sqlite:///var/lib/myapp/aegis.db")
    """

    def __init__(self, path: str) -> None:
        # Resolved now: a later chdir must not move the database.
        self.path = os.path.abspath(path)
        self.name = f"sqlite:{path}"
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        # Connections inherited over fork are kept referenced, never closed or
        # used: finalizing one in the child could disturb the parent's locks.
        self._inherited: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        if self._connection is not None:
            self._inherited.append(self._connection)
            self._connection = None
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            self._enable_wal(connection)
            # WAL + NORMAL survives an application crash; only an OS crash can
            # lose the last transactions, an accepted trade for telemetry.
            connection.execute("PRAGMA synchronous = NORMAL")
            migrate(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self._pid = os.getpid()
        return connection

    @staticmethod
    def _enable_wal(connection: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment of exclusive access; when several
        # processes open a new file together, one of them may briefly lose.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def write(self, batch: Batch) -> None:
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            if batch.requests:
                connection.executemany(INSERT_REQUEST, batch.requests)
            if batch.sessions:
                connection.executemany(INSERT_SESSION, batch.sessions)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

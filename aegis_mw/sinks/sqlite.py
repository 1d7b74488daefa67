"""``sqlite:///path``: the embedded default.

One connection, opened by the thread that writes (the sink's own thread; a
new one after a fork or a restart), in WAL mode so readers never block the
writer, with a busy timeout so several processes can share one file. Each
batch is one transaction of ``INSERT OR IGNORE`` keyed by id, so a retried
batch is stored once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from ..core.errors import ConfigError
from ..core.record import Batch
from .files import create_private, prepare_path
from .sqlite_schema import INSERT_REQUEST, INSERT_SESSION, migrate

# Below the default sink_timeout (5 s), so a locked database shows up as an
# error of its own rather than as an abandoned write.
BUSY_TIMEOUT_MS = 3000


class SQLiteSink:
    """Writes records to ``aegis_requests`` and ``aegis_websocket_sessions``.

    Example::

        app.add_middleware(AegisMiddleware, sink="sqlite:///var/lib/myapp/aegis.db")
    """

    def __init__(self, path: str, url: str = "") -> None:
        if path in (":memory:", "") or path.startswith("file:"):
            raise ConfigError(
                "sink", url or path, "not a database file; memory:// keeps records in the process"
            )
        # Resolved now: a later chdir must not move the database.
        self.path = prepare_path(path, url or f"sqlite:///{path}")
        self.name = f"sqlite:{path}"
        self._connection: sqlite3.Connection | None = None
        self._owner: tuple[int, int] = (0, 0)
        # Connections left behind by a fork, or by a thread whose write was
        # abandoned, are kept referenced but never used or closed here:
        # finalizing one could disturb its owner (the parent's locks, say).
        self._left_behind: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        owner = (os.getpid(), threading.get_ident())
        if self._connection is not None and self._owner == owner:
            return self._connection
        if self._connection is not None:
            self._left_behind.append(self._connection)
            self._connection = None
        create_private(self.path)
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
        self._owner = owner
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
        if self._connection is not None and self._owner == (os.getpid(), threading.get_ident()):
            self._connection.close()
            self._connection = None

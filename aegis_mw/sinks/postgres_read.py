"""Reading history back from PostgreSQL, from any thread.

Readers never use the writer's connection (it belongs to the sink's thread).
They borrow one from a small :class:`psycopg_pool.ConnectionPool`, opened on
the first read (an app that never reads history holds no idle connection)
and checked before it is lent, so a restarted server costs one failed check,
not one failed read. A read waits at most ``timeout`` (``read_timeout``) for
a connection: with the server down or hung, the pool's own attempts go on in
its background workers, and the read fails soon enough for the breaker in
front of it (see :mod:`aegis_mw.history.breaker`) to answer the next ones at
once. Once lent, a connection's query is bounded too: by a statement timeout
(a read stuck behind a lock or on a huge scan), and by TCP keepalives (a
server whose host went away), unless the URL, the role or the server set
their own.

Those bounds need a server that runs. One that hung with a pooled
connection open (a stopped process, a frozen host or network whose kernel
still acknowledges) would keep a read waiting as long as it stays so, so
the client keeps deadlines of its own (:mod:`.postgres_deadline`): the check
of a connection before it is lent gets ``timeout`` (a round trip), a new
connection's set-up ``SETUP_SECONDS`` at least (two round trips, in the
pool's worker, on a server process just started: not on a read's path), and
a borrow the statement timeout in effect on its connection (ours where
nobody chose one, or none was) plus ``timeout``, since a server that runs
has cancelled a statement by then. The schema's migration, on a process's
first borrow, gets ``MIGRATION_SECONDS`` a statement, and a statement
timeout of its own just below (an index of a large table may take longer
than a read's statement timeout).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from . import history_sql
from .postgres_deadline import Watchdog
from .postgres_schema import migrate

#: Readers are the JSON API, the CLI and the dashboard: a few at a time.
MAX_READERS = 4
#: A history read that runs longer is cancelled by the server (milliseconds).
STATEMENT_TIMEOUT_MS = 30_000
#: Seconds at least a new connection's set-up may take (see _configure).
SETUP_SECONDS = 10.0
#: Seconds each statement of the schema's migration may take (an upgrade that
#: builds an index of a large table, once), counted afresh before each; the
#: server cancels it MIGRATION_MARGIN before.
MIGRATION_SECONDS = 3600.0
#: Seconds before a migration's client deadline that the server cancels its
#: statement: a server that runs ends it and frees its locks itself.
MIGRATION_MARGIN = 60.0
#: libpq keepalives for read connections, unless the URL has its own: a peer
#: gone silent is found in about 10 + 3 x 5 s instead of the kernel's hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}  # fmt: skip


def bound_statements(connection: psycopg.Connection[Any]) -> int:
    """A statement timeout where nobody chose one (URL ``options``,
    ``PGOPTIONS``, the role, the database, the server), and the one in effect
    (milliseconds; 0 for none)."""
    row = connection.execute(
        "SELECT source, setting FROM pg_settings WHERE name = 'statement_timeout'"
    ).fetchone()
    if row is None:
        return 0
    if row[0] == "default":
        connection.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        return STATEMENT_TIMEOUT_MS
    return int(row[1])


class PostgresReader(history_sql.RowReader):
    """A lazily opened pool of connections for reads."""

    dialect = history_sql.POSTGRES

    def __init__(
        self, url: str, connect_kwargs: dict[str, Any], name: str, *, purpose: str = "read"
    ) -> None:
        self.url = url
        #: What the pool's connections do ("read", "alerts"): in its name.
        self.purpose = purpose
        params = conninfo_to_dict(url)
        keepalives = {key: value for key, value in KEEPALIVES.items() if key not in params}
        self.connect_kwargs = {**keepalives, **connect_kwargs}
        self.name = name
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pid = os.getpid()
        self._migrated = False
        # Pools inherited across a fork are kept referenced and never closed:
        # closing would end the parent's sessions on the sockets both share.
        self._left_behind: list[ConnectionPool[psycopg.Connection[Any]]] = []
        #: Seconds a borrowed connection may go unanswered, per connection
        #: (its statement timeout, see _configure).
        self._limits: WeakKeyDictionary[psycopg.Connection[Any], float] = WeakKeyDictionary()
        self._watchdog = Watchdog(f"aegis-{purpose}-deadlines")

    def _process_lock(self) -> threading.Lock:
        """The lock, a new one in a forked child (the parent's may have been
        held at the fork)."""
        if self._pid != os.getpid():
            self._lock = threading.Lock()
        return self._lock

    def _current_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._process_lock():
            if self._pid != os.getpid():
                if self._pool is not None:
                    self._left_behind.append(self._pool)
                self._pool, self._pid, self._migrated = None, os.getpid(), False
            if self._pool is None:
                pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                    self.url,
                    kwargs={"autocommit": True, **self.connect_kwargs},
                    min_size=0,
                    max_size=MAX_READERS,
                    open=False,
                    check=self._check,
                    configure=self._configure,
                    timeout=self.timeout,
                    name=f"aegis-{self.purpose}-{self.name}",
                    num_workers=1,  # it opens a connection at a time, when one is wanted
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    @contextmanager
    def borrow(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool, returned to it afterwards (the schema
        brought up to date the first time in this process)."""
        with self._current_pool().connection() as connection:
            if not self._migrated:
                # A read may come before the first write: the tables must exist.
                with self._watchdog.deadline(connection, MIGRATION_SECONDS) as deadline:
                    migrate(connection, MIGRATION_SECONDS - MIGRATION_MARGIN, deadline.renew)
                self._migrated = True
            # Ours where nobody chose one; none chosen (0): ours all the same,
            # a monitoring read that never ends being no better than one cut.
            statements = self._limits.get(connection) or STATEMENT_TIMEOUT_MS / 1000
            with self._watchdog.deadline(connection, statements + self.timeout):
                yield connection

    def _configure(self, connection: psycopg.Connection[Any]) -> None:
        """The pool's ``configure``, for each new connection."""
        with self._watchdog.deadline(connection, max(self.timeout, SETUP_SECONDS), strict=True):
            self._limits[connection] = bound_statements(connection) / 1000

    def _check(self, connection: psycopg.Connection[Any]) -> None:
        """The pool's ``check``, before it lends a connection: a round trip."""
        with self._watchdog.deadline(connection, self.timeout, strict=True):
            ConnectionPool.check_connection(connection)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Cursor[Any]]:
        # Binary results: the histogram arrays arrive as lists decoded in C.
        with self.borrow() as connection, connection.cursor(binary=True) as cursor:
            yield cursor

    def unavailable(self, error: Exception) -> bool:
        # OperationalError: no connection within the timeout (PoolTimeout), a
        # refused or lost connection, a server shutting down or out of slots.
        return isinstance(error, psycopg.OperationalError | OSError)

    def close(self) -> None:
        """Close this process's pool (a parent's is left alone)."""
        with self._process_lock():
            pool, self._pool, self._migrated = self._pool, None, False
            if pool is not None and self._pid != os.getpid():
                self._left_behind.append(pool)
                pool = None
            self._pid = os.getpid()
        if pool is not None:
            pool.close()
        self._watchdog.close()

"""Live frames through PostgreSQL, for apps that have it and no Redis.

Each sender's latest frame is a row of ``aegis_live`` (one per live group
and sender), stamped by a sequence at every write; a reader asks for the
rows stamped after the last it saw. ``NOTIFY aegis_live`` after each write
wakes the readers (they ``LISTEN``; the payload names the group), so a
frame is read within moments of its writing; a reader asks at most five
times a second, however many processes write, and once a second when idle.

A frame is a few kilobytes to a few dozen (a thousand routes), written once
a second by each process: the table stays one row per process, updated in
place (its dead tuples are what autovacuum is for).

Each call is bounded by the client too (:mod:`aegis_mw.sinks.postgres_deadline`):
a server that hung with the connection open answers neither the statement
timeout nor keepalives, and the link's thread would wait on it, its health
still "connected", for as long as it stays hung; cut, the call fails and the
link reconnects with backoff, saying so.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from ..sinks.postgres import TCP_USER_TIMEOUT_MS
from ..sinks.postgres_deadline import Deadline, Watchdog
from ..sinks.postgres_read import KEEPALIVES

#: One key for the advisory lock under which the first process creates the table.
SCHEMA_LOCK = 0x6165676C  # "aegl"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS aegis_live ("
    " grp text NOT NULL, sender text NOT NULL, version bigint NOT NULL,"
    " frame bytea NOT NULL, PRIMARY KEY (grp, sender))",
    "CREATE SEQUENCE IF NOT EXISTS aegis_live_version",
    "CREATE INDEX IF NOT EXISTS aegis_live_changes ON aegis_live (grp, version)",
)
UPSERT = (
    "INSERT INTO aegis_live (grp, sender, version, frame)"
    " VALUES (%s, %s, nextval('aegis_live_version'), %s)"
    " ON CONFLICT (grp, sender) DO UPDATE"
    " SET version = EXCLUDED.version, frame = EXCLUDED.frame"
)
CHANGED = (
    "SELECT version, frame FROM aegis_live"
    " WHERE grp = %s AND version > %s AND sender <> %s ORDER BY version"
)
#: The shortest time between two reads of the changed rows.
QUERY_GAP = 0.2
#: Seconds a connection attempt, and a statement, may take.
TIMEOUT_SECONDS = 5
#: Seconds past that before the client gives a call up (the server had its
#: statement timeout to answer).
GRACE_SECONDS = 1.0
#: Seconds a new connection's set-up may take (a few statements, each bounded
#: by the statement and lock timeouts).
SET_UP_SECONDS = 4 * TIMEOUT_SECONDS
#: Unless the URL says otherwise: a server gone silent is given up on as the
#: sink's write connection gives it up (keepalives, unacknowledged data).
SILENT = {**KEEPALIVES, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}


class PostgresTransport:
    """One process's connection: it writes its frames, listens, and reads
    the others'."""

    kind = "postgresql"
    pushes_every_frame = False

    def __init__(self, url: str, group: str) -> None:
        self.group = group
        self.sender = ""
        #: The highest stamp read so far.
        self.version = 0
        options = psycopg.conninfo.conninfo_to_dict(url)
        wanted: dict[str, Any] = {
            **SILENT,
            "connect_timeout": TIMEOUT_SECONDS,
            "application_name": "aegis_mw live",
        }
        extra = {key: value for key, value in wanted.items() if key not in options}
        self.connection = psycopg.connect(url, autocommit=True, **extra)
        self._queried = 0.0
        self._watchdog = Watchdog("aegis-live-deadlines")
        try:
            with self._watchdog.deadline(self.connection, SET_UP_SECONDS):
                self._set_up()
        except BaseException:
            self.connection.close()
            self._watchdog.close()
            raise

    def _set_up(self) -> None:
        # Bounded from the first statement: a lock held on the table by
        # someone else fails the connect (retried), never hangs it.
        self.connection.execute(f"SET statement_timeout = {TIMEOUT_SECONDS * 1000}")
        self.connection.execute(f"SET lock_timeout = {TIMEOUT_SECONDS * 1000}")
        if not self._schema_present():
            with self.connection.transaction():
                self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for statement in SCHEMA:
                    self.connection.execute(statement)
        self.connection.execute("LISTEN aegis_live")

    def _schema_present(self) -> bool:
        row = self.connection.execute(
            "SELECT to_regclass('aegis_live') IS NOT NULL"
            " AND to_regclass('aegis_live_version') IS NOT NULL"
            " AND to_regclass('aegis_live_changes') IS NOT NULL"
        ).fetchone()
        return bool(row and row[0])

    def _bounded(self, waiting: float = 0.0) -> Deadline:
        """A call's deadline: ``waiting`` (for notifications, or a commit's
        lock), the pause between two reads (:data:`QUERY_GAP`, which only a
        receive takes; a margin for the others), a statement's timeout and
        the grace."""
        return self._watchdog.deadline(
            self.connection, waiting + QUERY_GAP + TIMEOUT_SECONDS + GRACE_SECONDS
        )

    def send(self, sender: str, frame: bytes) -> None:
        self.sender = sender
        # Two waits: the statements, then the commit's (NOTIFY's lock).
        with self._bounded(TIMEOUT_SECONDS), self.connection.pipeline():
            self.connection.execute(UPSERT, (self.group, sender, frame))
            self.connection.execute("SELECT pg_notify('aegis_live', %s)", (self.group,))

    def receive(self, timeout: float) -> list[bytes]:
        """Wait for a write of this group (others share the channel) or the
        timeout, then read what changed; at most every :data:`QUERY_GAP`
        seconds, however many processes write (each a frame a second)."""
        with self._bounded(max(timeout, 0.0)):
            return self._receive(timeout)

    def _receive(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        woken = False
        while not woken:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            own = self.connection.info.backend_pid  # its own writes wake it too: not news
            for notify in self.connection.notifies(timeout=remaining, stop_after=1):
                woken = woken or (notify.payload == self.group and notify.pid != own)
        rest = self._queried + QUERY_GAP - time.monotonic()
        if rest > 0:  # the writes of the next moments are read together
            for _ in self.connection.notifies(timeout=rest):
                pass
        self._queried = time.monotonic()
        # A write whose stamp is lower than one already read but committed
        # after it is skipped here: the sender's next frame, a second later,
        # holds everything it held (and the resync every 30 s reads all).
        rows = self.connection.execute(CHANGED, (self.group, self.version, self.sender))
        return self._frames(rows.fetchall())

    def stored(self) -> list[bytes]:
        with self._bounded():
            rows = self.connection.execute(
                "SELECT version, frame FROM aegis_live WHERE grp = %s", (self.group,)
            ).fetchall()
        return self._frames(rows)

    def forget(self, senders: list[str]) -> None:
        with self._bounded():
            self.connection.execute(
                "DELETE FROM aegis_live WHERE grp = %s AND sender = ANY(%s)",
                (self.group, senders),
            )

    def close(self) -> None:
        self.connection.close()
        self._watchdog.close()

    def _frames(self, rows: list[Any]) -> list[bytes]:
        if rows:
            self.version = max(self.version, max(int(row[0]) for row in rows))
        return [bytes(row[1]) for row in rows]

"""Live frames through PostgreSQL, for apps that have it and no Redis.

Each sender's latest frame is a row of ``aegis_live`` (one per live group
and sender), stamped by a sequence at every write; a reader asks for the
rows stamped after the last it saw. ``NOTIFY aegis_live`` after each write
wakes the readers (they ``LISTEN``), so a frame is read within moments of
its writing, not at the next poll; a reader asks once a second anyway.

A frame is a few kilobytes to a few dozen (a thousand routes), written once
a second by each process: the table stays one row per process, updated in
place (its dead tuples are what autovacuum is for).
"""

from __future__ import annotations

from typing import Any

import psycopg

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
#: Seconds a connection attempt, and a statement, may take.
TIMEOUT_SECONDS = 5
#: A server gone silent is given up after this (as the sink's write connection).
KEEPALIVES = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}  # fmt: skip


class PostgresTransport:
    """One process's connection: it writes its frames, listens, and reads
    the others'."""

    kind = "postgresql"

    def __init__(self, url: str, group: str) -> None:
        self.group = group
        self.sender = ""
        #: The highest stamp read so far.
        self.version = 0
        options = psycopg.conninfo.conninfo_to_dict(url)
        extra: dict[str, Any] = {
            key: value for key, value in KEEPALIVES.items() if key not in options
        }
        extra.setdefault("connect_timeout", options.get("connect_timeout", TIMEOUT_SECONDS))
        extra.setdefault("application_name", options.get("application_name", "aegis_mw live"))
        self.connection = psycopg.connect(url, autocommit=True, **extra)
        try:
            with self.connection.transaction():
                self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for statement in SCHEMA:
                    self.connection.execute(statement)
            self.connection.execute(f"SET statement_timeout = {TIMEOUT_SECONDS * 1000}")
            self.connection.execute("LISTEN aegis_live")
        except BaseException:
            self.connection.close()
            raise

    def send(self, sender: str, frame: bytes) -> None:
        self.sender = sender
        with self.connection.pipeline():
            self.connection.execute(UPSERT, (self.group, sender, frame))
            self.connection.execute("SELECT pg_notify('aegis_live', %s)", (self.group,))

    def receive(self, timeout: float) -> list[bytes]:
        for _ in self.connection.notifies(timeout=timeout, stop_after=1):
            pass  # woken: someone wrote (perhaps of another group; the query says)
        rows = self.connection.execute(CHANGED, (self.group, self.version, self.sender))
        return self._frames(rows.fetchall())

    def stored(self) -> list[bytes]:
        rows = self.connection.execute(
            "SELECT version, frame FROM aegis_live WHERE grp = %s", (self.group,)
        )
        return self._frames(rows.fetchall())

    def forget(self, senders: list[str]) -> None:
        self.connection.execute(
            "DELETE FROM aegis_live WHERE grp = %s AND sender = ANY(%s)", (self.group, senders)
        )

    def close(self) -> None:
        self.connection.close()

    def _frames(self, rows: list[Any]) -> list[bytes]:
        if rows:
            self.version = max(self.version, max(int(row[0]) for row in rows))
        return [bytes(row[1]) for row in rows]

"""The SQLite schema and its versioned migrations.

Tables are ``WITHOUT ROWID``, clustered on the record id: ids are a
process prefix plus a sequence, so inserts append within one region of the
tree, and there is no separate rowid tree to maintain. ``PRAGMA user_version``
holds the applied version. Migrations run inside
``BEGIN IMMEDIATE``, which takes the write lock before reading the version,
so when several processes start on one file at once exactly one applies each
step and the others see it done.
"""

from __future__ import annotations

import json
import sqlite3

from ..core.rollup import decode_histogram

REQUEST_COLUMNS = (
    "request_id", "timestamp", "method", "route", "path", "status", "duration_ms",
    "ttfb_ms", "request_bytes", "response_bytes", "client_ip", "error",
)  # fmt: skip
SESSION_COLUMNS = (
    "session_id", "timestamp", "route", "path", "duration_ms", "messages_in",
    "messages_out", "close_code", "accepted", "client_ip", "error",
)  # fmt: skip

_ROLLUP_VALUES = """
            count INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            rate_limited INTEGER NOT NULL,
            duration_sum REAL NOT NULL,
            duration_min REAL NOT NULL,
            duration_max REAL NOT NULL,
            request_bytes INTEGER NOT NULL,
            response_bytes INTEGER NOT NULL,
            histogram TEXT NOT NULL"""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE aegis_requests (
            request_id TEXT PRIMARY KEY,
            timestamp REAL NOT NULL,
            method TEXT NOT NULL,
            route TEXT NOT NULL,
            path TEXT NOT NULL,
            status INTEGER NOT NULL,
            duration_ms REAL NOT NULL,
            ttfb_ms REAL,
            request_bytes INTEGER NOT NULL,
            response_bytes INTEGER NOT NULL,
            client_ip TEXT,
            error TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX aegis_requests_timestamp ON aegis_requests (timestamp)",
        """
        CREATE TABLE aegis_websocket_sessions (
            session_id TEXT PRIMARY KEY,
            timestamp REAL NOT NULL,
            route TEXT NOT NULL,
            path TEXT NOT NULL,
            duration_ms REAL NOT NULL,
            messages_in INTEGER NOT NULL,
            messages_out INTEGER NOT NULL,
            close_code INTEGER,
            accepted INTEGER NOT NULL,
            client_ip TEXT,
            error TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX aegis_websocket_sessions_timestamp ON aegis_websocket_sessions (timestamp)",
    ),
    (
        # Rollups per route, method and status class, and in total, at each
        # resolution; the key leads with (resolution, bucket) so a time-range
        # read is one index range scan.
        f"""
        CREATE TABLE aegis_rollups (
            resolution INTEGER NOT NULL,
            bucket INTEGER NOT NULL,
            route TEXT NOT NULL,
            method TEXT NOT NULL,
            status_class INTEGER NOT NULL,
            {_ROLLUP_VALUES},
            PRIMARY KEY (resolution, bucket, route, method, status_class)
        ) WITHOUT ROWID
        """,
        f"""
        CREATE TABLE aegis_rollup_totals (
            resolution INTEGER NOT NULL,
            bucket INTEGER NOT NULL,
            status_class INTEGER NOT NULL,
            {_ROLLUP_VALUES},
            PRIMARY KEY (resolution, bucket, status_class)
        ) WITHOUT ROWID
        """,
        # Ids of the rollup deltas already added: a retried write adds none twice.
        """
        CREATE TABLE aegis_rollup_deltas (
            delta_id TEXT PRIMARY KEY,
            applied_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX aegis_rollup_deltas_applied_at ON aegis_rollup_deltas (applied_at)",
        "CREATE INDEX aegis_requests_route ON aegis_requests (route, timestamp)",
    ),
    (
        # Histograms become dense arrays, ``[first_index, count, ...]``
        # (see rollup.dense): a fraction of the cost to decode and to merge.
        "UPDATE aegis_rollups SET histogram = aegis_histogram_v3(histogram)",
        "UPDATE aegis_rollup_totals SET histogram = aegis_histogram_v3(histogram)",
        # Kept up to date, this index cost a fifth of the insert rate; the
        # request log filtered by route now walks the timestamp index instead.
        "DROP INDEX IF EXISTS aegis_requests_route",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# ``ON CONFLICT DO NOTHING`` skips only an id stored already (a retried
# batch); ``INSERT OR IGNORE`` would also skip, silently, a row that breaks a
# NOT NULL constraint (a NaN is stored as NULL) while the batch counts it as
# written. This way such a row is an error the flusher sees (see sqlite.py).
INSERT_REQUEST = (
    f"INSERT INTO aegis_requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in REQUEST_COLUMNS)}) ON CONFLICT DO NOTHING"
)
INSERT_SESSION = (
    f"INSERT INTO aegis_websocket_sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in SESSION_COLUMNS)}) ON CONFLICT DO NOTHING"
)


class SchemaTooNew(RuntimeError):
    """The file was written by a newer aegis_mw; refuse rather than corrupt it."""


def _histogram_v3(text: str | None) -> str:
    """A version 2 histogram (``{"index": count}``) in the version 3 layout."""
    return json.dumps(decode_histogram(text), separators=(",", ":"))


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found."""
    connection.create_function("aegis_histogram_v3", 1, _histogram_v3, deterministic=True)
    connection.execute("BEGIN IMMEDIATE")
    try:
        found = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema version {found} is newer than this aegis_mw "
                f"understands ({SCHEMA_VERSION}); upgrade aegis_mw"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
        if found != SCHEMA_VERSION:
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own integer.
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return found

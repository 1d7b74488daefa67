"""The SQLite schema and its versioned migrations.

The request log is a plain rowid table without an index: inserts append,
and a retried batch is recognised by its batch id, stored once in
``aegis_batches`` in the same transaction (schema version 4; until then a
primary key on the text ``request_id`` did it, at a fifth of the insert's
cost). Its time index is a row per block of rows in
``aegis_request_blocks`` (version 13, see :mod:`.sqlite_blocks`; until then
an index on ``timestamp``, at a third of the insert's cost). Only partial
indexes cover its rows: its server errors (version 15) and its traced rows
(version 18), so a row that is neither costs its insert nothing more. The other
tables are ``WITHOUT ROWID``, clustered on their key. ``PRAGMA
user_version`` holds the applied version. Migrations run inside ``BEGIN
IMMEDIATE``, which takes the write lock before reading the version, so when
several processes start on one file at once exactly one applies each step
and the others see it done.
"""

from __future__ import annotations

import json
import sqlite3

from ..core.rollup import decode_histogram
from .event_rows import EVENT_COLUMNS

#: The request log's columns up to version 17: what version 4 copies (a
#: migration runs against the schema of its own time, not today's).
_REQUEST_COLUMNS_V4 = (
    "request_id", "timestamp", "method", "route", "path", "status", "duration_ms",
    "ttfb_ms", "request_bytes", "response_bytes", "client_ip", "error",
)  # fmt: skip
#: In the records' field order: a record is bound as the row it is.
REQUEST_COLUMNS = (*_REQUEST_COLUMNS_V4, "trace_id", "span_id")
SESSION_COLUMNS = (
    "session_id", "timestamp", "route", "path", "duration_ms", "messages_in",
    "messages_out", "close_code", "accepted", "client_ip", "error", "trace_id", "span_id",
)  # fmt: skip

_REQUEST_VALUES = """
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
            error TEXT NOT NULL"""

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
        f"""
        CREATE TABLE aegis_requests (
            request_id TEXT PRIMARY KEY,{_REQUEST_VALUES}
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
    (
        # The request log without its primary key: idempotency per batch
        # instead of per row (see Batch.batch_id). Rows are copied in time
        # order, so old and new rows read the same.
        f"""
        CREATE TABLE aegis_requests_v4 (
            request_id TEXT NOT NULL,{_REQUEST_VALUES}
        )
        """,
        f"INSERT INTO aegis_requests_v4 ({', '.join(_REQUEST_COLUMNS_V4)}) "
        f"SELECT {', '.join(_REQUEST_COLUMNS_V4)} FROM aegis_requests ORDER BY timestamp",
        "DROP TABLE aegis_requests",
        "ALTER TABLE aegis_requests_v4 RENAME TO aegis_requests",
        "CREATE INDEX aegis_requests_timestamp ON aegis_requests (timestamp)",
        # Ids of the batches stored: a retried batch is stored once.
        """
        CREATE TABLE aegis_batches (
            batch_id TEXT PRIMARY KEY,
            applied_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX aegis_batches_applied_at ON aegis_batches (applied_at)",
    ),
    (
        # Alerts (aegis_mw.alerts.store): the evaluator's lease with its
        # fencing token, the state of every alert instance, and a row per
        # transition.
        """
        CREATE TABLE aegis_alert_lease (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            token INTEGER NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE aegis_alert_instances (
            rule TEXT NOT NULL,
            group_key TEXT NOT NULL,
            state TEXT NOT NULL,
            data TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (rule, group_key)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE aegis_alert_transitions (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            rule TEXT NOT NULL,
            group_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            from_state TEXT NOT NULL,
            to_state TEXT NOT NULL,
            value REAL,
            severity TEXT NOT NULL,
            episode TEXT NOT NULL,
            notify INTEGER NOT NULL,
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL
        )
        """,
        "CREATE INDEX aegis_alert_transitions_at ON aegis_alert_transitions (at)",
    ),
    (
        # The alert notices' outbox (aegis_mw.alerts.outbox): one row per
        # notice and channel, written with its transition.
        """
        CREATE TABLE aegis_alert_outbox (
            id INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            channel TEXT NOT NULL,
            notice_key TEXT NOT NULL,
            alert_key TEXT NOT NULL,
            episode TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_at REAL NOT NULL,
            claimed_by TEXT NOT NULL,
            claimed_until REAL NOT NULL,
            last_error TEXT NOT NULL,
            done_at REAL,
            UNIQUE (channel, notice_key)
        )
        """,
        "CREATE INDEX aegis_alert_outbox_due ON aegis_alert_outbox (state, next_at)",
        # A channel's notices of one alert go in order; a resolve goes where
        # its episode's firing went; finished rows are pruned by age.
        "CREATE INDEX aegis_alert_outbox_alert ON aegis_alert_outbox (channel, alert_key, state)",
        "CREATE INDEX aegis_alert_outbox_episode ON aegis_alert_outbox (episode)",
        "CREATE INDEX aegis_alert_outbox_done ON aegis_alert_outbox (done_at)",
    ),
    (
        # Every attempt to deliver a notice (aegis_mw.alerts.outbox), and
        # the channels disabled after a failure that every notice would
        # meet (a receiver gone, credentials refused), by their settings'
        # fingerprint: the same channel with other settings is not.
        """
        CREATE TABLE aegis_alert_attempts (
            id INTEGER PRIMARY KEY,
            notice_id INTEGER NOT NULL,
            channel TEXT NOT NULL,
            at REAL NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT NOT NULL,
            seconds REAL NOT NULL,
            sender TEXT NOT NULL
        )
        """,
        "CREATE INDEX aegis_alert_attempts_notice ON aegis_alert_attempts (notice_id)",
        "CREATE INDEX aegis_alert_attempts_at ON aegis_alert_attempts (at)",
        """
        CREATE TABLE aegis_alert_channels (
            channel TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            reason TEXT NOT NULL,
            disabled_at REAL NOT NULL,
            probe_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    (
        # Each outbox row's group on its channel (aegis_mw.alerts.grouping):
        # a group's rows go in one notification.
        "ALTER TABLE aegis_alert_outbox ADD COLUMN group_key TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX aegis_alert_outbox_group ON aegis_alert_outbox (channel, group_key, state)",
    ),
    (
        # Silences (aegis_mw.alerts.silences), each as its mapping, and the
        # audit of every change to them: who, what, when.
        """
        CREATE TABLE aegis_alert_silences (
            id TEXT PRIMARY KEY,
            data TEXT NOT NULL,
            ends_at REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE aegis_alert_audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            detail TEXT NOT NULL
        )
        """,
        "CREATE INDEX aegis_alert_audit_at ON aegis_alert_audit (at)",
    ),
    (
        # The notification each attempt was part of (a group's rows are sent
        # as one): rate limits count notifications, not rows.
        "ALTER TABLE aegis_alert_attempts ADD COLUMN send_id TEXT NOT NULL DEFAULT ''",
    ),
    (
        # Alert rules written through the API (aegis_mw.alerts.store), each
        # as its mapping; a deleted one stays with no data, a tombstone whose
        # revision tells every process it is gone.
        """
        CREATE TABLE aegis_alert_rules (
            name TEXT PRIMARY KEY,
            data TEXT,
            revision INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            updated_by TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        # max(revision), read every tick, from the index's end.
        "CREATE INDEX aegis_alert_rules_revision ON aegis_alert_rules (revision)",
        # The rows a claim marked, read back by its id (aegis_mw.alerts.store).
        "CREATE INDEX aegis_alert_outbox_claimed ON aegis_alert_outbox (claimed_by)",
        # Each process's report of its health (aegis_mw.alerts.reports),
        # rewritten every tick.
        """
        CREATE TABLE aegis_alert_reports (
            process TEXT PRIMARY KEY,
            at REAL NOT NULL,
            data TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    (
        # Alert channels written through the API (aegis_mw.alerts.store),
        # kept as the rules are: a deleted one stays as a tombstone. Their
        # revisions are their own: a channel's change does not reload rules.
        """
        CREATE TABLE aegis_alert_channel_configs (
            name TEXT PRIMARY KEY,
            data TEXT,
            revision INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            updated_by TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX aegis_alert_channel_configs_revision "
        "ON aegis_alert_channel_configs (revision)",
    ),
    (
        # The request log's time index, one row per block of appended rows
        # instead of one entry per row (see sqlite_blocks): keyed by the
        # block's last rowid, found by its time range. The rows already
        # there become blocks of 1,024 rowids (copied in time order by
        # version 4, appended in time order since).
        """
        CREATE TABLE aegis_request_blocks (
            last_row INTEGER PRIMARY KEY,
            first_row INTEGER NOT NULL,
            time_min REAL NOT NULL,
            time_max REAL NOT NULL
        )
        """,
        "CREATE INDEX aegis_request_blocks_time_max ON aegis_request_blocks (time_max)",
        "CREATE INDEX aegis_request_blocks_time_min ON aegis_request_blocks (time_min)",
        "INSERT INTO aegis_request_blocks (last_row, first_row, time_min, time_max) "
        "SELECT max(rowid), min(rowid), min(timestamp), max(timestamp) FROM aegis_requests "
        "GROUP BY rowid / 1024",
        "DROP INDEX IF EXISTS aegis_requests_timestamp",
    ),
    (
        # The app's own events (core.events): keyed by their id, so an event
        # sent again is stored once; tags and payload as JSON text.
        """
        CREATE TABLE aegis_events (
            event_id TEXT PRIMARY KEY,
            timestamp REAL NOT NULL,
            type TEXT NOT NULL,
            source TEXT NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL,
            tags TEXT NOT NULL,
            payload TEXT,
            trace_id TEXT
        )
        """,
        "CREATE INDEX aegis_events_timestamp ON aegis_events (timestamp)",
    ),
    (
        # Incidents (aegis_mw.incidents.store): active_key is the correlation
        # key while the incident is not resolved, unique, so one is active per
        # key across processes; every change an update row.
        """
        CREATE TABLE aegis_incidents (
            incident_id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            description TEXT NOT NULL,
            severity TEXT NOT NULL,
            status TEXT NOT NULL,
            assignee TEXT,
            root_cause TEXT NOT NULL,
            correlation_key TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            resolved_at REAL,
            created_by TEXT NOT NULL,
            active_key TEXT UNIQUE
        )
        """,
        "CREATE INDEX aegis_incidents_created_at ON aegis_incidents (created_at)",
        # The request log's server errors, read as events and in timelines:
        # a partial index holds only them, so inserting other rows costs
        # nothing more.
        "CREATE INDEX aegis_requests_errors ON aegis_requests (timestamp) WHERE status >= 500",
        """
        CREATE TABLE aegis_incident_updates (
            incident_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            changes TEXT NOT NULL,
            note TEXT NOT NULL,
            PRIMARY KEY (incident_id, seq)
        ) WITHOUT ROWID
        """,
    ),
    (
        # The app's own metrics' changes at each resolution (see
        # core.custom_history), clustered for a read of one metric over time,
        # and what each metric was last declared as.
        """
        CREATE TABLE aegis_custom_rollups (
            resolution INTEGER NOT NULL,
            bucket INTEGER NOT NULL,
            metric TEXT NOT NULL,
            labels TEXT NOT NULL,
            labels_key TEXT NOT NULL,
            total REAL NOT NULL,
            count INTEGER NOT NULL,
            low REAL,
            high REAL,
            first_sample INTEGER,
            last_sample INTEGER,
            counts TEXT,
            PRIMARY KEY (resolution, metric, bucket, labels_key)
        ) WITHOUT ROWID
        """,
        # Retention deletes by time at each resolution, whatever the metric.
        "CREATE INDEX aegis_custom_rollups_time ON aegis_custom_rollups (resolution, bucket)",
        """
        CREATE TABLE aegis_custom_metrics (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            help TEXT NOT NULL,
            labels TEXT NOT NULL,
            bounds TEXT NOT NULL,
            mode TEXT NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    (
        # The audit of the API's writes that keep none of their own (events
        # posted: see core.audit_log), read newest first and pruned by time.
        """
        CREATE TABLE aegis_audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            detail TEXT NOT NULL
        )
        """,
        "CREATE INDEX aegis_audit_at ON aegis_audit (at)",
    ),
    (
        # The trace and span each request and session was part of (see
        # RequestRecord), NULL where no trace was active. Added in place: a
        # nullable column without a default rewrites no row (old rows read
        # NULL), and a process of an older aegis_mw still connected keeps
        # inserting its named columns.
        "ALTER TABLE aegis_requests ADD COLUMN trace_id TEXT",
        "ALTER TABLE aegis_requests ADD COLUMN span_id TEXT",
        "ALTER TABLE aegis_websocket_sessions ADD COLUMN trace_id TEXT",
        "ALTER TABLE aegis_websocket_sessions ADD COLUMN span_id TEXT",
        # The request log filtered by trace (a trace's few requests): a
        # partial index holds only traced rows, so an untraced insert costs
        # nothing more (no index covers all of the log's rows: see the
        # module docstring). A query's ``trace_id = ?`` implies the index's
        # condition, so SQLite uses it whatever the value bound.
        "CREATE INDEX aegis_requests_trace ON aegis_requests (trace_id) WHERE trace_id IS NOT NULL",
    ),
    (
        # The Idempotency-Keys of incident openings (aegis_mw.incidents.store):
        # a key (hashed with who sent it) seen again answers what its first
        # opening did. Kept a day, then deleted by the sink's pruning.
        """
        CREATE TABLE aegis_incident_requests (
            request_key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            incident_id TEXT NOT NULL,
            created INTEGER NOT NULL,
            at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX aegis_incident_requests_at ON aegis_incident_requests (at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Sessions keep their primary key: ``ON CONFLICT DO NOTHING`` skips only an
# id stored already; ``INSERT OR IGNORE`` would also skip, silently, a row
# that breaks a NOT NULL constraint (a NaN is stored as NULL) while the batch
# counts it as written. Requests have no key to conflict on: such a row is an
# error the flusher sees either way (see sqlite.py).
#: Rows per request insert statement: binding one statement of many rows
#: costs SQLite and the driver far less per row than stepping a one-row
#: statement per record (about a fifth of the insert's cost, see
#: ``bench/pipeline.py``). 64 rows of 14 columns are 896 parameters, under
#: the 999 that SQLite before 3.32 allows by default (a 16th column would
#: need fewer rows: 64 x 16 is 1,024).
ROWS_PER_INSERT = 64


def _insert(table: str, columns: tuple[str, ...], rows: int, tail: str = "") -> str:
    row = f"({', '.join('?' for _ in columns)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}{tail}"


INSERT_REQUEST = _insert("aegis_requests", REQUEST_COLUMNS, 1)
INSERT_REQUESTS = _insert("aegis_requests", REQUEST_COLUMNS, ROWS_PER_INSERT)
INSERT_SESSION = _insert("aegis_websocket_sessions", SESSION_COLUMNS, 1, " ON CONFLICT DO NOTHING")
INSERT_EVENT = _insert("aegis_events", EVENT_COLUMNS, 1, " ON CONFLICT DO NOTHING")
INSERT_BATCH = (
    "INSERT INTO aegis_batches (batch_id, applied_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
)


class SchemaTooNew(RuntimeError):
    """The file was written by a newer aegis_mw; refuse rather than corrupt it."""


def _check_version(found: int) -> None:
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {found} is newer than this aegis_mw "
            f"understands ({SCHEMA_VERSION}); upgrade aegis_mw"
        )


def _histogram_v3(text: str | None) -> str:
    """A version 2 histogram (``{"index": count}``) in the version 3 layout."""
    return json.dumps(decode_histogram(text), separators=(",", ":"))


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found.

    A file at this version already is only read: the write lock is taken
    when there is something to migrate. Every new connection is checked, a
    reading one too, and a reader must not wait for the write lock (held
    by the flusher's commit, a prune, another process) to learn that the
    file needs nothing, let alone fail on it as if the store were down."""
    found = int(connection.execute("PRAGMA user_version").fetchone()[0])
    _check_version(found)
    if found == SCHEMA_VERSION:
        return found
    connection.create_function("aegis_histogram_v3", 1, _histogram_v3, deterministic=True)
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Again under the lock: another process may have migrated meanwhile.
        found = int(connection.execute("PRAGMA user_version").fetchone()[0])
        _check_version(found)
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

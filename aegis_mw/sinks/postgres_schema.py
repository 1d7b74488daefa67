"""The PostgreSQL schema and its versioned migrations.

Columns and table names are those of SQLite (see :mod:`.sqlite_schema`), in
PostgreSQL's types: ``double precision`` for seconds and milliseconds,
``bigint`` for byte counts, ``boolean`` for ``accepted`` and ``bigint[]`` for
the rollup histograms. Ids and routes are ``COLLATE "C"``: bytewise, as in
SQLite, so the request log is ordered the same by both.

``aegis_schema_version`` holds one row per applied version. Migrations run in
one transaction that first takes a transaction-scoped advisory lock (keyed by
the schema, so databases shared by several apps' schemas do not wait for one
another): when several processes start at once, one applies each step and
the others, once the lock is theirs, find it done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .event_rows import EVENT_COLUMNS
from .sqlite_schema import REQUEST_COLUMNS, SESSION_COLUMNS, SchemaTooNew

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

logger = logging.getLogger("aegis_mw")

#: First key of the advisory lock taken while migrating ("aegi").
LOCK_KEY = 0x61656769

_ROLLUP_VALUES = """
            count bigint NOT NULL,
            errors bigint NOT NULL,
            rate_limited bigint NOT NULL,
            duration_sum double precision NOT NULL,
            duration_min double precision NOT NULL,
            duration_max double precision NOT NULL,
            request_bytes bigint NOT NULL,
            response_bytes bigint NOT NULL,
            histogram jsonb NOT NULL"""
# (Version 3 turns ``histogram`` into ``bigint[]``: see MIGRATIONS.)


def _drop_request_key(connection: psycopg.Connection[Any]) -> None:
    """Version 4's drop of the request key, unless something of the app's
    depends on it (a foreign key referencing ``aegis_requests``, a view
    grouping by ``request_id``): dropping it would fail, and with it every
    connect. The key is then kept, and the sink stores requests as it
    stores sessions (see :func:`request_key`)."""
    import psycopg

    try:
        with connection.transaction():  # a savepoint: a refusal keeps the rest
            connection.execute(
                "ALTER TABLE aegis_requests DROP CONSTRAINT IF EXISTS aegis_requests_pkey"
            )
    except psycopg.errors.DependentObjectsStillExist as exc:
        logger.warning(
            "aegis: the primary key of aegis_requests is kept, as something depends on it "
            "(%s); requests are still stored once each, at the key's cost to the server",
            exc.diag.message_detail or exc,
        )


def _optional_index(
    name: str, definition: str, what: str, without: str
) -> Callable[[psycopg.Connection[Any]], None]:
    """A migration step: a partial index of the request log (``what`` it
    holds), unless the server refuses it (compressed TimescaleDB chunks);
    ``without`` says what reads do then."""

    def create(connection: psycopg.Connection[Any]) -> None:
        import psycopg

        try:
            with connection.transaction():  # a savepoint: a refusal keeps the rest
                connection.execute(
                    f"CREATE INDEX IF NOT EXISTS {name} ON aegis_requests {definition}"
                )
        except psycopg.DatabaseError as exc:
            if _cut_short(exc) or connection.broken:
                raise  # cut short, not refused: the migration is tried again
            logger.warning("aegis: no index of the request log's %s (%s); %s", what, exc, without)

    return create


_index_errors = _optional_index(
    "aegis_requests_errors", "(timestamp) WHERE status >= 500", "server errors",
    "reading them as events scans the log",
)  # fmt: skip
_index_traces = _optional_index(
    "aegis_requests_trace", "(trace_id) WHERE trace_id IS NOT NULL", "trace ids",
    "reading one trace's requests scans the log",
)  # fmt: skip


def request_key(connection: psycopg.Connection[Any]) -> bool:
    """Whether ``aegis_requests`` has a unique key (one kept by version 4, or
    TimescaleDB's): then a batch without an id written twice, or retried
    after its id was pruned, would conflict with its own rows."""
    row = connection.execute(
        "SELECT count(*) FROM pg_constraint "
        "WHERE conrelid = to_regclass('aegis_requests') AND contype IN ('p', 'u')"
    ).fetchone()
    return row is not None and row[0] > 0


#: Each version's steps: statements, or a function of the connection where a
#: step depends on what the database holds.
MIGRATIONS: tuple[tuple[str | Callable[[psycopg.Connection[Any]], None], ...], ...] = (
    (
        """
        CREATE TABLE aegis_requests (
            request_id text COLLATE "C" NOT NULL,
            timestamp double precision NOT NULL,
            method text NOT NULL,
            route text COLLATE "C" NOT NULL,
            path text NOT NULL,
            status integer NOT NULL,
            duration_ms double precision NOT NULL,
            ttfb_ms double precision,
            request_bytes bigint NOT NULL,
            response_bytes bigint NOT NULL,
            client_ip text,
            error text NOT NULL,
            CONSTRAINT aegis_requests_pkey PRIMARY KEY (request_id)
        )
        """,
        "CREATE INDEX aegis_requests_timestamp ON aegis_requests (timestamp)",
        """
        CREATE TABLE aegis_websocket_sessions (
            session_id text COLLATE "C" PRIMARY KEY,
            timestamp double precision NOT NULL,
            route text COLLATE "C" NOT NULL,
            path text NOT NULL,
            duration_ms double precision NOT NULL,
            messages_in bigint NOT NULL,
            messages_out bigint NOT NULL,
            close_code integer,
            accepted boolean NOT NULL,
            client_ip text,
            error text NOT NULL
        )
        """,
        "CREATE INDEX aegis_websocket_sessions_timestamp ON aegis_websocket_sessions (timestamp)",
    ),
    (
        # The key leads with (resolution, bucket): a time-range read is one
        # index range scan.
        f"""
        CREATE TABLE aegis_rollups (
            resolution integer NOT NULL,
            bucket bigint NOT NULL,
            route text COLLATE "C" NOT NULL,
            method text COLLATE "C" NOT NULL,
            status_class integer NOT NULL,
            {_ROLLUP_VALUES},
            PRIMARY KEY (resolution, bucket, route, method, status_class)
        )
        """,
        f"""
        CREATE TABLE aegis_rollup_totals (
            resolution integer NOT NULL,
            bucket bigint NOT NULL,
            status_class integer NOT NULL,
            {_ROLLUP_VALUES},
            PRIMARY KEY (resolution, bucket, status_class)
        )
        """,
        # Ids of the rollup deltas already added: a retried write adds none twice.
        """
        CREATE TABLE aegis_rollup_deltas (
            delta_id text COLLATE "C" PRIMARY KEY,
            applied_at double precision NOT NULL
        )
        """,
        "CREATE INDEX aegis_rollup_deltas_applied_at ON aegis_rollup_deltas (applied_at)",
        "CREATE INDEX aegis_requests_route ON aegis_requests (route, timestamp)",
        # Two histograms ({"bucket index": count}) added key by key; the
        # rollup upsert calls it on conflict, as SQLite calls its Python twin.
        # It walks only ``b`` (the incoming delta, a few buckets) and looks
        # each key up in ``a`` (the stored row, which grows to many buckets):
        # a third cheaper than regrouping both.
        """
        CREATE FUNCTION aegis_histogram_merge(a jsonb, b jsonb) RETURNS jsonb
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT a || coalesce(
                (SELECT jsonb_object_agg(key, coalesce((a ->> key)::bigint, 0) + value::bigint)
                 FROM jsonb_each_text(b)),
                '{}'::jsonb
            )
        $$
        """,
    ),
    (
        # Histograms become dense arrays, ``[first_index, count, ...]`` (see
        # rollup.dense): psycopg decodes one in C, and merging walks two
        # short arrays instead of regrouping JSON objects.
        """
        CREATE FUNCTION aegis_histogram_v3(h jsonb) RETURNS bigint[]
        LANGUAGE sql IMMUTABLE AS $$
            SELECT CASE WHEN lo IS NULL THEN '{}'::bigint[] ELSE lo::bigint || ARRAY(
                SELECT coalesce((h ->> i::text)::bigint, 0)
                FROM generate_series(lo, hi) AS i ORDER BY i) END
            FROM (SELECT min(key::int) AS lo, max(key::int) AS hi
                  FROM jsonb_object_keys(h) AS key) AS bounds
        $$
        """,
        "ALTER TABLE aegis_rollups ALTER COLUMN histogram TYPE bigint[] "
        "USING aegis_histogram_v3(histogram)",
        "ALTER TABLE aegis_rollup_totals ALTER COLUMN histogram TYPE bigint[] "
        "USING aegis_histogram_v3(histogram)",
        "DROP FUNCTION aegis_histogram_v3(jsonb)",
        "DROP FUNCTION aegis_histogram_merge(jsonb, jsonb)",
        # Element 1 is the first bucket index, element k + 2 the count of
        # bucket first + k; a subscript past either end reads NULL, hence the
        # coalesce, and the CASE keeps an index below ``first`` from reading
        # element 1 itself.
        """
        CREATE FUNCTION aegis_histogram_merge(a bigint[], b bigint[]) RETURNS bigint[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE
                WHEN cardinality(a) = 0 THEN b
                WHEN cardinality(b) = 0 THEN a
                ELSE least(a[1], b[1]) || ARRAY(
                    SELECT coalesce(CASE WHEN i >= a[1] THEN a[i - a[1] + 2] END, 0)
                         + coalesce(CASE WHEN i >= b[1] THEN b[i - b[1] + 2] END, 0)
                    FROM generate_series(least(a[1], b[1]),
                        greatest(a[1] + cardinality(a), b[1] + cardinality(b)) - 2) AS i
                    ORDER BY i)
            END
        $$
        """,
        # Kept up to date, this index cost two fifths of the insert rate; the
        # request log filtered by route now walks the timestamp index instead.
        "DROP INDEX IF EXISTS aegis_requests_route",
    ),
    (
        # The request log without its primary key: idempotency per batch
        # instead of per row (see Batch.batch_id), as SQLite's version 4. Each
        # row's entry in an index of random text ids cost the server about a
        # microsecond, more as the table grew. The rows stay where they are.
        _drop_request_key,
        # Ids of the batches stored: a retried batch is stored once.
        """
        CREATE TABLE aegis_batches (
            batch_id text COLLATE "C" PRIMARY KEY,
            applied_at double precision NOT NULL
        )
        """,
        "CREATE INDEX aegis_batches_applied_at ON aegis_batches (applied_at)",
    ),
    (
        # Alerts (aegis_mw.alerts.store), as SQLite's version 5.
        """
        CREATE TABLE aegis_alert_lease (
            name text PRIMARY KEY,
            holder text NOT NULL,
            token bigint NOT NULL,
            expires_at double precision NOT NULL
        )
        """,
        """
        CREATE TABLE aegis_alert_instances (
            rule text NOT NULL,
            group_key text NOT NULL,
            state text NOT NULL,
            data text NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (rule, group_key)
        )
        """,
        """
        CREATE TABLE aegis_alert_transitions (
            id bigserial PRIMARY KEY,
            at double precision NOT NULL,
            rule text NOT NULL,
            group_key text NOT NULL,
            kind text NOT NULL,
            from_state text NOT NULL,
            to_state text NOT NULL,
            value double precision,
            severity text NOT NULL,
            episode text NOT NULL,
            notify boolean NOT NULL,
            labels text NOT NULL,
            annotations text NOT NULL
        )
        """,
        "CREATE INDEX aegis_alert_transitions_at ON aegis_alert_transitions (at)",
    ),
    (
        # The alert notices' outbox, as SQLite's version 6.
        """
        CREATE TABLE aegis_alert_outbox (
            id bigserial PRIMARY KEY,
            created_at double precision NOT NULL,
            channel text NOT NULL,
            notice_key text NOT NULL,
            alert_key text NOT NULL,
            episode text NOT NULL,
            payload text NOT NULL,
            state text NOT NULL,
            attempts integer NOT NULL,
            next_at double precision NOT NULL,
            claimed_by text NOT NULL,
            claimed_until double precision NOT NULL,
            last_error text NOT NULL,
            done_at double precision,
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
        # Delivery attempts and disabled channels, as SQLite's version 7.
        """
        CREATE TABLE aegis_alert_attempts (
            id bigserial PRIMARY KEY,
            notice_id bigint NOT NULL,
            channel text NOT NULL,
            at double precision NOT NULL,
            outcome text NOT NULL,
            error text NOT NULL,
            seconds double precision NOT NULL,
            sender text NOT NULL
        )
        """,
        "CREATE INDEX aegis_alert_attempts_notice ON aegis_alert_attempts (notice_id)",
        "CREATE INDEX aegis_alert_attempts_at ON aegis_alert_attempts (at)",
        """
        CREATE TABLE aegis_alert_channels (
            channel text PRIMARY KEY,
            fingerprint text NOT NULL,
            reason text NOT NULL,
            disabled_at double precision NOT NULL,
            probe_at double precision NOT NULL
        )
        """,
    ),
    (
        # Each outbox row's group on its channel (aegis_mw.alerts.grouping):
        # a group's rows go in one notification.
        "ALTER TABLE aegis_alert_outbox ADD COLUMN group_key text NOT NULL DEFAULT ''",
        "CREATE INDEX aegis_alert_outbox_group ON aegis_alert_outbox (channel, group_key, state)",
    ),
    (
        # Silences (aegis_mw.alerts.silences), each as its mapping, and the
        # audit of every change to them: who, what, when.
        """
        CREATE TABLE aegis_alert_silences (
            id text PRIMARY KEY,
            data text NOT NULL,
            ends_at double precision NOT NULL,
            updated_at double precision NOT NULL
        )
        """,
        """
        CREATE TABLE aegis_alert_audit (
            id bigserial PRIMARY KEY,
            at double precision NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            object text NOT NULL,
            detail text NOT NULL
        )
        """,
        "CREATE INDEX aegis_alert_audit_at ON aegis_alert_audit (at)",
    ),
    (
        # The notification each attempt was part of (a group's rows are sent
        # as one): rate limits count notifications, not rows.
        "ALTER TABLE aegis_alert_attempts ADD COLUMN send_id text NOT NULL DEFAULT ''",
    ),
    (
        # Alert rules written through the API (aegis_mw.alerts.store), each
        # as its mapping; a deleted one stays with no data, a tombstone whose
        # revision tells every process it is gone.
        """
        CREATE TABLE aegis_alert_rules (
            name text PRIMARY KEY,
            data text,
            revision bigint NOT NULL,
            updated_at double precision NOT NULL,
            updated_by text NOT NULL
        )
        """,
        # max(revision), read every tick, from the index's end.
        "CREATE INDEX aegis_alert_rules_revision ON aegis_alert_rules (revision)",
        # The rows a claim marked, read back by its id (aegis_mw.alerts.store).
        "CREATE INDEX aegis_alert_outbox_claimed ON aegis_alert_outbox (claimed_by)",
        # Each process's report of its health (aegis_mw.alerts.reports),
        # rewritten every tick.
        """
        CREATE TABLE aegis_alert_reports (
            process text PRIMARY KEY,
            at double precision NOT NULL,
            data text NOT NULL
        )
        """,
    ),
    (
        # Alert channels written through the API (aegis_mw.alerts.store),
        # kept as the rules are: a deleted one stays as a tombstone. Their
        # revisions are their own: a channel's change does not reload rules.
        """
        CREATE TABLE aegis_alert_channel_configs (
            name text PRIMARY KEY,
            data text,
            revision bigint NOT NULL,
            updated_at double precision NOT NULL,
            updated_by text NOT NULL
        )
        """,
        "CREATE INDEX aegis_alert_channel_configs_revision "
        "ON aegis_alert_channel_configs (revision)",
    ),
    (
        # The app's own events (core.events), as in SQLite.
        """
        CREATE TABLE aegis_events (
            event_id text COLLATE "C" PRIMARY KEY,
            timestamp double precision NOT NULL,
            type text NOT NULL,
            source text COLLATE "C" NOT NULL,
            level text NOT NULL,
            message text NOT NULL,
            tags text NOT NULL,
            payload text,
            trace_id text
        )
        """,
        "CREATE INDEX aegis_events_timestamp ON aegis_events (timestamp)",
    ),
    (
        # Incidents, as in SQLite.
        """
        CREATE TABLE aegis_incidents (
            incident_id text COLLATE "C" PRIMARY KEY,
            title text NOT NULL,
            description text NOT NULL,
            severity text NOT NULL,
            status text NOT NULL,
            assignee text,
            root_cause text NOT NULL,
            correlation_key text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            resolved_at double precision,
            created_by text NOT NULL,
            active_key text UNIQUE
        )
        """,
        "CREATE INDEX aegis_incidents_created_at ON aegis_incidents (created_at)",
        # The request log's server errors, read as events and in timelines:
        # a partial index holds only them, so inserting other rows costs
        # nothing more. Built in a savepoint: where it cannot be (a compressed
        # TimescaleDB hypertable), the reads scan instead.
        _index_errors,
        """
        CREATE TABLE aegis_incident_updates (
            incident_id text COLLATE "C" NOT NULL,
            seq integer NOT NULL,
            at double precision NOT NULL,
            actor text NOT NULL,
            kind text NOT NULL,
            changes text NOT NULL,
            note text NOT NULL,
            PRIMARY KEY (incident_id, seq)
        )
        """,
    ),
    (
        # The app's own metrics' changes at each resolution (see
        # core.custom_history), clustered for a read of one metric over time,
        # and what each metric was last declared as.
        """
        CREATE TABLE aegis_custom_rollups (
            resolution integer NOT NULL,
            bucket bigint NOT NULL,
            metric text COLLATE "C" NOT NULL,
            labels text COLLATE "C" NOT NULL,
            labels_key text COLLATE "C" NOT NULL,
            total double precision NOT NULL,
            count bigint NOT NULL,
            low double precision,
            high double precision,
            first_sample bigint,
            last_sample bigint,
            counts bigint[],
            PRIMARY KEY (resolution, metric, bucket, labels_key)
        )
        """,
        # Retention deletes by time at each resolution, whatever the metric.
        "CREATE INDEX aegis_custom_rollups_time ON aegis_custom_rollups (resolution, bucket)",
        """
        CREATE TABLE aegis_custom_metrics (
            name text COLLATE "C" PRIMARY KEY,
            kind text NOT NULL,
            help text NOT NULL,
            labels text NOT NULL,
            bounds text NOT NULL,
            mode text NOT NULL,
            updated_at double precision NOT NULL
        )
        """,
        # Two lists of bucket counts added element by element (NULL: none).
        """
        CREATE FUNCTION aegis_counts_add(a bigint[], b bigint[]) RETURNS bigint[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a ELSE ARRAY(
                SELECT coalesce(x, 0) + coalesce(y, 0)
                FROM unnest(a, b) WITH ORDINALITY AS u (x, y, i) ORDER BY i) END
        $$
        """,
    ),
    (
        # The audit of the API's writes that keep none of their own (events
        # posted: see core.audit_log), read newest first and pruned by time.
        """
        CREATE TABLE aegis_audit (
            id bigserial PRIMARY KEY,
            at double precision NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            object text NOT NULL,
            detail text NOT NULL
        )
        """,
        "CREATE INDEX aegis_audit_at ON aegis_audit (at)",
    ),
    (
        # The trace and span of each request and session, as in SQLite.
        # Nullable and without a default: PostgreSQL adds them to the
        # catalog only, rewriting no row (old rows read NULL), and a process
        # of an older aegis_mw still connected keeps COPYing its named
        # columns. COLLATE "C": compared bytewise, as ids are.
        'ALTER TABLE aegis_requests ADD COLUMN trace_id text COLLATE "C", '
        'ADD COLUMN span_id text COLLATE "C"',
        'ALTER TABLE aegis_websocket_sessions ADD COLUMN trace_id text COLLATE "C", '
        'ADD COLUMN span_id text COLLATE "C"',
        # The request log filtered by trace: a partial index of the traced
        # rows only, so an untraced insert costs nothing more. ``trace_id =
        # $1`` implies its condition (= is strict), so the planner uses it
        # with any bound value, in a generic plan too. Built in a savepoint:
        # where it cannot be (a compressed TimescaleDB hypertable), the
        # reads scan instead.
        _index_traces,
    ),
    (
        # The Idempotency-Keys of incident openings, as in SQLite.
        """
        CREATE TABLE aegis_incident_requests (
            request_key text COLLATE "C" PRIMARY KEY,
            fingerprint text NOT NULL,
            incident_id text NOT NULL,
            created boolean NOT NULL,
            at double precision NOT NULL
        )
        """,
        "CREATE INDEX aegis_incident_requests_at ON aegis_incident_requests (at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_TIMESCALE_AVAILABLE = "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
# TimescaleDB (untested here: the extension is not installed on the machines
# the tests run on). A hypertable's unique keys must include its partitioning
# column, so the request key becomes (request_id, timestamp) here, until
# version 4 drops the key altogether (applied after this, in the same
# transaction, on a new database). ``timestamp`` is a float, which
# TimescaleDB cannot partition on directly: a partitioning function maps it
# to integer microseconds, the unit of the one-day chunk interval.
_TIMESCALE = (
    "CREATE EXTENSION IF NOT EXISTS timescaledb",
    """
    CREATE FUNCTION aegis_unix_micros(seconds double precision) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT (seconds * 1000000)::bigint $$
    """,
    "ALTER TABLE aegis_requests DROP CONSTRAINT aegis_requests_pkey, "
    "ADD CONSTRAINT aegis_requests_pkey PRIMARY KEY (request_id, timestamp)",
    "SELECT create_hypertable('aegis_requests', 'timestamp', "
    "chunk_time_interval => 86400000000, time_partitioning_func => 'aegis_unix_micros')",
)

INSERT_EVENTS = (
    f"INSERT INTO aegis_events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))}) ON CONFLICT DO NOTHING"
)
INSERT_SESSIONS = (
    f"INSERT INTO aegis_websocket_sessions ({', '.join(SESSION_COLUMNS)}) "
    f"SELECT {', '.join(SESSION_COLUMNS)} FROM aegis_stage_sessions ON CONFLICT DO NOTHING"
)
INSERT_STAGED_REQUESTS = (
    f"INSERT INTO aegis_requests ({', '.join(REQUEST_COLUMNS)}) "
    f"SELECT {', '.join(REQUEST_COLUMNS)} FROM aegis_stage_requests ON CONFLICT DO NOTHING"
)
COPY_REQUESTS = f"COPY aegis_requests ({', '.join(REQUEST_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
COPY_SESSIONS = (
    f"COPY aegis_websocket_sessions ({', '.join(SESSION_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)
COPY_STAGED_SESSIONS = (
    f"COPY aegis_stage_sessions ({', '.join(SESSION_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)
COPY_STAGED_REQUESTS = (
    f"COPY aegis_stage_requests ({', '.join(REQUEST_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)
#: Binary COPY sends each value in the column's own type.
#: The trace and span ids are text that may be NULL, as ``client_ip`` is
#: (the compiled formatter takes None in any column).
REQUEST_TYPES = (
    "text", "float8", "text", "text", "text", "int4", "float8", "float8",
    "int8", "int8", "text", "text", "text", "text",
)  # fmt: skip
SESSION_TYPES = (
    "text", "float8", "text", "text", "float8", "int8", "int8", "int4", "bool", "text", "text",
    "text", "text",
)  # fmt: skip

#: Per-connection staging tables for sessions some of which are stored
#: already (a batch built by hand, without a batch id, written twice), and
#: for requests where their table kept a key (see request_key).
#: Emptied at every commit: a batch never sees the rows of the one before,
#: and nothing is left to clean up. It has no indexes, so COPY into it costs
#: only the rows.
CREATE_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS aegis_stage_sessions "
    "(LIKE aegis_websocket_sessions) ON COMMIT DELETE ROWS",
    "CREATE TEMPORARY TABLE IF NOT EXISTS aegis_stage_requests "
    "(LIKE aegis_requests) ON COMMIT DELETE ROWS",
)
#: A batch's id, stored once: no row inserted means a retry of a batch stored already.
INSERT_BATCH = (
    "INSERT INTO aegis_batches (batch_id, applied_at) VALUES (%s, %s) ON CONFLICT DO NOTHING"
)


#: How long a migration waits for a lock it needs (the request log's, behind
#: a long transaction): while it waits in the queue, every other session's
#: use of the table waits behind it. Past it the migration fails, and the
#: next connection tries again.
MIGRATION_LOCK_TIMEOUT_MS = 30_000


def migrate(
    connection: psycopg.Connection[Any], seconds: float, renew: Callable[[], None] = lambda: None
) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found.

    ``connection`` is in autocommit mode; the migration is one transaction.
    It waits at most MIGRATION_LOCK_TIMEOUT_MS for a lock (the migration's
    own, another process migrating; a table's); applying versions, each
    statement may take ``seconds`` (not the connection's own statement
    timeout: a version may build an index of a large table). ``renew`` is
    called before each of them (the caller's deadline counted afresh).
    """
    with connection.transaction():
        # Integers of our own: SET takes no parameters.
        connection.execute(f"SET LOCAL lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS:d}")
        # Held to the end of the transaction: whoever comes next reads the
        # version this transaction wrote.
        connection.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (LOCK_KEY,)
        )
        renew()
        found = _version(connection)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema version {found} is newer than this aegis_mw "
                f"understands ({SCHEMA_VERSION}); upgrade aegis_mw"
            )
        if found < SCHEMA_VERSION:
            # Not the connection's statement timeout (a read pool's 30 s, the
            # app's own): a version may build an index of a large table.
            connection.execute(f"SET LOCAL statement_timeout = {int(seconds * 1000):d}")
        if found == 0:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS aegis_schema_version ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for version in range(found, SCHEMA_VERSION):
            for step in MIGRATIONS[version]:
                renew()
                if callable(step):
                    step(connection)
                else:
                    connection.execute(step)
            if version == 0:
                renew()
                _try_timescale(connection)
            connection.execute(
                "INSERT INTO aegis_schema_version (version) VALUES (%s)", (version + 1,)
            )
    return found


def _cut_short(error: BaseException) -> bool:
    """A migration's statement cancelled (its statement timeout), or a lock
    not had within its lock timeout: not a refusal, tried again later."""
    import psycopg

    return isinstance(error, (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable))


def schema_is_current(connection: psycopg.Connection[Any]) -> bool:
    """Whether the schema is at ``SCHEMA_VERSION`` already (one read, no lock:
    versions only grow; a newer one is for ``migrate`` to refuse)."""
    return _version(connection) == SCHEMA_VERSION


def _version(connection: psycopg.Connection[Any]) -> int:
    exists = connection.execute("SELECT to_regclass('aegis_schema_version')").fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = connection.execute(
        "SELECT coalesce(max(version), 0) FROM aegis_schema_version"
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _try_timescale(connection: psycopg.Connection[Any]) -> None:
    """Make ``aegis_requests`` a hypertable when TimescaleDB can be had; plain
    tables otherwise (or when this role may not create the extension)."""
    import psycopg

    if connection.execute(_TIMESCALE_AVAILABLE).fetchone() is None:
        return
    try:
        with connection.transaction():  # a savepoint: failing here keeps plain tables
            for statement in _TIMESCALE:
                connection.execute(statement)
    except psycopg.Error as exc:
        if _cut_short(exc):
            raise  # cut short, not refused: the migration is tried again
        logger.warning("aegis: TimescaleDB is available but not used (%s)", exc)

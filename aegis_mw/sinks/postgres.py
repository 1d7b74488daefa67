"""``postgresql://user@host:5432/db``: several processes, one history.

One write connection, opened by the thread that writes (the sink's own
thread; a new one after a fork, a restart or a broken connection). Each
batch is one transaction. Its id goes into ``aegis_batches`` first: when it
is there already (a retried batch whose first write did commit), its records
are skipped whole. Requests are then COPYed (binary) straight into their
table, which has no key to check (schema version 4). Sessions are COPYed in
a savepoint; when one is already there (a batch built by hand, without an
id, written twice) the savepoint is rolled back and they go through a
per-connection staging table and one ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING`` instead; so are requests where their table kept its key (something
of the app's depended on it, see ``postgres_schema.request_key``). Then the
batch's rollup delta is added, once per delta id.
Reads borrow connections from a small pool (see :mod:`.postgres_read`).

Every round trip on the write connection has a deadline the client keeps
(see :mod:`.postgres_deadline`): a server that hung with the connection open
(its process stopped, a network that swallows what it is sent while the
peer's kernel still acknowledges, so ``tcp_user_timeout`` never fires)
would otherwise hold the sink's thread, and the sink busy, for as long as
it stays so. Each statement of a write (the deadline counted afresh before
each; a list of upserts sent at once counts as one), a prune step or a
lease call gets the statement timeout in
effect on the connection (30 s where nobody chose one, or it is off) plus
``write_grace``; a new connection's set-up ``SETUP_SECONDS`` at least. Past
it the connection is closed and the call fails as the store being
unreachable (the batch is retried under its id, or spooled), and the next
call opens a new connection: to a server that answers again, or to another
at the same address. A migration that applies versions gets
``MIGRATION_SECONDS`` a statement (it may build an index of a large table,
once), and a statement timeout just below. A server process that
stopped while it held locks keeps them: writes needing them wait (each
cancelled at the statement timeout) until it is continued or ended.

Example::

    aegis = Aegis(sink="postgresql://aegis@db.internal:5432/metrics")
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, NamedTuple

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the PostgreSQL sink needs psycopg: pip install 'aegis_mw[postgres]'"
    ) from exc

from ..alerts.store import SQLAlertStore
from ..core import leases
from ..core.audit_log import SQLAuditLog
from ..core.custom_history import counts_array, custom_parameters
from ..core.errors import ConfigError
from ..core.gil_slices import Paced, Slices
from ..core.record import Batch
from ..core.rollup import LEVELS, Encode, RollupDelta, expand, histogram_functions
from ..core.rollup import parameter_rows as rollup_parameters
from ..core.sink import RecordRejected
from ..incidents.store import KEY_KEEP_SECONDS, SQLIncidentStore
from . import history_sql, postgres_copy
from .event_rows import event_rows
from .postgres_deadline import Deadline, Watchdog
from .postgres_read import (
    KEEPALIVES,
    MIGRATION_MARGIN,
    MIGRATION_SECONDS,
    SETUP_SECONDS,
    STATEMENT_TIMEOUT_MS,
    PostgresReader,
    bound_statements,
)
from .postgres_schema import (
    COPY_REQUESTS,
    COPY_SESSIONS,
    COPY_STAGED_REQUESTS,
    COPY_STAGED_SESSIONS,
    CREATE_STAGING,
    INSERT_BATCH,
    INSERT_EVENTS,
    INSERT_SESSIONS,
    INSERT_STAGED_REQUESTS,
    REQUEST_TYPES,
    SESSION_TYPES,
    migrate,
    request_key,
    schema_is_current,
)

logger = logging.getLogger("aegis_mw")

#: What tells that a value was refused, not that the server is away: data
#: exceptions (SQLSTATE class 22: a NUL in text, a number out of range),
#: constraint violations and program limits (an index entry too large) from
#: the server; values the driver cannot send (an int beyond 64 bits, text that
#: is no UTF-8, a type it cannot adapt). Connection trouble is an
#: OperationalError of another class (08, 53, 57) and is retried with backoff.
REFUSED: tuple[type[BaseException], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
    UnicodeEncodeError,
    OverflowError,
    TypeError,
    ValueError,
)
UPSERT_ROLLUPS = history_sql.upsert(history_sql.POSTGRES, "aegis_rollups", history_sql.ROLLUP_KEY)
UPSERT_CUSTOM = history_sql.upsert_custom(history_sql.POSTGRES)
UPSERT_CUSTOM_METRIC = history_sql.upsert_custom_metric(history_sql.POSTGRES)
UPSERT_TOTALS = history_sql.upsert(
    history_sql.POSTGRES, "aegis_rollup_totals", history_sql.TOTAL_KEY
)
#: How long applied delta ids are remembered: far beyond any retry.
DELTA_ID_KEEP_SECONDS = 86_400.0
#: Unless the URL says otherwise: an unreachable server fails a write well
#: within the default sink_timeout (5 s), as an error of its own.
CONNECT_TIMEOUT_SECONDS = 3
#: Unless the URL says otherwise: data sent to the server and not
#: acknowledged for this long ends the write connection (milliseconds).
TCP_USER_TIMEOUT_MS = 15_000
#: The longest an alert-store call waits for a connection of its pool (the
#: server down: the tick fails and is logged, the next one tries again).
ALERT_POOL_WAIT_SECONDS = 10.0
#: Seconds beyond the statement timeout in effect that a call on the write
#: connection waits for an answer (see the module's docstring): a server that
#: runs has cancelled the statement by then.
WRITE_GRACE_SECONDS = 10.0


class PostgresSink(Paced, history_sql.ReaderBacked):
    """Writes records to ``aegis_requests`` and ``aegis_websocket_sessions``,
    the app's events to ``aegis_events``, and keeps rollups for history, in
    the database the URL names.

    Example::

        sink = PostgresSink("postgresql://aegis@127.0.0.1:5432/metrics")
        aegis = Aegis(sink=sink)
    """

    #: A store across the network: its batches are spooled while it is
    #: unreachable, when ``spool_dir`` is set (see aegis_mw.core.spooling).
    remote = True
    stores_events = True
    #: Seconds beyond the statement timeout in effect that a write, a prune
    #: step or a lease call waits for the server's answer before its
    #: connection is closed.
    write_grace = WRITE_GRACE_SECONDS

    def __init__(self, url: str) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            # The message of the error, never the URL: it may hold a password.
            raise ConfigError("sink", "postgresql://...", f"not a PostgreSQL URL ({exc})") from None
        self.url = url
        self.name = f"postgresql:{params.get('host') or 'localhost'}/{params.get('dbname') or ''}"
        self.connect_kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self.connect_kwargs["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
        if "application_name" not in params:
            self.connect_kwargs["application_name"] = "aegis_mw"
        # The write connection also gives up on a server gone silent (a
        # network partition, a host that froze): a write would otherwise
        # wait for the kernel's TCP timeouts, minutes, and the pipeline with
        # it (with ``spool_dir`` the batches then go to the spool instead).
        silent = {**KEEPALIVES, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
        self.write_kwargs = {
            **{key: value for key, value in silent.items() if key not in params},
            **self.connect_kwargs,
        }
        self._connection: psycopg.Connection[Any] | None = None
        self._owner: tuple[int, int] = (0, 0)
        # Connections left behind by a fork, or by a thread whose write was
        # abandoned, stay referenced and are never used or closed here: a
        # forked child closing its copy would end the parent's session.
        self._left_behind: list[psycopg.Connection[Any]] = []
        # How requests are stored: COPYed plainly, or as sessions are where
        # their table kept a key (checked on each new connection).
        self._requests = REQUESTS
        # Tables whose expired rows the database refused to delete (a foreign
        # key of the app's), warned about once each.
        self._prune_refused: set[str] = set()
        # The prune step the next prune starts at (one after a step cancelled).
        self._prune_from = 0
        self._reader: PostgresReader = PostgresReader(url, self.connect_kwargs, self.name)
        #: The alert store's pool (the alert, sender and API threads): apart
        #: from the history reads', whose long queries must not hold it.
        self._alerts = PostgresReader(url, self.connect_kwargs, self.name, purpose="alerts")
        self._alerts.timeout = ALERT_POOL_WAIT_SECONDS
        # The compiled module offered by use_compiled, and whether it formats
        # COPY rows on the write connection (see postgres_copy), checked once
        # per connection, by the thread that writes.
        self._compiled: ModuleType | None = None
        self._encode_histogram: Encode = histogram_functions(None)[1]
        self._copier: ModuleType | None = None
        self._copier_checked_for: psycopg.Connection[Any] | None = None
        #: Keeps the write connection's deadlines; the statement timeout in
        #: effect on it (seconds), set by _connect.
        self._watchdog = Watchdog("aegis-write-deadlines")
        self._statements = STATEMENT_TIMEOUT_MS / 1000

    def alert_store(self) -> SQLAlertStore:
        """The alert state's store in this database (see
        :mod:`aegis_mw.alerts.store`): each call of it borrows a connection
        of a small pool of its own (the alert threads call a few times a
        second; a new connection each time cost the server a backend and
        the call a round trip or three), checked as it is lent."""
        return SQLAlertStore(self._alerts.borrow, "postgresql")

    def incident_store(self) -> SQLIncidentStore:
        """The incidents' store in this database (see
        :mod:`aegis_mw.incidents.store`), on the alert store's pool."""
        return SQLIncidentStore(
            self._alerts.borrow, "postgresql", (psycopg.errors.UniqueViolation,)
        )

    def audit_log(self) -> SQLAuditLog:
        """The audit of the API's writes in this database (see
        :mod:`aegis_mw.core.audit_log`), on the alert store's pool."""
        return SQLAuditLog(self._alerts.borrow, "postgresql")

    def use_compiled(self, module: ModuleType | None) -> None:
        """Let the compiled module format COPY rows (``Aegis`` offers it where
        the compiled request paths are used); None: psycopg formats them."""
        self._compiled = module
        self._copier_checked_for = None
        self._encode_histogram = histogram_functions(module)[1]

    def _connect(self) -> psycopg.Connection[Any]:
        owner = (os.getpid(), threading.get_ident())
        connection = self._connection
        if connection is not None and self._owner == owner and not connection.closed:
            return connection
        if connection is not None and self._owner != owner:
            self._left_behind.append(connection)
        self._connection = None
        connection = psycopg.connect(self.url, autocommit=True, **self.write_kwargs)
        try:
            setup = max(self.write_grace, SETUP_SECONDS)
            with self._watchdog.deadline(connection, setup, strict=True):
                current = schema_is_current(connection)
            if not current:
                # Versions to apply: long, but not forever (an index of a
                # large table built, once; a server that hung meanwhile).
                with self._watchdog.deadline(connection, MIGRATION_SECONDS) as migration:
                    migrate(connection, MIGRATION_SECONDS - MIGRATION_MARGIN, migration.renew)
            with self._watchdog.deadline(connection, setup, strict=True):
                for statement in CREATE_STAGING:
                    connection.execute(statement)
                _relax_commits(connection)
                # After the migration, whose statements may take long on a big table.
                statements = bound_statements(connection) / 1000
                self._requests = KEYED_REQUESTS if request_key(connection) else REQUESTS
        except BaseException:
            connection.close()
            raise
        # None chosen (0): ours all the same, a write that never ends holding
        # the sink's thread as a hung server would.
        self._statements = statements or STATEMENT_TIMEOUT_MS / 1000
        self._connection, self._owner = connection, owner
        return connection

    def _answered(self, connection: psycopg.Connection[Any]) -> Deadline:
        """The deadline of one call on the write connection (see the module's
        docstring)."""
        return self._watchdog.deadline(connection, self._statements + self.write_grace)

    def write(self, batch: Batch) -> None:
        """Store the batch in one transaction; raises
        :class:`~aegis_mw.core.sink.RecordRejected` when the server or the
        driver refuses a value in it (see :data:`REFUSED`), so the flusher
        finds that record and stores the others."""
        connection = self._connect()
        try:
            if self._copier_checked_for is not connection:
                self._copier = postgres_copy.compiled_copy(
                    connection, self._compiled, REQUEST_TYPES + SESSION_TYPES
                )
                self._copier_checked_for = connection
            slices = Slices(backlog=self._backlog)  # this write's thread
            with (
                self._answered(connection) as deadline,
                connection.transaction(),
                connection.cursor() as cursor,
            ):
                # The deadline counted afresh before each statement, each
                # having the statement timeout (a list of upserts sent at
                # once counts as one; the commit counts with the last).
                renew = deadline.renew
                # No row for the id: a retry of a write that did commit.
                if (batch.requests or batch.sessions or batch.events) and (
                    not batch.batch_id
                    or cursor.execute(INSERT_BATCH, (batch.batch_id, time.time())).rowcount
                ):
                    if batch.requests:
                        _store(cursor, self._requests, batch.requests, self._copier, slices, renew)
                    if batch.sessions:
                        _store(cursor, SESSIONS, batch.sessions, self._copier, slices, renew)
                    if batch.events:
                        renew()
                        cursor.executemany(INSERT_EVENTS, event_rows(batch.events))
                if batch.rollups is not None and batch.rollups.holds_anything():
                    _add_rollups(cursor, batch.rollups, slices, self._encode_histogram, renew)
        except psycopg.errors.UniqueViolation:
            raise  # never the content: every keyed insert skips ids stored already
        except REFUSED as exc:
            # The transaction was rolled back and the connection is idle.
            raise RecordRejected(
                f"PostgreSQL refused the batch ({type(exc).__name__}: {exc})"
            ) from exc
        except psycopg.OperationalError:
            self._drop_if_broken(connection)
            raise

    def _drop_if_broken(self, connection: psycopg.Connection[Any]) -> None:
        # A lost server leaves the connection closed; a failed rollback, in an
        # unknown transaction state. Either way the next write starts afresh.
        idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if connection.closed or connection.broken or not idle:
            connection.close()
            if connection is self._connection:
                self._connection = None

    # -- history (read_rollups and read_requests: see history_sql.ReaderBacked) --
    def prune(self, raw_before: float, rollups_before: Mapping[int, float], limit: int) -> int:
        """Delete at most ``limit`` expired rows per table, each step its own
        short transaction (autocommit), so writers and readers wait for none of it."""
        connection = self._connect()
        steps: list[tuple[str, dict[str, object]]] = [
            (_DELETE_REQUESTS, {"before": raw_before, "limit": limit}),
            (_DELETE_SESSIONS, {"before": raw_before, "limit": limit}),
            (_DELETE_EVENTS, {"before": raw_before, "limit": limit}),
            (_DELETE_AUDIT, {"before": raw_before, "limit": limit}),
            (_DELETE_DELTAS, {"before": time.time() - DELTA_ID_KEEP_SECONDS, "limit": limit}),
            (_DELETE_BATCHES, {"before": time.time() - DELTA_ID_KEEP_SECONDS, "limit": limit}),
            (_DELETE_KEYS, {"before": time.time() - KEY_KEEP_SECONDS, "limit": limit}),
        ]
        for level in LEVELS:
            if level in rollups_before:
                params: dict[str, object] = {
                    "level": level,
                    "before": rollups_before[level],
                    "limit": limit,
                }
                steps.append((_DELETE_ROLLUPS, params))
                steps.append((_DELETE_TOTALS, params))
                steps.append((_DELETE_CUSTOM, params))
        deleted = 0
        # From the step after the last one cancelled (see below), round.
        start = self._prune_from % len(steps)
        self._prune_from = 0
        try:
            for index in [*range(start, len(steps)), *range(start)]:
                sql, step_params = steps[index]
                try:
                    with self._answered(connection):
                        deleted += connection.execute(sql, step_params).rowcount
                except psycopg.IntegrityError as exc:
                    # A foreign key of the app's on an expired row: that
                    # table waits; the others are pruned all the same.
                    self._warn_prune_refused(sql, exc)
                except psycopg.errors.QueryCanceled as exc:
                    # Past the statement timeout (a table locked, compressed
                    # chunks): this prune stops there, so a locked table
                    # costs the sink's thread one statement timeout, not one
                    # per step; the next starts after it, so every table is
                    # pruned in turn (the connection is idle, autocommit).
                    self._prune_from = index + 1
                    logger.warning(
                        "aegis: pruning %s was cancelled (%s); the next prune starts after it",
                        sql.split()[2], str(exc).splitlines()[0],
                    )  # fmt: skip
                    break
        except psycopg.OperationalError:
            self._drop_if_broken(connection)
            raise
        return deleted

    # -- leases (see core.leases): a job one process of the app does ---------
    def claim_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Hold lease ``name`` until ``now + ttl`` (kept, or taken once it
        expired); False while another process holds it."""
        connection = self._connect()
        try:
            with self._answered(connection), connection.transaction():
                token = leases.claim(connection, name, holder, now, ttl, mark="%s", lock=True)
        except psycopg.OperationalError:
            self._drop_if_broken(connection)
            raise
        return token is not None

    def hosts_seen(self, holder: str, now: float, ttl: float) -> list[tuple[str, float]]:
        """The hosts whose processes write to this database (``holder``'s
        among them until ``now + ttl``), by their leases, with their expiry
        (core.leases)."""
        connection = self._connect()
        try:
            with self._answered(connection), connection.transaction():
                return leases.hosts_seen(connection, holder, now, ttl, mark="%s", lock=True)
        except psycopg.OperationalError:
            self._drop_if_broken(connection)
            raise

    def release_lease(self, name: str, holder: str) -> None:
        """Give lease ``name`` up at once, when ``holder`` holds it."""
        connection = self._connect()
        try:
            with self._answered(connection), connection.transaction():
                leases.release(connection, name, holder, mark="%s")
        except psycopg.OperationalError:
            self._drop_if_broken(connection)
            raise

    def _warn_prune_refused(self, sql: str, exc: psycopg.Error) -> None:
        table = sql.split()[2]  # DELETE FROM <table> ...
        if table not in self._prune_refused:  # once per table and sink
            self._prune_refused.add(table)
            logger.warning(
                "aegis: expired rows of %s are kept, as the database refused to delete them "
                "(%s); the other tables are pruned",
                table,
                str(exc).splitlines()[0],
            )

    def close(self) -> None:
        self._reader.close()
        self._alerts.close()
        if self._connection is not None and self._owner == (os.getpid(), threading.get_ident()):
            self._connection.close()
            self._connection = None
        self._watchdog.close()


def _relax_commits(connection: psycopg.Connection[Any]) -> None:
    """Commits that do not wait for the server's disk, unless someone chose
    otherwise for this session (URL ``options``, ``PGOPTIONS``, the role, the
    database or the server's configuration).

    The trade SQLite makes with ``synchronous=NORMAL``: a crash of the
    database server or its machine (not of the app) may lose the last few
    hundred milliseconds of commits; nothing is ever corrupted or half
    applied. Writes get about 15% faster.
    """
    row = connection.execute(
        "SELECT source FROM pg_settings WHERE name = 'synchronous_commit'"
    ).fetchone()
    if row is not None and row[0] == "default":
        connection.execute("SET synchronous_commit = off")


class _Table(NamedTuple):
    copy: str
    types: Sequence[str]
    kinds: bytes  # the types, as the compiled formatter spells them
    #: For a table with a key: the COPY into its staging table, and the insert
    #: from there that skips the keys stored already; empty for none.
    staged_copy: str = ""
    insert_staged: str = ""


REQUESTS = _Table(COPY_REQUESTS, REQUEST_TYPES, postgres_copy.kinds_of(REQUEST_TYPES))
KEYED_REQUESTS = REQUESTS._replace(
    staged_copy=COPY_STAGED_REQUESTS, insert_staged=INSERT_STAGED_REQUESTS
)
SESSIONS = _Table(
    COPY_SESSIONS, SESSION_TYPES, postgres_copy.kinds_of(SESSION_TYPES),
    COPY_STAGED_SESSIONS, INSERT_SESSIONS,
)  # fmt: skip


def _store(
    cursor: psycopg.Cursor[Any],
    table: _Table,
    rows: Sequence[tuple[Any, ...]],
    compiled: ModuleType | None,
    slices: Slices,
    renew: Callable[[], None],
) -> None:
    """Rows into their table in the caller's transaction; into a table with
    a key, each stored once: COPYed in a savepoint, and if some are there
    already, through the staging table instead, skipping those. ``renew``
    before each statement (the write's deadline, counted afresh)."""
    renew()
    if not table.staged_copy:
        _copy(cursor, table.copy, table, rows, compiled, slices)
        return
    try:
        with cursor.connection.transaction():  # a savepoint
            _copy(cursor, table.copy, table, rows, compiled, slices)
        return
    except psycopg.errors.UniqueViolation:
        pass  # some are stored already: add the others, skipping those
    renew()
    _copy(cursor, table.staged_copy, table, rows, compiled, slices)
    renew()
    cursor.execute(table.insert_staged)


def _copy(
    cursor: psycopg.Cursor[Any],
    sql: str,
    table: _Table,
    rows: Sequence[tuple[Any, ...]],
    compiled: ModuleType | None,
    slices: Slices,
) -> None:
    slices.begin()  # the round trips before it were no work of ours
    with cursor.copy(sql) as copy:
        copy.set_types(table.types)
        postgres_copy.write_rows(copy, rows, table.kinds, compiled, slices)


def _add_rollups(
    cursor: psycopg.Cursor[Any], delta: RollupDelta, slices: Slices, encode: Encode,
    renew: Callable[[], None],
) -> None:  # fmt: skip
    """The delta's cells added to the rollups, once per delta id; ``renew``
    before each statement (the write's deadline, counted afresh)."""
    renew()
    cursor.execute(
        "INSERT INTO aegis_rollup_deltas (delta_id, applied_at) VALUES (%s, %s) "
        "ON CONFLICT DO NOTHING",
        (delta.delta_id, time.time()),
    )
    # A writer racing us with the same id waits on the key until we commit,
    # then inserts nothing: each delta is added once.
    if not cursor.rowcount:  # a retry of a write that did commit
        return
    routes, totals = expand(delta, slices)
    # Rows come sorted by key, routes before totals in every writer, so
    # concurrent writers lock rows in one order and cannot deadlock.
    renew()
    cursor.executemany(UPSERT_ROLLUPS, rollup_parameters(routes, encode, slices=slices))
    renew()
    cursor.executemany(UPSERT_TOTALS, rollup_parameters(totals, encode, slices=slices))
    if delta.custom:
        described, rows = custom_parameters(delta, counts_array, slices)
        renew()
        cursor.executemany(UPSERT_CUSTOM_METRIC, described)
        renew()
        cursor.executemany(UPSERT_CUSTOM, rows)


# Deletes by physical row id (ctid): a LIMIT in a subquery, then a TID scan
# (``= ANY(ARRAY(...))``, where ``IN (SELECT ...)`` would join against the
# whole table). The outer condition repeats the horizon so a row changed
# since the subquery read it, or a hypertable chunk reusing a ctid, is only
# deleted when it too has expired.
_DELETE_REQUESTS = (
    "DELETE FROM aegis_requests WHERE timestamp < %(before)s::float8 AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_requests WHERE timestamp < %(before)s::float8 LIMIT %(limit)s))"
)
_DELETE_SESSIONS = (
    "DELETE FROM aegis_websocket_sessions WHERE timestamp < %(before)s::float8 AND ctid = ANY("
    "ARRAY(SELECT ctid FROM aegis_websocket_sessions WHERE timestamp < %(before)s::float8 "
    "LIMIT %(limit)s))"
)
_DELETE_EVENTS = (
    "DELETE FROM aegis_events WHERE timestamp < %(before)s::float8 AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_events WHERE timestamp < %(before)s::float8 LIMIT %(limit)s))"
)
# The audit of posted events expires with the events.
_DELETE_AUDIT = (
    "DELETE FROM aegis_audit WHERE at < %(before)s::float8 AND id = ANY(ARRAY("
    "SELECT id FROM aegis_audit WHERE at < %(before)s::float8 ORDER BY at LIMIT %(limit)s))"
)
# The incidents' Idempotency-Keys, a day after their opening.
_DELETE_KEYS = (
    "DELETE FROM aegis_incident_requests WHERE at < %(before)s::float8 AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_incident_requests WHERE at < %(before)s::float8 LIMIT %(limit)s))"
)
_DELETE_DELTAS = (
    "DELETE FROM aegis_rollup_deltas WHERE applied_at < %(before)s::float8 AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_rollup_deltas WHERE applied_at < %(before)s::float8 "
    "LIMIT %(limit)s))"
)
_DELETE_BATCHES = (
    "DELETE FROM aegis_batches WHERE applied_at < %(before)s::float8 AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_batches WHERE applied_at < %(before)s::float8 LIMIT %(limit)s))"
)
# Buckets are whole seconds: bucket < h exactly when bucket < ceil(h), and an
# integer bound keeps the comparison on the primary key's index.
_DELETE_ROLLUPS = (
    "DELETE FROM aegis_rollups WHERE resolution = %(level)s "
    "AND bucket < ceil(%(before)s::float8)::bigint AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_rollups WHERE resolution = %(level)s "
    "AND bucket < ceil(%(before)s::float8)::bigint LIMIT %(limit)s))"
)
_DELETE_TOTALS = (
    "DELETE FROM aegis_rollup_totals WHERE resolution = %(level)s "
    "AND bucket < ceil(%(before)s::float8)::bigint AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_rollup_totals WHERE resolution = %(level)s "
    "AND bucket < ceil(%(before)s::float8)::bigint LIMIT %(limit)s))"
)
_DELETE_CUSTOM = (
    "DELETE FROM aegis_custom_rollups WHERE resolution = %(level)s "
    "AND bucket < ceil(%(before)s::float8)::bigint AND ctid = ANY(ARRAY("
    "SELECT ctid FROM aegis_custom_rollups WHERE resolution = %(level)s "
    "AND bucket < ceil(%(before)s::float8)::bigint LIMIT %(limit)s))"
)

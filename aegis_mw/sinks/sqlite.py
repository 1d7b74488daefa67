"""``sqlite:///path``: the embedded default.

One connection, opened by the thread that writes (the sink's own thread; a
new one after a fork or a restart), in WAL mode so readers never block the
writer, with a busy timeout so several processes can share one file. Each
batch is one transaction: its id, its records unless that id was stored
already (a retried batch is stored once), plus the batch's rollups added to
the rollup tables (``BEGIN IMMEDIATE`` serialises writers, so several processes sum into
one history). Reads use one connection per reading thread (see
:mod:`.sqlite_read`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from types import ModuleType

from ..alerts.store import SQLAlertStore
from ..core import leases
from ..core.audit_log import SQLAuditLog
from ..core.custom_history import add_counts_text, custom_parameters
from ..core.errors import ConfigError
from ..core.gil_slices import Paced, Slices, pause_for
from ..core.record import Batch, RequestRecord
from ..core.rollup import LEVELS, RollupDelta, expand, histogram_functions
from ..core.rollup import parameter_rows as rollup_parameters
from ..core.sink import RecordRejected
from ..core.transactions import immediate
from ..incidents.store import KEY_KEEP_SECONDS, SQLIncidentStore
from . import history_sql, sqlite_blocks, sqlite_rows
from .event_rows import event_rows
from .files import create_private, prepare_path
from .sqlite_read import SQLiteReader
from .sqlite_schema import (
    INSERT_BATCH,
    INSERT_EVENT,
    INSERT_REQUEST,
    INSERT_REQUESTS,
    INSERT_SESSION,
    REQUEST_COLUMNS,
    ROWS_PER_INSERT,
    migrate,
)

logger = logging.getLogger("aegis_mw")

UPSERT_ROLLUPS = history_sql.upsert(history_sql.SQLITE, "aegis_rollups", history_sql.ROLLUP_KEY)
UPSERT_TOTALS = history_sql.upsert(history_sql.SQLITE, "aegis_rollup_totals", history_sql.TOTAL_KEY)
UPSERT_CUSTOM = history_sql.upsert_custom(history_sql.SQLITE)
UPSERT_CUSTOM_METRIC = history_sql.upsert_custom_metric(history_sql.SQLITE)
#: How long applied delta and batch ids are remembered: far beyond any retry.
DELTA_ID_KEEP_SECONDS = 86_400.0
#: Idle connections kept for the alert store, the incidents and the audit
#: (each holds the file, its log and its shared memory open): the alert and
#: sender threads, and a few API calls at once.
KEPT_CONNECTIONS = 4

# Below the default sink_timeout (5 s), so a locked database shows up as an
# error of its own rather than as an abandoned write.
BUSY_TIMEOUT_MS = 3000
#: Pages the write-ahead log may hold before a commit copies them into the
#: database (SQLite's default is 1,000, about 4 MB; a batch of 5,000 requests
#: is about 150 pages, so under load every such commit copies one batch). The
#: copy runs inside the sink's COMMIT, without the GIL, yet the app's threads
#: waited behind the long ones: at saturating HTTP load
#: (``bench/tail_latency.py``, three runs beside the same code with the
#: default) the middleware's p99.9 over the bare app's went from +1.45, +2.03
#: and +1.50 ms to +0.19, +0.11 and +0.06 (paced at half the rate, two runs:
#: +1.02 and +0.89 against +0.30 and +0.95), and a thread sleeping 1 ms
#: beside the pipeline (``bench/pipeline.py``) woke over 1 ms late about half
#: as often. More, smaller copies write 4 to 10 % fewer rows a second
#: (``bench/history.py``: 891,000 and 927,000 against 969,000 and 985,000).
WAL_CHECKPOINT_PAGES = 100


class SQLiteSink(Paced, history_sql.ReaderBacked):
    """Writes records to ``aegis_requests`` and ``aegis_websocket_sessions``,
    and the app's events to ``aegis_events``.

    Example::

        app.add_middleware(AegisMiddleware, sink="sqlite:///var/lib/myapp/aegis.db")
    """

    stores_events = True

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
        # Their kept statements (see _append) too.
        self._left_behind: list[object] = []
        self._reader: SQLiteReader = SQLiteReader(self.path, lambda: self._open(shared=True))
        # The compiled module offered by use_compiled, and whether its row
        # inserts drive the writer's connection (see sqlite_rows), checked
        # once per connection, by the thread that writes.
        self._compiled: ModuleType | None = None
        self._rows: ModuleType | None = None
        self._rows_checked_for: sqlite3.Connection | None = None
        #: The compiled inserts' prepared statements on that connection.
        self._statements: object = None
        self._column_range: sqlite_blocks.ColumnRange | None = None
        # How rollup histograms are encoded and merged on conflict (compiled
        # where offered; a connection opened before keeps the Python merge).
        self._histograms = histogram_functions(None)
        #: The process that found the schema migrated (by any connection).
        self._schema_checked_in = 0
        #: The idle connections of the alert store, the incidents and the
        #: audit (see _pooled_connection), of this process; the generation
        #: counts the pool's closes (a connection lent before one is closed
        #: when it comes back, not kept).
        self._pool_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._pool_pid = os.getpid()
        self._pool_generation = 0

    def alert_store(self) -> SQLAlertStore:
        """The alert state's store in this file (see :mod:`aegis_mw.alerts.store`),
        on connections kept between calls (see _pooled_connection): the alert
        threads call it a few times a second, and opening a connection (its
        WAL switch, pragmas and functions) cost each call about 0.8 ms."""
        return SQLAlertStore(self._pooled_connection, "sqlite")

    def incident_store(self) -> SQLIncidentStore:
        """The incidents' store in this file (see :mod:`aegis_mw.incidents.store`),
        on connections kept as the alert store's are."""
        return SQLIncidentStore(self._pooled_connection, "sqlite", (sqlite3.IntegrityError,))

    def audit_log(self) -> SQLAuditLog:
        """The audit of the API's writes in this file (see
        :mod:`aegis_mw.core.audit_log`), on connections kept between writes:
        an audited events POST would otherwise spend most of its time opening
        one (its WAL switch and pragmas, about 0.5 ms)."""
        return SQLAuditLog(self._pooled_connection, "sqlite")

    @contextmanager
    def _pooled_connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of the pool of the alert store, the incidents and the
        audit, for one thread at a time (as the reader's pool lends them); one
        that saw an error of SQLite's is closed, not kept, and so is one beyond
        ``KEPT_CONNECTIONS`` idle (a burst of API threads leaves no more
        open). The schema is checked by the first of this process only."""
        self._pool_after_fork()
        with self._pool_lock:
            connection = self._pool.pop() if self._pool else None
            generation = self._pool_generation
        if connection is None:
            connection = self._open(
                shared=True, check_schema=self._schema_checked_in != os.getpid()
            )
        try:
            yield connection
        except BaseException as error:
            # The store's own refusals (an Idempotency-Key reused, a conflict)
            # leave the connection as it was: kept. SQLite's errors, or one
            # left inside a transaction, close it.
            if isinstance(error, sqlite3.Error) or connection.in_transaction:
                connection.close()
                raise
            self._keep(connection, generation)
            raise
        self._keep(connection, generation)

    def _keep(self, connection: sqlite3.Connection, generation: int) -> None:
        """Give ``connection`` back to the pool, or close it (the sink closed
        since it was lent, or enough are kept)."""
        with self._pool_lock:
            kept = (
                self._pool_pid == os.getpid()
                and self._pool_generation == generation
                and len(self._pool) < KEPT_CONNECTIONS
            )
            if kept:
                self._pool.append(connection)
        if not kept:  # the sink closed meanwhile, or enough are kept
            connection.close()

    def _pool_after_fork(self) -> None:
        """In a forked child, a pool of its own: the parent's lock may have
        been held at the fork, and its connections are the parent's (kept
        referenced, never used or closed here)."""
        if self._pool_pid != os.getpid():
            self._pool_lock = threading.Lock()
            self._left_behind.extend(self._pool)
            self._pool, self._pool_pid = [], os.getpid()

    def use_compiled(self, module: ModuleType | None) -> None:
        """Let the compiled module bind request rows (``Aegis`` offers it where
        the compiled request paths are used); None: the sqlite3 module binds."""
        self._compiled = module
        self._column_range = getattr(module, "column_range", None)
        self._rows_checked_for = None
        self._histograms = histogram_functions(module)

    def _connect(self) -> sqlite3.Connection:
        owner = (os.getpid(), threading.get_ident())
        if self._connection is not None and self._owner == owner:
            return self._connection
        if self._connection is not None:
            self._left_behind.append(self._connection)
            self._connection = None
        self._connection = self._open()
        self._owner = owner
        return self._connection

    def _open(self, *, shared: bool = False, check_schema: bool = True) -> sqlite3.Connection:
        """A configured, migrated connection: for the calling thread, or
        ``shared`` by reading threads one at a time; ``check_schema`` False
        when this process has migrated the file already."""
        create_private(self.path)
        connection = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=not shared,
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            self._enable_wal(connection)
            # WAL + NORMAL survives an application crash; only an OS crash can
            # lose the last transactions, an accepted trade for telemetry.
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES:d}")
            connection.create_function(
                "aegis_histogram_merge", 2, self._histograms[2], deterministic=True
            )
            connection.create_function("aegis_counts_add", 2, add_counts_text, deterministic=True)
            if check_schema:
                migrate(connection)
                self._schema_checked_in = os.getpid()
        except BaseException:
            connection.close()
            raise
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
        """Store the batch in one transaction; raises
        :class:`~aegis_mw.core.sink.RecordRejected` when SQLite refuses a value
        in it (see :func:`_refused`), so the flusher finds that record and
        stores the others."""
        connection = self._connect()
        try:
            with immediate(connection):
                # An id stored already: a retry of a write that did commit.
                if (batch.requests or batch.sessions or batch.events) and (
                    not batch.batch_id
                    or connection.execute(INSERT_BATCH, (batch.batch_id, time.time())).rowcount
                ):
                    if batch.requests:
                        self._insert_requests(connection, batch.requests)
                    if batch.sessions:
                        connection.executemany(INSERT_SESSION, batch.sessions)
                    if batch.events:
                        connection.executemany(INSERT_EVENT, event_rows(batch.events))
                if batch.rollups is not None and batch.rollups.holds_anything():
                    self._add_rollups(connection, batch.rollups)
        except BaseException as exc:
            if _refused(exc):
                raise RecordRejected(
                    f"SQLite refused the batch ({type(exc).__name__}: {exc})"
                ) from exc
            raise

    def _insert_requests(
        self, connection: sqlite3.Connection, records: Sequence[RequestRecord]
    ) -> None:
        """Whole statements of :data:`ROWS_PER_INSERT` rows, then the rest one
        by one. Binding a statement's rows holds the GIL for a fraction of a
        millisecond; SQLite's work on them runs without it, long enough for
        a waiting request thread to take it. The compiled inserts, where
        used, take the records first, pausing between slices of SQLite's
        work as paced (see :mod:`.sqlite_rows`), and these statements
        whatever they left. The rows' block is recorded in the same
        transaction (see :mod:`.sqlite_blocks`)."""
        before = sqlite_blocks.settle(connection)
        self._append(connection, records)
        sqlite_blocks.after_insert(connection, before, records, self._column_range)

    def _append(self, connection: sqlite3.Connection, records: Sequence[RequestRecord]) -> None:
        if self._rows_checked_for is not connection:
            earlier = self._rows_checked_for
            if self._statements is not None and any(kept is earlier for kept in self._left_behind):
                # Finalizing them would wait for that connection's mutex, which
                # an abandoned write may hold for as long as it hangs.
                self._left_behind.append(self._statements)
            self._rows = sqlite_rows.compiled_rows(connection, self._compiled)
            self._rows_checked_for = connection
            self._statements = (
                None if self._rows is None else sqlite_rows.statement_cache(self._rows)
            )
        # A whole statement's rows at least: fewer (a record being isolated,
        # a quiet second) cost less through the sqlite3 module's statement
        # cache than a 64-row statement prepared for them.
        if (
            self._rows is not None
            and type(records) is list
            and len(records) >= ROWS_PER_INSERT
            and not sqlite_rows.adapted()
        ):
            try:
                start = sqlite_rows.insert(
                    self._rows, connection, INSERT_REQUESTS, INSERT_REQUEST, ROWS_PER_INSERT,
                    len(REQUEST_COLUMNS), records, pause_for(self._backlog), self._statements,
                )  # fmt: skip
            except (TypeError, ValueError):
                # A compiled module that does not fit this code (raised before
                # any row is written): the sqlite3 module binds from now on.
                logger.exception("aegis_mw: compiled SQLite inserts failed; not used again")
                self._rows = self._statements = None
                start = 0
            records = records[start:]
        whole = len(records) - len(records) % ROWS_PER_INSERT
        flatten = chain.from_iterable
        step = ROWS_PER_INSERT
        for first in range(0, whole, step):
            connection.execute(INSERT_REQUESTS, tuple(flatten(records[first : first + step])))
        if whole < len(records):
            connection.executemany(INSERT_REQUEST, records[whole:])

    def _add_rollups(self, connection: sqlite3.Connection, delta: RollupDelta) -> None:
        first_time = connection.execute(
            "INSERT OR IGNORE INTO aegis_rollup_deltas (delta_id, applied_at) VALUES (?, ?)",
            (delta.delta_id, time.time()),
        ).rowcount
        if not first_time:  # a retry of a write that did commit
            return
        slices = Slices(backlog=self._backlog)  # this write's thread (see core.gil_slices)
        routes, totals = expand(delta, slices)
        encode = self._histograms[0]
        connection.executemany(UPSERT_ROLLUPS, rollup_parameters(routes, encode, slices=slices))
        connection.executemany(UPSERT_TOTALS, rollup_parameters(totals, encode, slices=slices))
        if delta.custom:
            described, rows = custom_parameters(delta, slices=slices)
            connection.executemany(UPSERT_CUSTOM_METRIC, described)
            connection.executemany(UPSERT_CUSTOM, rows)

    # -- history (read_rollups and read_requests: see history_sql.ReaderBacked) --
    def prune(self, raw_before: float, rollups_before: Mapping[int, float], limit: int) -> int:
        """Delete at most ``limit`` expired rows per table, each step its own
        short transaction, so writers and readers wait for none of it."""
        connection = self._connect()
        # Rows another program appended since the last write are put in blocks
        # first, so that they are pruned too (see sqlite_blocks.settle).
        with immediate(connection):
            sqlite_blocks.settle(connection)
        expired: dict[str, object] = {"before": raw_before, "limit": limit}
        deleted = connection.execute(sqlite_blocks.DELETE_REQUESTS, expired).rowcount
        connection.execute(sqlite_blocks.RAISE_TIME_MIN, expired)  # not a deletion
        steps: list[tuple[str, tuple[object, ...] | dict[str, object]]] = [
            (sqlite_blocks.DELETE_BLOCKS, expired),
            (_DELETE_SESSIONS, (raw_before, limit)),
            (_DELETE_EVENTS, (raw_before, limit)),
            (_DELETE_AUDIT, (raw_before, limit)),
            (_DELETE_DELTAS, (time.time() - DELTA_ID_KEEP_SECONDS, limit)),
            (_DELETE_BATCHES, (time.time() - DELTA_ID_KEEP_SECONDS, limit)),
            (_DELETE_KEYS, (time.time() - KEY_KEEP_SECONDS, limit)),
        ]
        for level in LEVELS:
            if level in rollups_before:
                horizon = rollups_before[level]
                steps.append((_DELETE_ROLLUPS, (level, horizon, limit)))
                steps.append((_DELETE_TOTALS, (level, horizon, limit)))
                steps.append((_DELETE_CUSTOM, (level, horizon, limit)))
        return deleted + sum(connection.execute(sql, params).rowcount for sql, params in steps)

    # -- leases (see core.leases): a job one process of the app does ---------
    def claim_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Hold lease ``name`` until ``now + ttl`` (kept, or taken once it
        expired); False while another process holds it."""
        connection = self._connect()
        with immediate(connection):
            token = leases.claim(connection, name, holder, now, ttl, mark="?", lock=False)
        return token is not None

    def release_lease(self, name: str, holder: str) -> None:
        """Give lease ``name`` up at once, when ``holder`` holds it."""
        connection = self._connect()
        with immediate(connection):
            leases.release(connection, name, holder, mark="?")

    def close(self) -> None:
        self._reader.close()
        self._pool_after_fork()
        with self._pool_lock:
            pool, self._pool = self._pool, []
            self._pool_generation += 1
        for connection in pool:
            connection.close()
        if self._connection is not None and self._owner == (os.getpid(), threading.get_ident()):
            # Its kept statements first, so the file is closed at once.
            self._statements = self._rows_checked_for = None
            self._connection.close()
            self._connection = None


def _refused(exc: BaseException) -> bool:
    """A value SQLite cannot take: text that is no UTF-8, an int beyond 64 bits,
    a string or blob too big, a constraint, a type it cannot bind. A locked,
    full, read-only or broken database is an OperationalError or a
    DatabaseError of another kind, and is retried with backoff."""
    if isinstance(
        exc, (UnicodeEncodeError, OverflowError, sqlite3.DataError, sqlite3.IntegrityError)
    ):
        return True
    # Binding an unsupported type: ProgrammingError since 3.11, InterfaceError before.
    return isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)) and str(
        exc
    ).startswith("Error binding parameter")


_DELETE_SESSIONS = (
    "DELETE FROM aegis_websocket_sessions WHERE session_id IN "
    "(SELECT session_id FROM aegis_websocket_sessions WHERE timestamp < ? LIMIT ?)"
)
_DELETE_EVENTS = (
    "DELETE FROM aegis_events WHERE event_id IN "
    "(SELECT event_id FROM aegis_events WHERE timestamp < ? LIMIT ?)"
)
# The audit of posted events expires with the events.
_DELETE_AUDIT = (
    "DELETE FROM aegis_audit WHERE id IN "
    "(SELECT id FROM aegis_audit WHERE at < ? ORDER BY at LIMIT ?)"
)
# The incidents' Idempotency-Keys, a day after their opening.
_DELETE_KEYS = (
    "DELETE FROM aegis_incident_requests WHERE request_key IN "
    "(SELECT request_key FROM aegis_incident_requests WHERE at < ? LIMIT ?)"
)
_DELETE_DELTAS = (
    "DELETE FROM aegis_rollup_deltas WHERE delta_id IN "
    "(SELECT delta_id FROM aegis_rollup_deltas WHERE applied_at < ? LIMIT ?)"
)
_DELETE_BATCHES = (
    "DELETE FROM aegis_batches WHERE batch_id IN "
    "(SELECT batch_id FROM aegis_batches WHERE applied_at < ? LIMIT ?)"
)
_DELETE_ROLLUPS = (
    "DELETE FROM aegis_rollups WHERE (resolution, bucket, route, method, status_class) IN "
    "(SELECT resolution, bucket, route, method, status_class FROM aegis_rollups "
    "WHERE resolution = ? AND bucket < ? LIMIT ?)"
)
_DELETE_TOTALS = (
    "DELETE FROM aegis_rollup_totals WHERE (resolution, bucket, status_class) IN "
    "(SELECT resolution, bucket, status_class FROM aegis_rollup_totals "
    "WHERE resolution = ? AND bucket < ? LIMIT ?)"
)
_DELETE_CUSTOM = (
    "DELETE FROM aegis_custom_rollups WHERE (resolution, metric, bucket, labels_key) IN "
    "(SELECT resolution, metric, bucket, labels_key FROM aegis_custom_rollups "
    "WHERE resolution = ? AND bucket < ? LIMIT ?)"
)

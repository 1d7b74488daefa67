"""The spool on disk: one SQLite file in ``spool_dir``, shared by the app's processes.

A row per spooled batch, in the order spooled (its compressed payload, see
:mod:`aegis_mw.core.spool_codec`), keyed by sink and ``batch_id`` so that
a batch spooled twice (a write retried after a timeout) is kept once. The
processes of an app, and the processes after a restart, open the same file:
whichever holds a sink's replay lease (a row of ``aegis_alert_lease`` in
this file, as in the stores, see :mod:`aegis_mw.core.leases`) replays it,
oldest first; a process that dies stops renewing, and another takes over
once the lease has run out. The file is created owner-only: it holds the
same private data as the store.

WAL with ``synchronous = NORMAL``: a committed batch survives the process
(a crash, a restart); only a crash of the machine may lose the last ones.

Example::

    spool = SpoolFile("/var/lib/app/spool/aegis-spool.db", "postgresql:db/metrics",
                      limit_bytes=256 * 2**20, lease_seconds=60.0)
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Sequence

from ..core import leases
from ..core.errors import ConfigError
from ..core.settings import AegisSettings
from ..core.sink_runner import SinkRunner
from ..core.spooling import Spooled, SpoolFull, SpoolView
from ..core.transactions import immediate
from .files import create_private
from .sqlite import BUSY_TIMEOUT_MS, SQLiteSink

logger = logging.getLogger("aegis_mw")

FILE_NAME = "aegis-spool.db"
SCHEMA_VERSION = 1
SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS aegis_spool (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        sink TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        records INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        oldest REAL NOT NULL,
        spooled_at REAL NOT NULL,
        payload BLOB NOT NULL,
        UNIQUE (sink, batch_id)
    )
    """,
    # In spooling order for each sink: the oldest batch, and the one after it,
    # found without reading the rest.
    "CREATE INDEX IF NOT EXISTS aegis_spool_order ON aegis_spool (sink, sequence)",
    # What each sink holds, kept by every change in the same transaction:
    # the bound is checked and the figures read without summing the rows.
    """
    CREATE TABLE IF NOT EXISTS aegis_spool_totals (
        sink TEXT PRIMARY KEY,
        batches INTEGER NOT NULL,
        records INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS aegis_alert_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token INTEGER NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
)


class SpoolFile:
    """One sink's part of the spool file; used by the sink's thread only."""

    def __init__(self, path: str, sink: str, *, limit_bytes: int, lease_seconds: float) -> None:
        self.path = path
        self.sink = sink
        self.limit_bytes = limit_bytes
        self.lease_seconds = lease_seconds
        self._lease = f"spool:{sink}"
        self._holder = leases.holder_id()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self.replayed_elsewhere = False
        # Opened now, so that a spool_dir that cannot hold the file fails at start.
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        # A forked child's copy of the parent's connection is never used or closed.
        create_private(self.path)
        connection = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,  # opened at start, then used by the sink's thread
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            SQLiteSink._enable_wal(connection)
            connection.execute("PRAGMA synchronous = NORMAL")
            with immediate(connection):
                for statement in SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        except BaseException:
            connection.close()
            raise
        self._connection, self._pid = connection, os.getpid()
        return connection

    def append(self, batch_id: str, records: int, oldest: float, payload: bytes) -> bool:
        connection = self._connect()
        with immediate(connection):
            held = connection.execute("SELECT total(bytes) FROM aegis_spool_totals").fetchone()[0]
            if held + len(payload) > self.limit_bytes:
                raise SpoolFull(
                    f"the spool holds {int(held)} bytes; a batch of {len(payload)} more "
                    f"would take it over spool_max_bytes ({self.limit_bytes})"
                )
            added = connection.execute(
                "INSERT INTO aegis_spool (sink, batch_id, records, bytes, oldest, spooled_at, "
                "payload) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (self.sink, batch_id, records, len(payload), oldest, time.time(), payload),
            ).rowcount
            if added:
                self._count(connection, self.sink, 1, records, len(payload))
        return bool(added)

    @staticmethod
    def _count(connection: sqlite3.Connection, sink: str, *change: int) -> None:
        connection.execute(
            "INSERT INTO aegis_spool_totals (sink, batches, records, bytes) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (sink) DO UPDATE SET batches = batches + excluded.batches, "
            "records = records + excluded.records, bytes = bytes + excluded.bytes",
            (sink, *change),
        )

    def first(self) -> tuple[int, int, bytes] | None:
        connection = self._connect()
        self.replayed_elsewhere = False
        with immediate(connection):
            row = self._next(connection, -1)
            if row is None:  # nothing to replay: the lease goes, for whoever spools next
                leases.release(connection, self._lease, self._holder, mark="?")
                return None
            token = leases.claim(
                connection, self._lease, self._holder, time.time(), self.lease_seconds,
                mark="?", lock=False,
            )  # fmt: skip
        self.replayed_elsewhere = token is None
        return None if token is None else row

    def after(self, sequence: int) -> tuple[int, int, bytes] | None:
        return self._next(self._connect(), sequence)

    def _next(self, connection: sqlite3.Connection, sequence: int) -> tuple[int, int, bytes] | None:
        row = connection.execute(
            "SELECT sequence, records, payload FROM aegis_spool WHERE sink = ? AND sequence > ? "
            "ORDER BY sequence LIMIT 1",
            (self.sink, sequence),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]))

    def remove(self, sequence: int) -> None:
        connection = self._connect()
        with immediate(connection):
            row = connection.execute(
                "SELECT sink, records, bytes FROM aegis_spool WHERE sequence = ?", (sequence,)
            ).fetchone()
            if row is not None:  # not when another process removed it first
                connection.execute("DELETE FROM aegis_spool WHERE sequence = ?", (sequence,))
                self._count(connection, row[0], -1, -row[1], -row[2])

    def view(self) -> SpoolView:
        connection = self._connect()
        totals = connection.execute(
            "SELECT batches, records, bytes FROM aegis_spool_totals WHERE sink = ?", (self.sink,)
        ).fetchone()
        if totals is None or not totals[0]:
            return SpoolView()
        # The oldest batch's earliest record: batches are spooled in the order they came.
        oldest = connection.execute(
            "SELECT oldest FROM aegis_spool WHERE sink = ? ORDER BY sequence LIMIT 1",
            (self.sink,),
        ).fetchone()
        return SpoolView(int(totals[0]), int(totals[1]), int(totals[2]),
                         float(oldest[0]) if oldest else 0.0)  # fmt: skip

    def others(self, sinks: Sequence[str]) -> dict[str, int]:
        """Records spooled for sinks not among ``sinks`` (renamed or removed since)."""
        rows = (
            self._connect()
            .execute("SELECT sink, records FROM aegis_spool_totals WHERE batches > 0")
            .fetchall()
        )
        return {str(sink): int(records) for sink, records in rows if sink not in sinks}

    def release(self) -> None:
        connection = self._connect()
        with immediate(connection):
            leases.release(connection, self._lease, self._holder, mark="?")

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

    def reset_after_fork(self) -> None:
        """In a forked child: a connection and a holder name of its own."""
        self._connection = None
        self._holder = leases.holder_id()


def attach_spools(runners: Sequence[SinkRunner], settings: AegisSettings) -> None:
    """With ``spool_dir`` set: each remote sink's writes through a spool in
    it (the directory made owner-only if missing). A spool_dir with no
    remote sink to spool, or one that cannot hold the file, fails at start."""
    if not settings.spool_dir:
        return
    source = settings.sources.get("spool_dir", "")
    remote = [runner for runner in runners if getattr(runner.sink, "remote", False)]
    if not remote:
        raise ConfigError(
            "spool_dir", settings.spool_dir,
            "'' with only local sinks: the spool keeps the batches of remote ones "
            "(postgresql://..., or a sink object whose remote attribute is true)",
            source,
        )  # fmt: skip
    path = os.path.join(settings.spool_dir, FILE_NAME)
    try:
        os.makedirs(settings.spool_dir, mode=0o700, exist_ok=True)
        files = [
            SpoolFile(
                path,
                runner.name,
                limit_bytes=settings.spool_max_bytes,
                lease_seconds=3 * settings.flush_interval + 2 * settings.sink_timeout,
            )
            for runner in remote
        ]
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            "spool_dir", settings.spool_dir,
            f"a directory where this process can keep an SQLite file ({exc})",
            source,
        ) from None  # fmt: skip
    left = files[0].others([runner.name for runner in remote])
    for name, records in sorted(left.items()):
        logger.warning(
            "aegis spool: %s holds %d records of sink %s, which this app no longer has; "
            "they stay there (see docs/deployment.md, the spool)",
            path, records, name,
        )  # fmt: skip
    for runner, spool in zip(remote, files, strict=True):
        runner.attach_spool(
            Spooled(
                runner.sink.write,
                spool,
                sink_timeout=settings.sink_timeout,
                backoff_initial=settings.retry_backoff_initial,
                backoff_max=settings.retry_backoff_max,
            )
        )

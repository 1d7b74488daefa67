"""The SQLite sink: schema, idempotence, exact round trips, several processes, URLs."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, Batch, RequestRecord, WebSocketSession
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.rollup import RollupDelta, RollupRow
from aegis_mw.sinks import SQLiteSink, sqlite_schema
from aegis_mw.sinks.sqlite_schema import SCHEMA_VERSION, SchemaTooNew
from aegis_mw.testing import FakeClock
from tests.conftest import compiled_module
from tests.harness import inbox_item
from tests.spawned import run_together

EXPECTED_REQUEST_COLUMNS = [
    # name, declared type, not null, primary key position
    ("request_id", "TEXT", 1, 0),  # no key since version 4: batches are
    ("timestamp", "REAL", 1, 0),
    ("method", "TEXT", 1, 0),
    ("route", "TEXT", 1, 0),
    ("path", "TEXT", 1, 0),
    ("status", "INTEGER", 1, 0),
    ("duration_ms", "REAL", 1, 0),
    ("ttfb_ms", "REAL", 0, 0),
    ("request_bytes", "INTEGER", 1, 0),
    ("response_bytes", "INTEGER", 1, 0),
    ("client_ip", "TEXT", 0, 0),
    ("error", "TEXT", 1, 0),
    ("trace_id", "TEXT", 0, 0),  # added in place by version 18
    ("span_id", "TEXT", 0, 0),
]
EXPECTED_SESSION_COLUMNS = [
    ("session_id", "TEXT", 1, 1),
    ("timestamp", "REAL", 1, 0),
    ("route", "TEXT", 1, 0),
    ("path", "TEXT", 1, 0),
    ("duration_ms", "REAL", 1, 0),
    ("messages_in", "INTEGER", 1, 0),
    ("messages_out", "INTEGER", 1, 0),
    ("close_code", "INTEGER", 0, 0),
    ("accepted", "INTEGER", 1, 0),
    ("client_ip", "TEXT", 0, 0),
    ("error", "TEXT", 1, 0),
    ("trace_id", "TEXT", 0, 0),
    ("span_id", "TEXT", 0, 0),
]

PROCESSES = 8
RECORDS_PER_PROCESS = 40
#: Trace and span ids as the request path stores them (lowercase hex).
TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_A = "00f067aa0ba902b7"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
SPAN_B = "b7ad6b7169203331"


def make_request(number: int, prefix: str = "a" * 16, **changes: Any) -> RequestRecord:
    """A well-formed record with a distinct id and plausible values."""
    record = RequestRecord(
        request_id=f"{prefix}{number:016x}",
        timestamp=1_700_000_000.0 + number / 8,
        method="GET",
        route="/items/{item_id}",
        path=f"/items/{number}",
        status=200,
        duration_ms=1.5 + number,
        ttfb_ms=0.75 + number,
        request_bytes=number,
        response_bytes=100 + number,
        client_ip="127.0.0.1",
        error="",
    )
    return record._replace(**changes)


def make_session(number: int, prefix: str = "b" * 16, **changes: Any) -> WebSocketSession:
    """A well-formed WebSocket session with a distinct id."""
    session = WebSocketSession(
        session_id=f"{prefix}{number:016x}",
        timestamp=1_700_000_100.0 + number / 4,
        route="/ws/{room}",
        path=f"/ws/{number}",
        duration_ms=250.0 + number,
        messages_in=number,
        messages_out=2 * number,
        close_code=1000,
        accepted=True,
        client_ip="10.0.0.1",
        error="",
    )
    return session._replace(**changes)


def read_requests(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT * FROM aegis_requests ORDER BY request_id").fetchall()
    connection.close()
    return rows


def read_sessions(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT * FROM aegis_websocket_sessions ORDER BY session_id"
        ).fetchall()
    connection.close()
    return rows


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def offer_requests(aegis: Aegis, count: int, path_prefix: str = "/r") -> None:
    """Queue ``count`` finished requests as the middleware would."""
    now = aegis.clock.monotonic()
    for number in range(count):
        aegis.recorder.offer(
            inbox_item(
                f"{path_prefix}/{number}",
                route="/r/{n}",
                start=now,
                response_bytes=10,
                client=("127.0.0.1", 40000),
            )
        )


def test_schema_is_created_on_first_write(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """Nothing touches the disk before the first write, which creates the whole versioned schema."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    assert sink.name == f"sqlite:{path}"
    assert not path.exists()

    sink.write(Batch())

    assert path.exists()
    objects = query(path, "SELECT type, name, tbl_name FROM sqlite_master ORDER BY name")
    assert objects == [
        ("table", "aegis_alert_attempts", "aegis_alert_attempts"),
        ("index", "aegis_alert_attempts_at", "aegis_alert_attempts"),
        ("index", "aegis_alert_attempts_notice", "aegis_alert_attempts"),
        ("table", "aegis_alert_audit", "aegis_alert_audit"),
        ("index", "aegis_alert_audit_at", "aegis_alert_audit"),
        ("table", "aegis_alert_channel_configs", "aegis_alert_channel_configs"),
        ("index", "aegis_alert_channel_configs_revision", "aegis_alert_channel_configs"),
        ("table", "aegis_alert_channels", "aegis_alert_channels"),
        ("table", "aegis_alert_instances", "aegis_alert_instances"),
        ("table", "aegis_alert_lease", "aegis_alert_lease"),
        ("table", "aegis_alert_outbox", "aegis_alert_outbox"),
        ("index", "aegis_alert_outbox_alert", "aegis_alert_outbox"),
        ("index", "aegis_alert_outbox_claimed", "aegis_alert_outbox"),
        ("index", "aegis_alert_outbox_done", "aegis_alert_outbox"),
        ("index", "aegis_alert_outbox_due", "aegis_alert_outbox"),
        ("index", "aegis_alert_outbox_episode", "aegis_alert_outbox"),
        ("index", "aegis_alert_outbox_group", "aegis_alert_outbox"),
        ("table", "aegis_alert_reports", "aegis_alert_reports"),
        ("table", "aegis_alert_rules", "aegis_alert_rules"),
        ("index", "aegis_alert_rules_revision", "aegis_alert_rules"),
        ("table", "aegis_alert_silences", "aegis_alert_silences"),
        ("table", "aegis_alert_transitions", "aegis_alert_transitions"),
        ("index", "aegis_alert_transitions_at", "aegis_alert_transitions"),
        ("table", "aegis_audit", "aegis_audit"),
        ("index", "aegis_audit_at", "aegis_audit"),
        ("table", "aegis_batches", "aegis_batches"),
        ("index", "aegis_batches_applied_at", "aegis_batches"),
        ("table", "aegis_custom_metrics", "aegis_custom_metrics"),
        ("table", "aegis_custom_rollups", "aegis_custom_rollups"),
        ("index", "aegis_custom_rollups_time", "aegis_custom_rollups"),
        ("table", "aegis_events", "aegis_events"),
        ("index", "aegis_events_timestamp", "aegis_events"),
        ("table", "aegis_incident_requests", "aegis_incident_requests"),
        ("index", "aegis_incident_requests_at", "aegis_incident_requests"),
        ("table", "aegis_incident_updates", "aegis_incident_updates"),
        ("table", "aegis_incidents", "aegis_incidents"),
        ("index", "aegis_incidents_created_at", "aegis_incidents"),
        ("table", "aegis_request_blocks", "aegis_request_blocks"),
        ("index", "aegis_request_blocks_time_max", "aegis_request_blocks"),
        ("index", "aegis_request_blocks_time_min", "aegis_request_blocks"),
        ("table", "aegis_requests", "aegis_requests"),
        ("index", "aegis_requests_errors", "aegis_requests"),
        ("index", "aegis_requests_trace", "aegis_requests"),
        ("table", "aegis_rollup_deltas", "aegis_rollup_deltas"),
        ("index", "aegis_rollup_deltas_applied_at", "aegis_rollup_deltas"),
        ("table", "aegis_rollup_totals", "aegis_rollup_totals"),
        ("table", "aegis_rollups", "aegis_rollups"),
        ("table", "aegis_websocket_sessions", "aegis_websocket_sessions"),
        ("index", "aegis_websocket_sessions_timestamp", "aegis_websocket_sessions"),
        ("index", "sqlite_autoindex_aegis_alert_outbox_1", "aegis_alert_outbox"),
        ("index", "sqlite_autoindex_aegis_events_1", "aegis_events"),
        ("index", "sqlite_autoindex_aegis_incidents_1", "aegis_incidents"),
        ("index", "sqlite_autoindex_aegis_incidents_2", "aegis_incidents"),
    ]
    request_columns = query(path, "PRAGMA table_info(aegis_requests)")
    assert [(c[1], c[2], c[3], c[5]) for c in request_columns] == EXPECTED_REQUEST_COLUMNS
    session_columns = query(path, "PRAGMA table_info(aegis_websocket_sessions)")
    assert [(c[1], c[2], c[3], c[5]) for c in session_columns] == EXPECTED_SESSION_COLUMNS
    # The request log appends to a rowid table (no key to keep in order);
    # sessions stay clustered on their id.
    [(sql,)] = query(path, "SELECT sql FROM sqlite_master WHERE name = 'aegis_requests'")
    assert "WITHOUT ROWID" not in sql
    [(sql,)] = query(path, "SELECT sql FROM sqlite_master WHERE name = 'aegis_websocket_sessions'")
    assert sql.rstrip().endswith("WITHOUT ROWID")
    with pytest.raises(sqlite3.OperationalError, match="no such column: rowid"):
        query(path, "SELECT rowid FROM aegis_websocket_sessions")
    # Its time index is the blocks' (test_sqlite_blocks.py), not an index of its
    # own; only its server errors and its traced rows have one, each a partial
    # index (a few rows; an untraced success is in neither).
    assert sorted(query(path, "PRAGMA index_list(aegis_requests)")) == [
        (0, "aegis_requests_trace", 0, "c", 1),
        (1, "aegis_requests_errors", 0, "c", 1),
    ]
    assert query(path, "SELECT sql FROM sqlite_master WHERE name = 'aegis_requests_trace'") == [
        ("CREATE INDEX aegis_requests_trace ON aegis_requests (trace_id) "
         "WHERE trace_id IS NOT NULL",)
    ]  # fmt: skip
    assert query(path, "PRAGMA index_info(aegis_websocket_sessions_timestamp)") == [
        (0, 1, "timestamp")
    ]
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    # journal_mode=WAL is persistent: a fresh connection sees it.
    assert query(path, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_an_existing_file_keeps_schema_and_rows(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A second sink on a current file migrates nothing and adds to the rows already there."""
    path = tmp_path / "aegis.db"
    first = sink_factory(path)
    first.write(Batch(requests=[make_request(1)]))
    first.close()

    second = sink_factory(path)
    second.write(Batch(requests=[make_request(2)]))

    assert [row[0] for row in read_requests(path)] == [
        make_request(1).request_id,
        make_request(2).request_id,
    ]
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert len(query(path, "SELECT name FROM sqlite_master")) == 53


def test_batch_written_twice_is_stored_once(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """Writes are keyed by batch id: the same batch again (a retry after a
    write whose outcome was unknown) adds nothing; another batch id adds its
    records, and a batch without one is stored as it is."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    requests = [make_request(n) for n in range(5)]
    sessions = [make_session(n) for n in range(3)]
    batch = Batch(requests=requests, sessions=sessions, batch_id="p.1")

    sink.write(batch)
    sink.write(batch)
    sink.write(Batch(requests=[make_request(5)], batch_id="p.2"))
    sink.write(Batch(requests=[make_request(6)]))

    assert [RequestRecord(*row) for row in read_requests(path)] == [
        *requests,
        make_request(5),
        make_request(6),
    ]
    stored_sessions = [WebSocketSession(*row) for row in read_sessions(path)]
    assert stored_sessions == sessions
    assert query(path, "SELECT batch_id FROM aegis_batches ORDER BY batch_id") == [
        ("p.1",),
        ("p.2",),
    ]


def test_a_batch_of_any_size_is_stored_whole_and_in_order(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """Requests go in statements of ROWS_PER_INSERT rows, the rest one by
    one: every size around those boundaries stores each record once."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    step = sqlite_schema.ROWS_PER_INSERT
    number = 0
    expected = []
    for size in (1, step - 1, step, step + 1, 3 * step, 3 * step + 5):
        batch = [make_request(number + offset) for offset in range(size)]
        number += size
        expected.extend(batch)
        sink.write(Batch(requests=batch, batch_id=f"size-{size}"))
    assert [RequestRecord(*row) for row in read_requests(path)] == expected


def test_version_3_request_log_is_migrated_with_every_row(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A file left at version 3 (request_id as the key) keeps every row and
    value through the migration to version 4, reads back the same through the
    sink, and takes new batches after it."""
    path = tmp_path / "aegis.db"
    connection = sqlite3.connect(path)
    for version in (1, 2, 3):
        for statement in sqlite_schema.MIGRATIONS[version - 1]:
            if "aegis_histogram_v3" not in statement:  # no rollup rows to convert
                connection.execute(statement)
    old_requests, _ = awkward_records()
    # No trace ids before version 18: read back as None.
    old_requests = [
        *(record._replace(trace_id=None, span_id=None) for record in old_requests),
        *(make_request(n) for n in range(10, 20)),
    ]
    connection.executemany(
        f"INSERT INTO aegis_requests VALUES ({', '.join('?' * 12)})",
        [record[:12] for record in old_requests],
    )
    connection.execute("PRAGMA user_version = 3")
    connection.commit()
    connection.close()

    sink = sink_factory(path)
    sink.write(Batch(requests=[make_request(30)], batch_id="after"))

    assert query(path, "PRAGMA user_version") == [(sqlite_schema.SCHEMA_VERSION,)]
    stored = [RequestRecord(*row) for row in read_requests(path)]
    assert stored == sorted([*old_requests, make_request(30)], key=lambda r: r.request_id)
    newest_first = sink.read_requests(RequestQuery(limit=100))
    assert newest_first == sorted(
        [*old_requests, make_request(30)], key=lambda r: (r.timestamp, r.request_id), reverse=True
    )
    assert sorted(row[1] for row in query(path, "PRAGMA index_list(aegis_requests)")) == [
        "aegis_requests_errors",
        "aegis_requests_trace",
    ]


def awkward_records() -> tuple[list[RequestRecord], list[WebSocketSession]]:
    """Records with every awkward value a sink must store exactly: None, unicode,
    control characters and COPY's escapes, extreme numbers."""
    requests = [
        make_request(1),
        make_request(
            2,
            timestamp=1_712_345_678.123456,
            method="_OTHER",
            route="<unmatched>",
            path="/café/日本語/🚀?q=ü",
            status=499,
            duration_ms=0.1 + 0.2,
            ttfb_ms=None,
            request_bytes=0,
            response_bytes=2**62,
            client_ip=None,
            error='ValueError: bad "input"\nline two\t\\N\u00e9\U0001f4a5',
        ),
        make_request(3, client_ip="2001:db8::1", ttfb_ms=1e-9, duration_ms=123456789.987654321),
        make_request(4, trace_id=TRACE_A, span_id=SPAN_A),
    ]
    sessions = [
        make_session(1),
        make_session(
            2,
            path="/ws/🚀",
            close_code=None,
            accepted=False,
            client_ip=None,
            error="RuntimeError: ünïcödé",
            messages_in=0,
            messages_out=2**40,
        ),
        make_session(3, trace_id=TRACE_B, span_id=SPAN_B),
    ]
    return requests, sessions


def test_every_field_round_trips_exactly(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """What is read back equals what was written, value and type, including None and unicode."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    requests, sessions = awkward_records()
    sink.write(Batch(requests=requests, sessions=sessions))

    rows = read_requests(path)
    assert [RequestRecord(*row) for row in rows] == requests
    for row, record in zip(rows, requests, strict=True):
        assert [type(value) for value in row] == [type(value) for value in record]
    session_rows = read_sessions(path)
    assert [WebSocketSession(*row) for row in session_rows] == sessions
    # SQLite has no boolean: ``accepted`` comes back as the integer 1 or 0.
    assert [row[8] for row in session_rows] == [1, 0, 1]
    assert [type(row[8]) for row in session_rows] == [int, int, int]
    assert [row[7] for row in session_rows] == [1000, None, 1000]


def _write_from_process(
    path: str, index: int, barrier: Any, results: Any, count: int = RECORDS_PER_PROCESS
) -> None:
    """Child process: wait for the others, then open the shared new file and write."""
    import aegis_mw.sinks.sqlite as sqlite_module

    real_migrate = sqlite_module.migrate
    versions_found: list[int] = []

    def observed_migrate(connection: sqlite3.Connection) -> int:
        # The real migration runs; only the version it found is noted.
        found = real_migrate(connection)
        versions_found.append(found)
        return found

    sqlite_module.migrate = observed_migrate
    try:
        sink = SQLiteSink(path)
        batch = Batch(
            requests=[make_request(n, prefix=f"{index:016x}") for n in range(count)],
            batch_id=f"process-{index}",
        )
        barrier.wait(timeout=60)
        sink.write(batch)
        sink.write(batch)
        sink.close()
    except BaseException as exc:
        results.put((index, "error", f"{type(exc).__name__}: {exc}", versions_found))
    else:
        results.put((index, "ok", "", versions_found))


def test_processes_opening_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Processes released together on a brand-new file: all write, one creates the schema."""
    path = tmp_path / "shared" / "aegis.db"
    outcomes, exit_codes = run_together(_write_from_process, PROCESSES, str(path))

    assert sorted(outcome[:3] for outcome in outcomes) == [
        (index, "ok", "") for index in range(PROCESSES)
    ]
    assert exit_codes == [0] * PROCESSES
    # Each process migrated once; exactly one of them found an empty file.
    versions = sorted(version for outcome in outcomes for version in outcome[3])
    assert versions == [0] + [SCHEMA_VERSION] * (PROCESSES - 1)
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert len(query(path, "SELECT name FROM sqlite_master")) == 53
    ids = [row[0] for row in read_requests(path)]
    expected = sorted(
        f"{index:016x}{n:016x}" for index in range(PROCESSES) for n in range(RECORDS_PER_PROCESS)
    )
    assert ids == expected


def _make_too_new(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()


def check_version_2_rows_migrated(sink: SQLiteSink | Any) -> None:
    """The rows the version 2 tests store, as version 3 reads them."""
    [row] = sink.read_rollups(5, 0, 2000, by_route=True)
    assert row == RollupRow(1000, "/a", "GET", 2, 10, 1, 0, 55.5, 1.0, 20.0, 100, 2000,
                            [117, 5, 0, 0, 4, 0, 0, 0, 0, 1])  # fmt: skip
    [total] = sink.read_rollups(5, 0, 2000, by_route=False)
    assert total.histogram == []


def check_version_2_rows_add_up(sink: SQLiteSink | Any) -> None:
    """A new delta adds to a migrated row (the merge works on converted histograms)."""
    delta = RollupDelta()
    delta.add(1001.0, "/a", "GET", 200, 0.01, False, 0, 0)  # bucket 0
    delta.delta_id = "after-migration"
    sink.write(Batch(rollups=delta))
    [row] = sink.read_rollups(5, 0, 2000, by_route=True)
    assert row.requests == 11
    assert row.histogram == [0, 1, *[0] * 116, 5, 0, 0, 4, 0, 0, 0, 0, 1]


def test_version_2_rollups_are_migrated_to_dense_histograms(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A file left at version 2 ({"index": count} histograms, a route index)
    reads back the same figures once the sink has migrated it to version 3."""
    path = tmp_path / "aegis.db"
    connection = sqlite3.connect(path)
    for version in (1, 2):
        for statement in sqlite_schema.MIGRATIONS[version - 1]:
            connection.execute(statement)
    values = "10, 1, 0, 55.5, 1.0, 20.0, 100, 2000"
    connection.execute(
        f"INSERT INTO aegis_rollups VALUES (5, 1000, '/a', 'GET', 2, {values}, "
        """'{"120": 4, "117": 5, "125": 1}')"""
    )
    connection.execute(f"INSERT INTO aegis_rollup_totals VALUES (5, 1000, 2, {values}, '{{}}')")
    connection.execute("PRAGMA user_version = 2")
    connection.commit()
    connection.close()
    sink = sink_factory(path)
    sink.write(Batch())

    check_version_2_rows_migrated(sink)
    assert query(path, "PRAGMA user_version") == [(sqlite_schema.SCHEMA_VERSION,)]
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'aegis_requests_route'") == []
    check_version_2_rows_add_up(sink)


def test_a_version_2_row_written_after_the_migration_is_read_and_merged(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A process still on version 2 can add a {"index": count} row to a
    migrated file; reads and later merges take it as the dense form."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    sink.write(Batch())
    values = "10, 1, 0, 55.5, 1.0, 20.0, 100, 2000"
    with sqlite3.connect(path) as connection:
        connection.execute(
            f"INSERT INTO aegis_rollups VALUES (5, 1000, '/a', 'GET', 2, {values}, "
            """'{"120": 4, "117": 5, "125": 1}')"""
        )
        connection.execute(f"INSERT INTO aegis_rollup_totals VALUES (5, 1000, 2, {values}, '{{}}')")
    check_version_2_rows_migrated(sink)
    check_version_2_rows_add_up(sink)


def test_newer_schema_version_is_refused(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A file from a newer aegis_mw is left untouched and every write says why."""
    path = tmp_path / "aegis.db"
    _make_too_new(path)
    sink = sink_factory(path)

    message = (
        rf"database schema version {SCHEMA_VERSION + 1} is newer than this aegis_mw "
        rf"understands \({SCHEMA_VERSION}\); "
        r"upgrade aegis_mw"
    )
    with pytest.raises(SchemaTooNew, match=message):
        sink.write(Batch(requests=[make_request(1)]))
    # No half-opened connection is kept: a retry checks again.
    with pytest.raises(SchemaTooNew, match=message):
        sink.write(Batch(requests=[make_request(1)]))

    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert query(path, "SELECT name FROM sqlite_master") == []


def test_newer_schema_version_shows_as_sink_errors_in_the_pipeline(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """Through Aegis the refusal is a counted sink error, never an exception in the caller."""
    path = tmp_path / "aegis.db"
    _make_too_new(path)
    aegis = make_aegis(sink=f"sqlite:///{path}", flush_interval=3600, clock=FakeClock())
    offer_requests(aegis, 3)

    assert aegis.force_flush(timeout=10) is False
    assert aegis.force_flush(timeout=10) is False

    [sink_stats] = aegis.stats().sinks
    assert sink_stats.name == f"sqlite:{path}"
    assert sink_stats.written == 0
    assert sink_stats.errors == 2
    assert sink_stats.consecutive_failures == 2
    assert sink_stats.backlog == 3
    assert sink_stats.last_error == (
        f"SchemaTooNew: database schema version {SCHEMA_VERSION + 1} is newer than this "
        f"aegis_mw understands ({SCHEMA_VERSION}); upgrade aegis_mw"
    )
    assert aegis.stats().flusher_errors == 0
    assert aegis.shutdown(timeout=0.5) is False
    assert aegis.stats().sinks[0].dropped["shutdown_timeout"] == 3
    assert query(path, "SELECT name FROM sqlite_master") == []


def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_aegis: Callable[..., Aegis]
) -> None:
    """``sqlite:///rel.db`` (three slashes) names a file under the current directory,
    the one current when the sink is built: a later chdir does not move it."""
    monkeypatch.chdir(tmp_path)
    aegis = make_aegis(sink="sqlite:///rel.db", flush_interval=3600)
    [sink] = aegis.sinks
    assert isinstance(sink, SQLiteSink)
    assert sink.path == str(tmp_path / "rel.db")
    monkeypatch.chdir(tmp_path.parent)
    offer_requests(aegis, 4)

    assert aegis.force_flush(timeout=10) is True

    assert sorted(row[4] for row in read_requests(tmp_path / "rel.db")) == [
        f"/r/{n}" for n in range(4)
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["rel.db"]


def test_absolute_url_and_missing_parent_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_aegis: Callable[..., Aegis]
) -> None:
    """``sqlite:////abs/path.db`` (four slashes) is absolute; missing directories are
    created when the sink is built (so a path that cannot work fails at start)."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "deep" / "er" / "aegis.db"
    url = "sqlite:///" + str(target)
    assert url.startswith("sqlite:////")
    aegis = make_aegis(sink=url, flush_interval=3600)
    [sink] = aegis.sinks
    assert isinstance(sink, SQLiteSink)
    assert sink.path == str(target)
    assert target.parent.is_dir() and not target.exists()
    offer_requests(aegis, 2)

    assert aegis.force_flush(timeout=10) is True

    assert sorted(row[4] for row in read_requests(target)) == ["/r/0", "/r/1"]
    assert list(elsewhere.iterdir()) == []


def test_relative_url_with_missing_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink_factory: Callable[[str], SQLiteSink]
) -> None:
    """A relative path's missing directories are created under the working directory."""
    monkeypatch.chdir(tmp_path)
    sink = sink_factory(os.path.join("data", "nested", "aegis.db"))

    sink.write(Batch(requests=[make_request(7)]))

    assert [row[0] for row in read_requests(tmp_path / "data" / "nested" / "aegis.db")] == [
        make_request(7).request_id
    ]


def test_pipeline_writes_records_built_from_inbox_items(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """Records the flusher builds land in the file with every field as finalized."""
    path = tmp_path / "aegis.db"
    clock = FakeClock(monotonic=1000.0, wall=1_700_000_000.0)
    aegis = make_aegis(sink=f"sqlite:///{path}", flush_interval=3600, clock=clock)
    aegis.recorder.offer(
        inbox_item(
            "/u/é",
            method="POST",
            route="/u/{id}",
            status=201,
            ttfb=1000.25,
            end=1000.5,
            request_bytes=12,
            response_bytes=34,
            client=("192.0.2.1", 5555),
        )
    )
    aegis.recorder.offer(
        inbox_item(
            "/pot",
            method="BREW",
            route="<unmatched>",
            status=500,
            ttfb=None,
            end=1001.0,
            error="RuntimeError: boom",
        )
    )

    assert aegis.force_flush(timeout=10) is True

    rows = read_requests(path)
    prefix = aegis.finalizer.id_prefix
    assert rows == [
        (f"{prefix}{1:016x}", 1_700_000_000.0, "POST", "/u/{id}", "/u/é", 201, 500.0, 250.0,
         12, 34, "192.0.2.1", "", None, None),
        (f"{prefix}{2:016x}", 1_700_000_000.0, "_OTHER", "<unmatched>", "/pot", 500, 1000.0,
         None, 0, 0, None, "RuntimeError: boom", None, None),
    ]  # fmt: skip


def test_the_write_ahead_log_is_copied_into_the_database_in_small_steps(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A commit copies the log into the database once it holds
    WAL_CHECKPOINT_PAGES pages, not SQLite's default 1,000 (about 4 MB): a
    copy that long delayed the app's threads (see the constant). The log
    file keeps its largest size, so after many batches it shows how far the
    log grew between two copies: a batch's pages and the threshold, never
    the default's 1,000 pages. Every record is stored."""
    from aegis_mw.sinks.sqlite import WAL_CHECKPOINT_PAGES

    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    batches, size = 150, 500
    for number in range(batches):
        records = [make_request(number * size + offset) for offset in range(size)]
        sink.write(Batch(requests=records, batch_id=f"wal-{number}"))
    page_size = query(path, "PRAGMA page_size")[0][0]
    database_pages = path.stat().st_size // page_size
    wal_pages = Path(f"{path}-wal").stat().st_size // page_size
    assert database_pages + wal_pages > 2 * 1000  # enough for the default to copy too
    assert 0 < wal_pages < 1000 // 2
    assert wal_pages < WAL_CHECKPOINT_PAGES + database_pages // batches * 2
    assert query(path, "SELECT count(*) FROM aegis_requests")[0][0] == batches * size


# -- trace and span ids (schema version 18) ------------------------------------------


def traced_requests() -> list[RequestRecord]:
    """Requests of two traces (one spanning two routes) and untraced ones, interleaved."""
    return [
        make_request(n, trace_id=TRACE_A, span_id=f"{n + 1:016x}", status=500 if n == 6 else 200)
        if n % 3 == 0
        else make_request(n, route="/b", trace_id=TRACE_B, span_id=SPAN_B)
        if n == 4
        else make_request(n)
        for n in range(10)
    ]


def test_trace_and_span_ids_round_trip_with_untraced_records(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """Traced and untraced requests and sessions are stored as they are
    (text, or NULL) and read back the same, by the sink and from the file."""
    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    requests = traced_requests()
    sessions = [make_session(1), make_session(2, trace_id=TRACE_B, span_id=SPAN_B)]
    sink.write(Batch(requests=requests, sessions=sessions, batch_id="traced"))

    assert [RequestRecord(*row) for row in read_requests(path)] == requests
    assert [WebSocketSession(*row) for row in read_sessions(path)] == sessions
    assert query(
        path, "SELECT typeof(trace_id), typeof(span_id), count(*) FROM aegis_requests "
        "GROUP BY 1, 2 ORDER BY 1",
    ) == [("null", "null", 5), ("text", "text", 5)]  # fmt: skip
    newest = sorted(requests, key=lambda r: r.timestamp, reverse=True)
    assert sink.read_requests(RequestQuery()) == newest


def test_rows_per_insert_stay_under_sqlites_parameter_limit() -> None:
    """A whole statement of request rows binds fewer than the 999 parameters
    SQLite before 3.32 allows, with the columns version 18 added."""
    assert RequestRecord._fields == sqlite_schema.REQUEST_COLUMNS
    assert WebSocketSession._fields == sqlite_schema.SESSION_COLUMNS
    assert sqlite_schema.ROWS_PER_INSERT * len(sqlite_schema.REQUEST_COLUMNS) <= 999
    assert sqlite_schema.INSERT_REQUESTS.count("?") == 64 * 14


@pytest.mark.parametrize("offset", [0, 2])
def test_the_trace_filter_matches_exactly_with_the_other_filters(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink], offset: int
) -> None:
    """``trace_id`` keeps one trace's requests, newest first, alone or with
    the other filters; an unknown trace finds nothing."""
    sink = sink_factory(tmp_path / "aegis.db")
    requests = traced_requests()
    # Enough rows for whole statements of the multi-row insert too.
    filler = [make_request(n, prefix="f" * 16) for n in range(200)]
    sink.write(Batch(requests=[*requests, *filler]))

    def newest(keep: Callable[[RequestRecord], bool]) -> list[RequestRecord]:
        kept = [r for r in requests if keep(r)]
        return sorted(kept, key=lambda r: (r.timestamp, r.request_id), reverse=True)

    in_a = newest(lambda r: r.trace_id == TRACE_A)
    assert len(in_a) == 4
    assert sink.read_requests(RequestQuery(trace_id=TRACE_A, offset=offset)) == in_a[offset:]
    assert sink.read_requests(RequestQuery(trace_id=TRACE_B)) == newest(
        lambda r: r.trace_id == TRACE_B
    )
    assert sink.read_requests(RequestQuery(trace_id=TRACE_A, status_from=500)) == newest(
        lambda r: r.trace_id == TRACE_A and r.status >= 500
    )
    since = requests[3].timestamp
    assert (
        sink.read_requests(RequestQuery(trace_id=TRACE_A, since=since, limit=2))
        == [r for r in in_a if r.timestamp >= since][:2]
    )
    assert sink.read_requests(RequestQuery(trace_id=TRACE_A, route="/b")) == []
    assert sink.read_requests(RequestQuery(trace_id="f" * 32)) == []
    # Without the filter, every row (the blocks' read), traced or not.
    assert len(sink.read_requests(RequestQuery(limit=1000))) == 210


def test_the_trace_filter_reads_the_partial_index(tmp_path: Path) -> None:
    """The statement a trace's requests are read with is answered from the
    partial index of traced rows, never by scanning the log, with or
    without the other filters."""
    from aegis_mw.sinks import history_sql

    path = tmp_path / "aegis.db"
    sink = SQLiteSink(str(path))
    sink.write(Batch(requests=traced_requests()))
    sink.close()
    for filters in (
        {},
        {"route": "/b", "since": 1.0, "until": 2e9},
        {"status_from": 500, "status_to": 600},
    ):
        sql, params = history_sql.select_requests(
            history_sql.SQLITE, RequestQuery(trace_id=TRACE_A, **filters)
        )
        plan = " | ".join(row[3] for row in query(path, f"EXPLAIN QUERY PLAN {sql}", *params))
        assert "aegis_requests_trace" in plan or (
            "aegis_requests_errors" in plan and "status_from" in filters
        ), plan
        assert "SCAN aegis_requests" not in plan, plan


def test_a_version_17_file_gains_the_trace_columns_in_place(
    tmp_path: Path, sink_factory: Callable[[Path], SQLiteSink]
) -> None:
    """A file left at version 17 keeps its rows where they are (the columns
    are added, no table is copied): old requests and sessions read back with
    no trace, new ones with theirs, and the filter finds only the new."""
    path = tmp_path / "aegis.db"
    connection = sqlite3.connect(path)
    connection.create_function("aegis_histogram_v3", 1, lambda text: text)
    for version in range(17):
        for statement in sqlite_schema.MIGRATIONS[version]:
            connection.execute(statement)
    old_requests = [make_request(n) for n in range(20)]
    old_sessions = [make_session(n) for n in range(3)]
    connection.executemany(
        f"INSERT INTO aegis_requests VALUES ({', '.join('?' * 12)})",
        [record[:12] for record in old_requests],
    )
    connection.executemany(
        f"INSERT INTO aegis_websocket_sessions VALUES ({', '.join('?' * 11)})",
        [session[:11] for session in old_sessions],
    )
    connection.execute("PRAGMA user_version = 17")
    connection.commit()
    rowids = connection.execute("SELECT rowid, request_id FROM aegis_requests").fetchall()
    connection.close()

    sink = sink_factory(path)
    new_requests = [make_request(n, trace_id=TRACE_A, span_id=SPAN_A) for n in range(20, 23)]
    new_sessions = [make_session(5, trace_id=TRACE_B, span_id=SPAN_B)]
    sink.write(Batch(requests=new_requests, sessions=new_sessions, batch_id="after"))

    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(path, "SELECT rowid, request_id FROM aegis_requests WHERE rowid <= 20") == rowids
    request_columns = query(path, "PRAGMA table_info(aegis_requests)")
    assert [(c[1], c[2], c[3], c[5]) for c in request_columns] == EXPECTED_REQUEST_COLUMNS
    session_columns = query(path, "PRAGMA table_info(aegis_websocket_sessions)")
    assert [(c[1], c[2], c[3], c[5]) for c in session_columns] == EXPECTED_SESSION_COLUMNS
    everything = sink.read_requests(RequestQuery(limit=100))
    assert everything == sorted(
        [*old_requests, *new_requests], key=lambda r: (r.timestamp, r.request_id), reverse=True
    )
    assert all(r.trace_id is None and r.span_id is None for r in everything[3:])
    assert [WebSocketSession(*row) for row in read_sessions(path)] == [
        *old_sessions, *new_sessions,
    ]  # fmt: skip
    assert sink.read_requests(RequestQuery(trace_id=TRACE_A)) == new_requests[::-1]
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'aegis_requests_trace'") == [
        ("aegis_requests_trace",)
    ]
    # The index holds the traced rows only.
    assert query(
        path, "SELECT count(*) FROM aegis_requests INDEXED BY aegis_requests_trace "
        "WHERE trace_id IS NOT NULL",
    ) == [(3,)]  # fmt: skip


def test_compiled_inserts_store_the_trace_columns_as_the_sqlite3_module_does(
    tmp_path: Path,
) -> None:
    """The compiled inserts take the row width from the columns: whole
    statements of traced and untraced records land as the sqlite3 module
    binds them."""
    records = [
        make_request(n, trace_id=TRACE_A, span_id=f"{n + 1:016x}") if n % 2 else make_request(n)
        for n in range(3 * sqlite_schema.ROWS_PER_INSERT + 5)
    ]
    module = compiled_module()
    compiled = SQLiteSink(str(tmp_path / "compiled.db"))
    compiled.use_compiled(module)
    reference = SQLiteSink(str(tmp_path / "reference.db"))
    try:
        compiled.write(Batch(requests=records))
        reference.write(Batch(requests=records))
        assert compiled._rows is module  # the compiled inserts were used
    finally:
        compiled.close()
        reference.close()
    rows = read_requests(tmp_path / "compiled.db")
    assert rows == read_requests(tmp_path / "reference.db")
    assert [RequestRecord(*row) for row in rows] == records

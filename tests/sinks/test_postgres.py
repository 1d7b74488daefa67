"""The PostgreSQL sink against the real server: schema, idempotence, the same
history as the other sinks, several processes, pruning, failures, URLs."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from aegis_mw import Aegis, Batch, RequestRecord, WebSocketSession
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.rollup import LEVELS, RollupDelta, RollupRow, merge_dense
from aegis_mw.history.queries import HistoryQueries
from aegis_mw.sinks import MemorySink, SQLiteSink, build_sink, history_sql
from aegis_mw.sinks.sqlite_schema import SchemaTooNew
from tests.conftest import compiled_module
from tests.core.test_fork import run_in_child
from tests.endpoints.stores import timed
from tests.harness import inbox_item
from tests.sinks.test_sqlite import (
    SPAN_A,
    SPAN_B,
    TRACE_A,
    TRACE_B,
    awkward_records,
    check_version_2_rows_add_up,
    check_version_2_rows_migrated,
    make_request,
    make_session,
    traced_requests,
)
from tests.spawned import run_together
from tests.test_live_transport import eventually

psycopg = pytest.importorskip("psycopg")

from aegis_mw.sinks import postgres_schema  # noqa: E402  (needs psycopg only for typing)
from aegis_mw.sinks.postgres import PostgresSink  # noqa: E402

T0 = 1_700_000_000.0
ROUTES = ("/a", "/b/{id}", "/c/{name}", "<unmatched>")
METHODS = ("GET", "POST", "_OTHER")
STATUSES = (200, 200, 201, 302, 404, 429, 499, 500, 503)
#: Rollup buckets are read over this whole range at every level.
WHOLE = (0, 2**40)


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh connection (in the test's schema)."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def schema_at(connection: psycopg.Connection[Any], version: int) -> None:
    """The tables as the sink left them at ``version`` (an older aegis_mw)."""
    connection.execute(
        "CREATE TABLE aegis_schema_version ("
        "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for number in range(1, version + 1):
        for step in postgres_schema.MIGRATIONS[number - 1]:
            if callable(step):
                step(connection)
            else:
                connection.execute(step)
        connection.execute("INSERT INTO aegis_schema_version (version) VALUES (%s)", (number,))


def history_batch(seed: int, size: int, prefix: str, span: float = 900.0) -> Batch:
    """``size`` requests spread over ``span`` seconds (several buckets at every
    level), with their rollup delta, as the flusher would hand them over."""
    rng = random.Random(seed)
    delta = RollupDelta()
    records = []
    for number in range(size):
        timestamp = T0 + rng.uniform(0, span)
        status = rng.choice(STATUSES)
        record = make_request(
            number,
            prefix=prefix,
            timestamp=timestamp,
            method=rng.choice(METHODS),
            route=rng.choice(ROUTES),
            status=status,
            duration_ms=rng.uniform(0.05, 2500.0),
            ttfb_ms=None if status == 499 else rng.uniform(0.01, 5.0),
            request_bytes=rng.randrange(0, 5000),
            response_bytes=rng.randrange(0, 10**7),
            error="RuntimeError: boom" if number % 17 == 0 else "",
        )
        if number % 4 == 0:  # a trace of five such requests; the rng is not drawn from
            record = record._replace(
                trace_id=trace_of(seed, number // 20), span_id=f"{number + 1:016x}"
            )
        records.append(record)
        delta.add(
            record.timestamp, record.route, record.method, record.status, record.duration_ms,
            record.status >= 500 or bool(record.error), record.request_bytes,
            record.response_bytes,
        )  # fmt: skip
    delta.delta_id = f"delta-{prefix}-{seed}"
    return Batch(requests=records, rollups=delta)


def trace_of(seed: int, number: int) -> str:
    """The trace id of ``history_batch``'s traced requests (five a trace)."""
    return f"{seed + 1:08x}{number + 1:024x}"


def all_rollups(sink: Any) -> dict[tuple[int, bool], list[RollupRow]]:
    """Every stored rollup, by (level, by_route), in a fixed order."""
    return {
        (level, by_route): sorted(sink.read_rollups(level, *WHOLE, by_route=by_route))
        for level in LEVELS
        for by_route in (True, False)
    }


# -- schema and URLs -------------------------------------------------------------------


def test_build_sink_accepts_both_schemes_and_never_names_the_password() -> None:
    """Building a sink does not connect; its name shows host and database only."""
    for url in (
        "postgresql://aegis:s3cret@db.example:5433/metrics",
        "postgres://aegis:s3cret@db.example:5433/metrics?sslmode=require",
    ):
        sink = build_sink(url)
        assert isinstance(sink, PostgresSink)
        assert sink.name == "postgresql:db.example/metrics"
        assert "s3cret" not in repr(vars(sink)["name"])
        sink.close()


def test_import_aegis_does_not_import_psycopg_and_a_missing_driver_names_the_extra() -> None:
    """psycopg is imported only when a postgresql:// sink is built; without it the
    ImportError says which extra to install."""
    code = (
        "import sys\n"
        "import aegis_mw, aegis_mw.sinks\n"
        "assert 'psycopg' not in sys.modules, 'imported by aegis_mw'\n"
        "sys.modules['psycopg'] = None  # as if not installed\n"
        "try:\n"
        "    aegis_mw.sinks.build_sink('postgresql://u@h/db')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == (
        "the PostgreSQL sink needs psycopg: pip install 'aegis_mw[postgres]'"
    )


def test_schema_is_created_on_first_write(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """The first write creates every table, index and the merge function, at the current version."""
    sinks(postgres_url).write(Batch())

    tables = sql(
        postgres_url,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() ORDER BY table_name",
    )
    assert [name for (name,) in tables] == [
        "aegis_alert_attempts", "aegis_alert_audit", "aegis_alert_channel_configs",
        "aegis_alert_channels",
        "aegis_alert_instances", "aegis_alert_lease", "aegis_alert_outbox",
        "aegis_alert_reports", "aegis_alert_rules",
        "aegis_alert_silences", "aegis_alert_transitions", "aegis_audit",
        "aegis_batches", "aegis_custom_metrics", "aegis_custom_rollups", "aegis_events",
        "aegis_incident_requests", "aegis_incident_updates", "aegis_incidents",
        "aegis_requests", "aegis_rollup_deltas",
        "aegis_rollup_totals",
        "aegis_rollups", "aegis_schema_version", "aegis_websocket_sessions",
    ]  # fmt: skip
    columns = sql(
        postgres_url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'aegis_requests' "
        "ORDER BY ordinal_position",
    )
    assert columns == [
        ("request_id", "text", "NO"), ("timestamp", "double precision", "NO"),
        ("method", "text", "NO"), ("route", "text", "NO"), ("path", "text", "NO"),
        ("status", "integer", "NO"), ("duration_ms", "double precision", "NO"),
        ("ttfb_ms", "double precision", "YES"), ("request_bytes", "bigint", "NO"),
        ("response_bytes", "bigint", "NO"), ("client_ip", "text", "YES"), ("error", "text", "NO"),
        ("trace_id", "text", "YES"), ("span_id", "text", "YES"),
    ]  # fmt: skip
    session_columns = sql(
        postgres_url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'aegis_websocket_sessions' "
        "ORDER BY ordinal_position",
    )
    assert [column[0] for column in session_columns] == list(WebSocketSession._fields)
    assert session_columns[-2:] == [("trace_id", "text", "YES"), ("span_id", "text", "YES")]
    indexes = sql(
        postgres_url,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "ORDER BY indexname",
    )
    definitions = {name: definition.split(" USING ")[1] for name, definition in indexes}
    assert definitions["aegis_requests_timestamp"] == 'btree ("timestamp")'
    assert definitions["aegis_websocket_sessions_timestamp"] == 'btree ("timestamp")'
    assert definitions["aegis_rollups_pkey"] == (
        "btree (resolution, bucket, route, method, status_class)"
    )
    assert definitions["aegis_rollup_totals_pkey"] == "btree (resolution, bucket, status_class)"
    assert "aegis_requests_route" not in definitions
    # The request log has no key (idempotent per batch): its indexes are by
    # time, one of them holding the server errors alone, and by trace, of the
    # traced rows alone.
    assert [name for name in definitions if name.startswith("aegis_requests")] == [
        "aegis_requests_errors",
        "aegis_requests_timestamp",
        "aegis_requests_trace",
    ]
    assert definitions["aegis_requests_errors"] == 'btree ("timestamp") WHERE (status >= 500)'
    assert definitions["aegis_requests_trace"] == "btree (trace_id) WHERE (trace_id IS NOT NULL)"

    assert definitions["aegis_batches_pkey"] == "btree (batch_id)"
    assert sql(postgres_url, "SELECT version FROM aegis_schema_version ORDER BY version") == [
        (version,) for version in range(1, postgres_schema.SCHEMA_VERSION + 1)
    ]
    histograms = sql(
        postgres_url,
        "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND column_name = 'histogram' ORDER BY table_name",
    )
    assert histograms == [("ARRAY",), ("ARRAY",)]


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([1, 2, 0, 0, 0, 0, 0, 1], [7, 4, 0, 1]),  # overlapping, right reaching further
        ([7, 4, 0, 1], [1, 2, 0, 0, 0, 0, 0, 1]),  # the same, swapped
        ([3, 1], [10, 5, 6]),  # apart, with a gap between
        ([10, 5, 6], [3, 1]),
        ([0, 9, 9, 9], [1, 1]),  # one inside the other, from index 0
        ([5, 1, 2, 3], [5, 3, 2, 1]),  # the same span
        ([], [4, 1]),  # either side empty
        ([4, 1], []),
        ([], []),
    ],
)
def test_histogram_merge_function_adds_like_python(
    postgres_url: str, sinks: Callable[[str], PostgresSink], left: list[int], right: list[int]
) -> None:
    """The upsert's SQL merge of dense histograms equals rollup.merge_dense."""
    sinks(postgres_url).write(Batch())
    merged = sql(
        postgres_url, "SELECT aegis_histogram_merge(%s::bigint[], %s::bigint[])", left, right
    )
    assert merged == [(merge_dense(left, right),)]


def test_every_field_round_trips_exactly(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """What is read back equals what was written, value and type, including None and unicode."""
    sink = sinks(postgres_url)
    requests, sessions = awkward_records()
    sink.write(Batch(requests=requests, sessions=sessions))

    stored = sink.read_requests(RequestQuery())
    assert stored == sorted(requests, key=lambda r: r.timestamp, reverse=True)
    by_id = {record.request_id: record for record in requests}
    for record in stored:
        assert [type(value) for value in record] == [
            type(value) for value in by_id[record.request_id]
        ]
    assert stored[0].ttfb_ms is None and stored[0].client_ip is None
    rows = sql(postgres_url, "SELECT * FROM aegis_websocket_sessions ORDER BY session_id")
    assert [WebSocketSession(*row) for row in rows] == sessions
    for row, session in zip(rows, sessions, strict=True):
        assert [type(value) for value in row] == [type(value) for value in session]


def test_retried_batch_is_stored_once_and_counted_once(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """Writes are keyed by batch id (schema version 4): the same batch again
    (a retry after a write whose outcome was unknown) adds nothing, records
    or rollups; another id adds its records. A batch without an id (built by
    hand) is stored as it is, but a session stored already is skipped."""
    sink = sinks(postgres_url)
    batch = dataclasses.replace(history_batch(1, 200, "a" * 16), batch_id="p.1")
    batch.sessions.extend(make_session(n) for n in range(3))
    reference = MemorySink()
    reference.write(batch)

    sink.write(batch)
    sink.write(batch)
    sink.write(Batch(requests=[make_request(998, prefix="n" * 16)], batch_id="p.2"))
    sink.write(
        Batch(
            requests=[make_request(999, prefix="n" * 16)],
            sessions=[make_session(2, close_code=1011), make_session(7)],
        )
    )
    reference.write(
        Batch(
            requests=[make_request(n, prefix="n" * 16) for n in (998, 999)],
            sessions=[make_session(7)],
        )
    )

    assert sink.read_requests(RequestQuery(limit=1000)) == reference.read_requests(
        RequestQuery(limit=1000)
    )
    assert sql(postgres_url, "SELECT count(*) FROM aegis_requests") == [(202,)]
    assert sql(postgres_url, "SELECT batch_id FROM aegis_batches ORDER BY batch_id") == [
        ("p.1",),
        ("p.2",),
    ]
    assert sql(postgres_url, "SELECT count(*) FROM aegis_websocket_sessions") == [(4,)]
    assert sql(
        postgres_url, "SELECT close_code FROM aegis_websocket_sessions WHERE session_id = %s",
        make_session(2).session_id,
    ) == [(1000,)]  # fmt: skip
    assert all_rollups(sink) == all_rollups(reference)
    [(total,)] = sql(
        postgres_url, "SELECT sum(count) FROM aegis_rollup_totals WHERE resolution = 5"
    )
    assert total == 200


def test_version_3_request_log_is_migrated_in_place_with_every_row(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A database left at version 3 (request_id as the key) keeps every row
    and value through the migration to version 4, reads back the same, takes
    new batches after it, and a retried one once."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, 3)
        old_requests, _ = awkward_records()
        # No trace ids before version 18: read back as None.
        old_requests = [
            *(record._replace(trace_id=None, span_id=None) for record in old_requests),
            *(make_request(n) for n in range(10, 20)),
        ]
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO aegis_requests VALUES ({', '.join(['%s'] * 12)})",
                [record[:12] for record in old_requests],
            )
    sink = sinks(postgres_url)
    new = Batch(requests=[make_request(30), make_request(10)], batch_id="after")
    sink.write(new)
    sink.write(new)

    assert sql(postgres_url, "SELECT max(version) FROM aegis_schema_version") == [
        (postgres_schema.SCHEMA_VERSION,)
    ]
    stored = sink.read_requests(RequestQuery(limit=100))
    expected = [*old_requests, make_request(30), make_request(10)]
    assert stored == sorted(expected, key=lambda r: (r.timestamp, r.request_id), reverse=True)
    keys = sql(
        postgres_url,
        "SELECT conname FROM pg_constraint WHERE conrelid = 'aegis_requests'::regclass "
        "AND contype = 'p'",
    )
    assert keys == []


#: Things of the app's that depend on the request key, and what PostgreSQL
#: says of each when the key is dropped.
DEPENDENTS = {
    "foreign key": (
        'CREATE TABLE app_notes (note text, request_id text COLLATE "C" '
        "CONSTRAINT app_notes_request REFERENCES aegis_requests (request_id))",
        "constraint app_notes_request on table app_notes depends on index aegis_requests_pkey",
    ),
    "view": (
        # Selecting route ungrouped relies on the key (a functional dependency).
        "CREATE VIEW app_routes AS SELECT request_id, route FROM aegis_requests "
        "GROUP BY request_id",
        "view app_routes depends on constraint aegis_requests_pkey",
    ),
}


@pytest.mark.parametrize("dependent", sorted(DEPENDENTS))
def test_what_depends_on_the_request_key_keeps_it_through_version_4(
    postgres_url: str,
    sinks: Callable[[str], PostgresSink],
    caplog: pytest.LogCaptureFixture,
    dependent: str,
) -> None:
    """Something of the app's depending on ``aegis_requests``' key would make
    dropping it fail, and with it every connect: the key is kept, with a
    warning naming what depends on it, and the sink stores every request
    once all the same: a batch without an id written twice, a batch holding
    requests stored already and new ones."""
    create, detail = DEPENDENTS[dependent]
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, 3)
        connection.execute(
            f"INSERT INTO aegis_requests VALUES ({', '.join(['%s'] * 12)})", make_request(1)[:12]
        )
        connection.execute(create)
        if dependent == "foreign key":
            connection.execute("INSERT INTO app_notes VALUES ('slow', %s)", (make_request(1)[0],))
    sink = sinks(postgres_url)
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        sink.write(Batch(requests=[make_request(2), make_request(3)], batch_id="with-key"))

    assert sql(postgres_url, "SELECT max(version) FROM aegis_schema_version") == [
        (postgres_schema.SCHEMA_VERSION,)
    ]
    assert detail in caplog.text
    keys = sql(
        postgres_url,
        "SELECT conname FROM pg_constraint WHERE conrelid = 'aegis_requests'::regclass "
        "AND contype = 'p'",
    )
    assert keys == [("aegis_requests_pkey",)]
    unnamed = Batch(requests=[make_request(4), make_request(5)])
    sink.write(unnamed)
    sink.write(unnamed)
    sink.write(Batch(requests=[make_request(n) for n in range(1, 8)]))
    expected = [make_request(n) for n in range(7, 0, -1)]
    assert sink.read_requests(RequestQuery(limit=20)) == expected
    # A second sink (a restart) connects to the migrated database as well.
    assert sinks(postgres_url).read_requests(RequestQuery(limit=20)) == expected


def test_pruning_goes_on_past_expired_requests_the_app_still_references(
    postgres_url: str, sinks: Callable[[str], PostgresSink], caplog: pytest.LogCaptureFixture
) -> None:
    """A foreign key of the app's on an expired request makes deleting it
    fail: the request log waits, with one warning, and the other tables are
    pruned all the same, every time."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, 3)
        connection.execute(DEPENDENTS["foreign key"][0])
    sink = sinks(postgres_url)
    sink.write(Batch(requests=[make_request(1), make_request(2)], sessions=[make_session(1)]))
    sql(postgres_url, "INSERT INTO app_notes VALUES ('slow', %s)", make_request(1)[0])
    after_all = 1_800_000_000.0
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        sink.prune(after_all, {}, 1000)
        sink.write(Batch(sessions=[make_session(2)]))
        sink.prune(after_all, {}, 1000)

    assert sql(postgres_url, "SELECT count(*) FROM aegis_websocket_sessions") == [(0,)]
    assert sql(postgres_url, "SELECT count(*) FROM aegis_requests") == [(2,)]
    warnings = [r.getMessage() for r in caplog.records if "are kept" in r.getMessage()]
    assert len(warnings) == 1
    assert "expired rows of aegis_requests are kept" in warnings[0]


def test_the_write_connection_gives_up_on_a_silent_server_unless_the_url_chose(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A write waiting on a partitioned server ends within seconds (keepalives,
    and a timeout for data not acknowledged), not after the kernel's minutes."""

    def parameters(url: str) -> dict[str, str]:
        sink = sinks(url)
        sink.write(Batch())
        assert sink._connection is not None
        found = sink._connection.info.get_parameters()
        return {key: found[key] for key in found if key.startswith(("keepalives", "tcp_user"))}

    assert parameters(postgres_url) == {
        "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
        "keepalives_count": "3", "tcp_user_timeout": "15000",
    }  # fmt: skip
    chosen = parameters(f"{postgres_url}&keepalives_idle=30&tcp_user_timeout=2000")
    assert (chosen["keepalives_idle"], chosen["tcp_user_timeout"]) == ("30", "2000")


def test_commits_do_not_wait_for_the_disk_unless_someone_chose(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """The writer's session runs with synchronous_commit off (the trade SQLite
    makes with synchronous=NORMAL) only where nobody set it: a URL option, in
    any spelling PostgreSQL accepts, or PGOPTIONS keeps its choice."""

    def setting(sink: PostgresSink) -> str:
        sink.write(Batch(requests=[make_request(1)]))
        row = sink._connect().execute("SHOW synchronous_commit").fetchone()
        assert row is not None
        return str(row[0])

    assert setting(sinks(postgres_url)) == "off"
    assert setting(sinks(postgres_url + "%20-csynchronous_commit%3Dremote_write")) == "remote_write"
    assert setting(sinks(postgres_url + "%20-cSYNCHRONOUS-COMMIT%3Dlocal")) == "local"
    # PGOPTIONS counts only for a URL without options of its own.
    bare, _, options = postgres_url.partition("?options=")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGOPTIONS", f"{unquote(options)} -c synchronous_commit=on")
        assert setting(sinks(bare)) == "on"


def test_history_equals_memory_and_sqlite(
    postgres_url: str, sinks: Callable[[str], PostgresSink], tmp_path: Path
) -> None:
    """Fed the same batches, the three history sinks answer every read the same."""
    postgres = sinks(postgres_url)
    memory = MemorySink()
    sqlite = SQLiteSink(str(tmp_path / "aegis.db"))
    try:
        for seed in range(6):
            batch = history_batch(seed, 300, f"{seed:016x}", span=4000.0)
            for sink in (postgres, memory, sqlite):
                sink.write(batch)

        expected = all_rollups(memory)
        assert sum(len(rows) for rows in expected.values()) > 500
        assert all_rollups(postgres) == expected
        assert all_rollups(sqlite) == expected
        for rows in all_rollups(postgres).values():
            for row in rows:
                assert [type(value) for value in row] == [
                    int, str, str, int, int, int, int, float, float, float, int, int, list,
                ]  # fmt: skip
                assert all(type(value) is int for value in row.histogram)
        # A range read: only buckets in [start, end).
        start, end = int(T0) + 600, int(T0) + 1800
        assert sorted(postgres.read_rollups(60, start, end, by_route=True)) == sorted(
            memory.read_rollups(60, start, end, by_route=True)
        )

        queries = [
            RequestQuery(),
            RequestQuery(limit=50, offset=120),
            RequestQuery(route="/b/{id}", limit=1000),
            RequestQuery(method="POST", status_from=500, status_to=600, limit=1000),
            RequestQuery(min_duration_ms=1000.0, since=T0 + 100, until=T0 + 2000, limit=1000),
            RequestQuery(route="<unmatched>", method="_OTHER", status_from=400, status_to=500),
            RequestQuery(route="/nowhere"),
            RequestQuery(trace_id=trace_of(2, 3)),
            RequestQuery(trace_id=trace_of(5, 0), status_from=200, status_to=500, limit=3),
            RequestQuery(trace_id="f" * 32),
        ]
        for query in queries:
            expected_requests = memory.read_requests(query)
            assert postgres.read_requests(query) == expected_requests, query
            assert sqlite.read_requests(query) == expected_requests, query
    finally:
        sqlite.close()


def test_reads_from_several_threads_while_writing(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """Readers on other threads (more than the pool holds) all get answers while writes go on."""
    sink = sinks(postgres_url)
    sink.write(history_batch(0, 100, "0" * 16))

    def read(_: int) -> int:
        return len(sink.read_requests(RequestQuery(limit=1000)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(read, n) for n in range(24)]
        for seed in range(1, 4):
            sink.write(history_batch(seed, 100, f"{seed:016x}"))
        counts = [future.result(timeout=60) for future in futures]
    assert all(100 <= count <= 400 for count in counts)
    assert read(0) == 400


# -- several processes and connections --------------------------------------------------


def _write_batches(url: str, index: int, barrier: Any, results: Any) -> None:
    """Child process: write its own batches, all at once with the other processes."""
    try:
        sink = PostgresSink(url)
        sink.write(Batch())  # connected and migrated before the race
        batches = [history_batch(index * 10 + n, 150, f"{index:08x}{n:08x}") for n in range(4)]
        barrier.wait(timeout=60)
        for batch in batches:
            sink.write(batch)
        sink.close()
    except BaseException as exc:
        results.put((index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, "ok"))


def test_processes_writing_at_once_add_up(postgres_url: str) -> None:
    """Processes writing disjoint batches into the same rollup rows at once: the
    stored history is the sum of all of them (no lost update, no deadlock)."""
    processes = 3
    outcomes, exit_codes = run_together(_write_batches, processes, postgres_url)

    assert sorted(outcomes) == [(index, "ok") for index in range(processes)]
    assert exit_codes == [0] * processes
    reference = MemorySink()
    for index in range(processes):
        for n in range(4):
            reference.write(history_batch(index * 10 + n, 150, f"{index:08x}{n:08x}"))
    reader = PostgresSink(postgres_url)
    try:
        stored, expected = all_rollups(reader), all_rollups(reference)
        assert stored.keys() == expected.keys()
        for key, rows in expected.items():
            # Processes add in whatever order they commit: sums of floats may
            # differ in the last bits; every count and extreme is exact.
            assert [row._replace(duration_sum=0.0) for row in stored[key]] == [
                row._replace(duration_sum=0.0) for row in rows
            ]
            assert [row.duration_sum for row in stored[key]] == pytest.approx(
                [row.duration_sum for row in rows], rel=1e-12
            )
        assert len(reader.read_requests(RequestQuery(limit=10_000))) == processes * 4 * 150
    finally:
        reader.close()


def test_concurrent_migrations_apply_each_step_once(postgres_url: str) -> None:
    """Connections migrating an empty schema at once: one finds it empty and applies
    every step, the others wait for it and find the current version."""
    count = 6
    barrier = threading.Barrier(count, timeout=30)

    def migrate(_: int) -> int:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            barrier.wait()
            return postgres_schema.migrate(connection, 60.0)

    with ThreadPoolExecutor(max_workers=count) as pool:
        found = sorted(pool.map(migrate, range(count), timeout=60))

    current = postgres_schema.SCHEMA_VERSION
    assert found == [0] + [current] * (count - 1)
    assert sql(postgres_url, "SELECT version FROM aegis_schema_version ORDER BY version") == [
        (version,) for version in range(1, current + 1)
    ]


def test_a_migration_waits_for_a_lock_no_longer_than_its_lock_timeout(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session holds the migration's advisory lock (a process migrating
    for long, or stuck): the migration gives up at its lock timeout (0.5 s
    here, 30 s as shipped) instead of queueing, its transaction rolled back,
    and the next try, the lock free, migrates."""
    monkeypatch.setattr(postgres_schema, "MIGRATION_LOCK_TIMEOUT_MS", 500)
    with (
        psycopg.connect(postgres_url, autocommit=True) as connection,
        psycopg.connect(postgres_url) as holder,  # a transaction, open; closed first
    ):
        holder.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
            (postgres_schema.LOCK_KEY,),
        )
        # In a thread: a migration that queued would wait for the holder, here.
        error, took = timed(lambda: postgres_schema.migrate(connection, 60.0), wait=10)
        assert isinstance(error, psycopg.errors.LockNotAvailable), error
        assert took < 10, took
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert not postgres_schema.schema_is_current(connection)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert postgres_schema.migrate(connection, 60.0) == 0  # the lock free: done
        assert postgres_schema.schema_is_current(connection)


def test_newer_schema_version_is_refused(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A schema from a newer aegis_mw is left untouched, and every write says why."""
    newer = postgres_schema.SCHEMA_VERSION + 1
    sql(postgres_url, "CREATE TABLE aegis_schema_version (version integer PRIMARY KEY)")
    sql(postgres_url, "INSERT INTO aegis_schema_version VALUES (%s)", newer)
    sink = sinks(postgres_url)

    message = (
        rf"database schema version {newer} is newer than this aegis_mw understands "
        rf"\({newer - 1}\); upgrade aegis_mw"
    )
    for _ in range(2):  # no half-opened connection is kept: a retry checks again
        with pytest.raises(SchemaTooNew, match=message):
            sink.write(Batch(requests=[make_request(1)]))
    with pytest.raises(SchemaTooNew, match=message):
        sink.read_requests(RequestQuery())
    tables = sql(
        postgres_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    assert tables == [("aegis_schema_version",)]


def test_version_2_rollups_are_migrated_to_dense_histograms(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A database left at version 2 ({"index": count} jsonb histograms, a route
    index) reads back the same figures after the sink migrates it to version 3."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, 2)
        values = "10, 1, 0, 55.5, 1.0, 20.0, 100, 2000"
        connection.execute(
            f"INSERT INTO aegis_rollups VALUES (5, 1000, '/a', 'GET', 2, {values}, "
            """'{"120": 4, "117": 5, "125": 1}'::jsonb)"""
        )
        connection.execute(
            f"INSERT INTO aegis_rollup_totals VALUES (5, 1000, 2, {values}, '{{}}'::jsonb)"
        )
    sink = sinks(postgres_url)
    sink.write(Batch())

    check_version_2_rows_migrated(sink)
    assert sql(postgres_url, "SELECT max(version) FROM aegis_schema_version") == [
        (postgres_schema.SCHEMA_VERSION,)
    ]
    indexes = sql(
        postgres_url, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    )
    assert ("aegis_requests_route",) not in indexes
    check_version_2_rows_add_up(sink)  # through the new SQL merge function


# -- pruning ---------------------------------------------------------------------------


def test_prune_deletes_only_expired_rows_in_limited_steps(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """Each call deletes at most ``limit`` rows per table, only rows past their horizon."""
    sink = sinks(postgres_url)
    reference = MemorySink()
    batch = dataclasses.replace(history_batch(3, 400, "p" * 16, span=3600.0), batch_id="recent")
    batch.sessions.extend(make_session(n, timestamp=T0 + 10 * n) for n in range(8))
    for target in (sink, reference):
        target.write(batch)
    sql(postgres_url, "INSERT INTO aegis_batches VALUES ('old-batch', %s)", T0 - 2 * 86400)
    old = Batch(rollups=history_batch(4, 10, "q" * 16).rollups)
    assert old.rollups is not None
    old.rollups.delta_id = "old-delta"
    sink.write(old)
    reference.write(old)
    sql(postgres_url, "UPDATE aegis_rollup_deltas SET applied_at = applied_at - 2 * 86400 "
        "WHERE delta_id = 'old-delta'")  # fmt: skip
    raw_before = T0 + 1800.0
    rollups_before = {5: T0 + 1200.5, 60: T0 + 600.0}

    def count(table: str, where: str = "TRUE", *params: Any) -> int:
        [(value,)] = sql(postgres_url, f"SELECT count(*) FROM {table} WHERE {where}", *params)
        return int(value)

    expired = [
        count("aegis_requests", "timestamp < %s", raw_before),
        count("aegis_websocket_sessions", "timestamp < %s", raw_before),
        1,  # the old delta id
        1,  # the old batch id
    ]
    for level, horizon in rollups_before.items():
        for table in ("aegis_rollups", "aegis_rollup_totals"):
            expired.append(count(table, "resolution = %s AND bucket < %s", level, horizon))
    assert expired[0] > 20 and expired[1] == 8 and min(expired) >= 1
    assert expired[4] > 5  # level 5 per route: more than one step's worth

    limit = 5
    assert sink.prune(raw_before, rollups_before, limit) == sum(min(n, limit) for n in expired)
    assert count("aegis_requests") == 400 - limit
    assert count("aegis_rollup_deltas", "delta_id = %s", "old-delta") == 0

    steps = 1
    while sink.prune(raw_before, rollups_before, limit):
        steps += 1
        assert steps < 1000
    assert steps >= expired[0] // limit
    reference.prune(raw_before, rollups_before, 10**9)
    assert sink.read_requests(RequestQuery(limit=1000)) == reference.read_requests(
        RequestQuery(limit=1000)
    )
    assert all_rollups(sink) == all_rollups(reference)
    assert count("aegis_websocket_sessions") == 0
    assert count("aegis_rollup_deltas") == 1  # the recent one stays
    assert sql(postgres_url, "SELECT batch_id FROM aegis_batches") == [("recent",)]


# -- failures, fork and the whole pipeline ------------------------------------------------


def test_unreachable_server_makes_write_raise(sinks: Callable[[str], PostgresSink]) -> None:
    """No server (port 1): write raises, so the flusher keeps the batch and retries."""
    sink = sinks("postgresql://postgres@127.0.0.1:1/test?connect_timeout=5")
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            sink.write(Batch(requests=[make_request(1)]))


def test_unreachable_server_is_a_counted_sink_error_in_the_pipeline(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Through Aegis the failure is counted and the records are kept for the retry."""
    aegis = make_aegis(sink="postgresql://postgres@127.0.0.1:1/test", flush_interval=3600)
    offer_requests(aegis, 3)

    assert aegis.force_flush(timeout=10) is False

    [stats] = aegis.stats().sinks
    assert stats.name == "postgresql:127.0.0.1/test"
    assert (stats.errors, stats.backlog, stats.written) == (1, 3, 0)
    assert stats.last_error.startswith("OperationalError: ")
    assert aegis.shutdown(timeout=0.5) is False
    assert aegis.stats().sinks[0].dropped["shutdown_timeout"] == 3


def test_a_broken_connection_is_replaced_on_the_next_write(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """The server ends the writer's session: that write fails, the next reconnects."""
    sink = sinks(postgres_url)
    sink.write(Batch(requests=[make_request(1)]))
    writer = sink._connection  # the writer's own session, ended from outside
    assert writer is not None
    assert sql(postgres_url, "SELECT pg_terminate_backend(%s)", writer.info.backend_pid) == [
        (True,)
    ]

    with pytest.raises(psycopg.OperationalError):
        sink.write(Batch(requests=[make_request(2)]))
    sink.write(Batch(requests=[make_request(2)]))

    assert [r.request_id for r in sink.read_requests(RequestQuery())] == [
        make_request(2).request_id,
        make_request(1).request_id,
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.forks
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_opens_its_own_connections(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A child forked with the sink's connections open writes and reads on its
    own; the parent's connections keep working."""
    sink = sinks(postgres_url)
    sink.write(Batch(requests=[make_request(1)]))
    assert len(sink.read_requests(RequestQuery())) == 1  # the read pool is open too

    def child() -> dict[str, Any]:
        sink.write(Batch(requests=[make_request(2)]))
        return {"ok": True, "read": len(sink.read_requests(RequestQuery()))}

    code, report = run_in_child(child)

    assert (code, report) == (0, {"ok": True, "read": 2})
    sink.write(Batch(requests=[make_request(3)]))
    assert len(sink.read_requests(RequestQuery())) == 3


def offer_requests(aegis: Aegis, count: int, status: int = 200) -> None:
    """Queue ``count`` finished requests as the middleware would, timed now."""
    now = aegis.clock.monotonic()
    for number in range(count):
        aegis.recorder.offer(
            inbox_item(f"/r/{number}", route="/r/{n}", status=status, start=now, response_bytes=10)
        )


def test_pipeline_history_through_postgres(
    postgres_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    """``Aegis(sink=url)``: flushed requests show in the history overview."""
    aegis = make_aegis(sink=postgres_url, flush_interval=3600)
    offer_requests(aegis, 7)
    offer_requests(aegis, 2, status=503)
    offer_requests(aegis, 1, status=404)

    assert aegis.force_flush(timeout=30) is True

    [sink] = aegis.sinks
    assert isinstance(sink, PostgresSink)
    overview = HistoryQueries(sink).overview("5m")
    assert (overview["total"], overview["failed"], overview["client_errors"]) == (10, 2, 1)
    assert overview["successful"] == 7
    assert overview["response_bytes"] == 100
    assert len(sink.read_requests(RequestQuery(status_from=500))) == 2


def test_reads_are_bounded_by_a_statement_timeout_and_keepalives(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A read connection, once lent, cannot wait forever: the server cancels a
    statement after 30 s (a read behind a lock), and TCP keepalives find a server
    whose host went away; a URL's own settings are kept."""
    reader = sinks(postgres_url)._reader
    with reader._connection() as cursor:
        assert cursor.execute("SHOW statement_timeout").fetchone() == ("30s",)
        parameters = cursor.connection.info.get_parameters()
        assert (parameters["keepalives_idle"], parameters["keepalives_count"]) == ("10", "3")
    own = f"{postgres_url}%20-cstatement_timeout%3D1500&keepalives_idle=60"
    reader = sinks(own)._reader
    with reader._connection() as cursor:
        assert cursor.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
        assert cursor.connection.info.get_parameters()["keepalives_idle"] == "60"


def test_a_migration_on_a_read_connection_outlasts_the_reads_statement_timeout(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A process whose first use of the store is a read migrates the schema on
    a read connection, whose statements the server cancels after the reads'
    timeout (1 s here, by the URL; 30 s as shipped). A version's statement
    that takes longer (here version 17's ALTER TABLE, queued 2 s behind a
    writer's open transaction; an index of a large table may take minutes)
    runs on to its end: cut at the reads' timeout, it would be rolled back
    and tried again by every first read, and never done."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, 16)
    reader = sinks(f"{postgres_url}%20-cstatement_timeout%3D1000")._reader

    def first_read() -> None:
        with reader._connection() as cursor:
            assert cursor.execute("SHOW statement_timeout").fetchone() == ("1s",)

    with psycopg.connect(postgres_url) as writer:  # a transaction, open
        writer.execute("LOCK TABLE aegis_requests IN ROW EXCLUSIVE MODE")
        queued = (
            "SELECT query FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) "
            "AND now() - query_start > interval '2 s'"
        )
        with ThreadPoolExecutor(1) as thread:
            read = thread.submit(timed, first_read, 30)
            rows = eventually(
                lambda: sql(postgres_url, queued, writer.info.backend_pid) or read.done()
            )
            assert rows is not True, f"ended before queueing 2 s: {read.result()}"
            [(statement,)] = rows
            assert statement.startswith("ALTER TABLE aegis_requests ADD COLUMN trace_id")
            writer.commit()
            error, _took = read.result()
    assert error is None, error
    assert sql(postgres_url, "SELECT max(version) FROM aegis_schema_version") == [
        (postgres_schema.SCHEMA_VERSION,)
    ]


# -- trace and span ids (schema version 17) ------------------------------------------


def test_a_version_16_schema_gains_the_trace_columns_in_place(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A database left at version 16 gets the columns (version 17) without
    a rewrite of either table (the same files, the rows where they were):
    old requests and sessions read back with no trace, new ones with
    theirs, and the filter finds only the new, through the new partial index."""
    old_requests = [make_request(n) for n in range(20)]
    old_sessions = [make_session(n) for n in range(3)]
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, 16)
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO aegis_requests VALUES ({', '.join(['%s'] * 12)})",
                [record[:12] for record in old_requests],
            )
            cursor.executemany(
                f"INSERT INTO aegis_websocket_sessions VALUES ({', '.join(['%s'] * 11)})",
                [session[:11] for session in old_sessions],
            )
    files = (
        "SELECT relname, relfilenode FROM pg_class WHERE relname IN "
        "('aegis_requests', 'aegis_websocket_sessions') "
        "AND relnamespace = current_schema()::regnamespace ORDER BY relname"
    )
    places = "SELECT ctid::text, request_id FROM aegis_requests ORDER BY request_id"
    before = sql(postgres_url, files), sql(postgres_url, places)

    sink = sinks(postgres_url)
    new_requests = [make_request(n, trace_id=TRACE_A, span_id=SPAN_A) for n in range(20, 23)]
    new_sessions = [make_session(5, trace_id=TRACE_B, span_id=SPAN_B)]
    sink.write(Batch(requests=new_requests, sessions=new_sessions, batch_id="after"))

    assert sql(postgres_url, "SELECT max(version) FROM aegis_schema_version") == [
        (postgres_schema.SCHEMA_VERSION,)
    ]
    assert sql(postgres_url, files) == before[0]  # no table was rewritten
    assert sql(postgres_url, places)[:20] == before[1]
    everything = sink.read_requests(RequestQuery(limit=100))
    assert everything == sorted(
        [*old_requests, *new_requests], key=lambda r: (r.timestamp, r.request_id), reverse=True
    )
    assert all(r.trace_id is None and r.span_id is None for r in everything[3:])
    rows = sql(postgres_url, "SELECT * FROM aegis_websocket_sessions ORDER BY session_id")
    assert [WebSocketSession(*row) for row in rows] == [*old_sessions, *new_sessions]
    assert sink.read_requests(RequestQuery(trace_id=TRACE_A)) == new_requests[::-1]
    [(definition,)] = sql(
        postgres_url,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "AND indexname = 'aegis_requests_trace'",
    )
    assert definition.split(" USING ")[1] == "btree (trace_id) WHERE (trace_id IS NOT NULL)"


def test_the_trace_filter_matches_exactly_and_reads_the_partial_index(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """``trace_id`` keeps one trace's requests, alone or with the other
    filters; the statement for it can use the partial index of traced rows
    with any value bound (a generic plan), not only the one it was planned for."""
    sink = sinks(postgres_url)
    requests = traced_requests()
    sink.write(Batch(requests=[*requests, *(make_request(n, prefix="f" * 16) for n in range(50))]))

    def newest(keep: Callable[[RequestRecord], bool]) -> list[RequestRecord]:
        kept = [r for r in requests if keep(r)]
        return sorted(kept, key=lambda r: (r.timestamp, r.request_id), reverse=True)

    assert sink.read_requests(RequestQuery(trace_id=TRACE_A)) == newest(
        lambda r: r.trace_id == TRACE_A
    )
    assert sink.read_requests(RequestQuery(trace_id=TRACE_B, route="/b")) == newest(
        lambda r: r.trace_id == TRACE_B
    )
    assert sink.read_requests(RequestQuery(trace_id=TRACE_A, status_from=500)) == newest(
        lambda r: r.trace_id == TRACE_A and r.status >= 500
    )
    assert sink.read_requests(RequestQuery(trace_id="f" * 32)) == []

    statement, params = history_sql.select_requests(
        history_sql.POSTGRES, RequestQuery(trace_id=TRACE_A, since=1.0)
    )
    for number in range(1, len(params) + 1):
        statement = statement.replace("%s", f"${number}", 1)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        # A table this small is read whole when allowed: forbid that, so the
        # plan shows whether the index can answer the statement at all.
        connection.execute("SET enable_seqscan = off")
        connection.execute("SET plan_cache_mode = force_generic_plan")
        connection.execute(f"PREPARE by_trace AS {statement}")
        values = ", ".join(f"'{value}'" if isinstance(value, str) else str(value)
                           for value in params)  # fmt: skip
        plan = connection.execute(f"EXPLAIN EXECUTE by_trace({values})").fetchall()
    text = "\n".join(line for (line,) in plan)
    assert "aegis_requests_trace" in text, text


def test_compiled_copy_writes_the_trace_columns_as_psycopg_does(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """The compiled COPY formatter takes the new text columns (NULL or not):
    its bytes match psycopg's for the probe rows of the widened tables, so it
    is used, and every value reads back."""
    module = compiled_module()
    sink = sinks(postgres_url)
    sink.use_compiled(module)
    requests = [
        make_request(n, trace_id=TRACE_A, span_id=f"{n + 1:016x}") if n % 2 else make_request(n)
        for n in range(300)
    ]
    sessions = [make_session(1), make_session(2, trace_id=TRACE_B, span_id=SPAN_B)]
    sink.write(Batch(requests=requests, sessions=sessions, batch_id="compiled"))

    assert sink._copier is module
    assert sink.read_requests(RequestQuery(limit=1000)) == sorted(
        requests, key=lambda r: (r.timestamp, r.request_id), reverse=True
    )
    rows = sql(postgres_url, "SELECT * FROM aegis_websocket_sessions ORDER BY session_id")
    assert [WebSocketSession(*row) for row in rows] == sessions
    assert len(sink.read_requests(RequestQuery(trace_id=TRACE_A, limit=1000))) == 150

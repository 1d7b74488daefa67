"""The built-in sinks tell a value they cannot store (RecordRejected, nothing stored)
from storage that is away (any other error), and the pipeline sets the refused record
aside while the rest reaches the real database or file.

The finalizer repairs every value it knows to be a problem, so these tests hand the
sinks raw records directly, or through a subclass that spoils one record on its way
in (a stand-in for a value nobody foresaw)."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, Batch, RecordRejected, RequestRecord
from aegis_mw.sinks import JsonlSink, SQLiteSink
from tests.sinks.test_sqlite import make_request, make_session

BAD_PATH = "/items/13"


def spoil(record: RequestRecord, **changes: Any) -> RequestRecord:
    return record._replace(**changes) if record.path == BAD_PATH else record


# -- each sink on its own ----------------------------------------------------------------

SQLITE_REFUSED = {
    "lone surrogate": {"path": "/caf\udce9"},
    "int beyond 64 bits": {"response_bytes": 2**63},
    "NaN where NOT NULL": {"duration_ms": math.nan},
    "None where NOT NULL": {"path": None},
    "a type it cannot bind": {"client_ip": object()},
}


@pytest.mark.parametrize("changes", SQLITE_REFUSED.values(), ids=SQLITE_REFUSED.keys())
def test_sqlite_refuses_a_value_and_stores_nothing_of_the_batch(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    """Before, a NaN duration or a None path was skipped by INSERT OR IGNORE and
    the batch counted as written."""
    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    try:
        with pytest.raises(RecordRejected):
            sink.write(Batch(requests=[make_request(1), make_request(2, **changes)]))
        sink.write(Batch(requests=[make_request(3)]))  # the connection still works
    finally:
        sink.close()
    with sqlite3.connect(tmp_path / "aegis.db") as connection:
        stored = connection.execute("SELECT path FROM aegis_requests").fetchall()
    connection.close()
    assert stored == [("/items/3",)]


POSTGRES_REFUSED = {
    "NUL in text": {"path": "/anything\x00"},
    "lone surrogate": {"error": "E: \udce9"},
    "int beyond 64 bits": {"request_bytes": 2**63},
    "None where NOT NULL": {"route": None},
    "a type it cannot adapt": {"client_ip": object()},
}


@pytest.mark.parametrize("changes", POSTGRES_REFUSED.values(), ids=POSTGRES_REFUSED.keys())
def test_postgres_refuses_a_value_and_stores_nothing_of_the_batch(
    postgres_url: str, changes: dict[str, Any]
) -> None:
    import psycopg

    from aegis_mw.sinks.postgres import PostgresSink

    sink = PostgresSink(postgres_url)
    try:
        with pytest.raises(RecordRejected):
            sink.write(Batch(requests=[make_request(1), make_request(2, **changes)]))
        sink.write(Batch(requests=[make_request(3)]))  # the same connection goes on
    finally:
        sink.close()
    with psycopg.connect(postgres_url) as connection:
        stored = connection.execute("SELECT path FROM aegis_requests").fetchall()
    assert stored == [("/items/3",)]


@pytest.mark.parametrize(
    "changes", [{"path": "/caf\udce9"}, {"client_ip": object()}], ids=["surrogate", "object"]
)
def test_jsonl_refuses_a_value_and_writes_nothing_of_the_batch(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    sink = JsonlSink(str(tmp_path / "records.jsonl"))
    try:
        with pytest.raises(RecordRejected):
            sink.write(Batch(requests=[make_request(1), make_request(2, **changes)]))
        sink.write(Batch(requests=[make_request(3)]))
    finally:
        sink.close()
    lines = (tmp_path / "records.jsonl").read_text("utf-8").splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["/items/3"]


def test_sessions_are_refused_the_same_way(tmp_path: Path) -> None:
    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    try:
        with pytest.raises(RecordRejected):
            sink.write(Batch(sessions=[make_session(1, path="/chat\udce9")]))
    finally:
        sink.close()


# -- through the pipeline ----------------------------------------------------------------


class SpoilingSQLite(SQLiteSink):
    def write(self, batch: Batch) -> None:
        requests = [spoil(record, duration_ms=math.nan) for record in batch.requests]
        super().write(Batch(requests=requests, sessions=batch.sessions, rollups=batch.rollups))


class SpoilingJsonl(JsonlSink):
    def write(self, batch: Batch) -> None:
        requests = [spoil(record, path="/items/\udce9") for record in batch.requests]
        super().write(Batch(requests=requests, sessions=batch.sessions, rollups=batch.rollups))


@pytest.fixture
def spoiling(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """A real sink of the given kind that spoils the record for BAD_PATH, and a
    function reading back the paths it stored."""

    def build(kind: str) -> Any:
        if kind == "sqlite":
            sink: Any = SpoilingSQLite(str(tmp_path / "aegis.db"))

            def stored() -> list[str]:
                with sqlite3.connect(tmp_path / "aegis.db") as connection:
                    rows = connection.execute("SELECT path FROM aegis_requests").fetchall()
                connection.close()
                return sorted(row[0] for row in rows)
        elif kind == "jsonl":
            sink = SpoilingJsonl(str(tmp_path / "records.jsonl"))

            def stored() -> list[str]:
                text = (tmp_path / "records.jsonl").read_text("utf-8")
                return sorted(json.loads(line)["path"] for line in text.splitlines())
        else:
            import psycopg

            from aegis_mw.sinks.postgres import PostgresSink

            url = request.getfixturevalue("postgres_url")

            class SpoilingPostgres(PostgresSink):
                def write(self, batch: Batch) -> None:
                    requests = [spoil(record, path="/items/\x00") for record in batch.requests]
                    super().write(Batch(requests, batch.sessions, batch.rollups))

            sink = SpoilingPostgres(url)

            def stored() -> list[str]:
                with psycopg.connect(url) as connection:
                    rows = connection.execute("SELECT path FROM aegis_requests").fetchall()
                return sorted(row[0] for row in rows)

        sink.stored = stored
        return sink

    return build


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "jsonl"])
def test_a_record_the_database_refuses_is_set_aside_and_the_rest_stored(
    spoiling: Callable[[str], Any], make_aegis: Callable[..., Aegis], kind: str
) -> None:
    sink = spoiling(kind)
    aegis = make_aegis(sink=sink, flush_interval=3600)
    now = aegis.clock.monotonic()
    paths = [f"/items/{number}" for number in range(40)]
    for path in paths:
        aegis.recorder.offer(
            [
                "GET", "/items/{n}", path, 200, now, now + 0.001, now + 0.002, 0, 1,
                ("127.0.0.1", 1), None, "", False, None,
            ]
        )  # fmt: skip

    assert aegis.force_flush(30) is True

    assert sink.stored() == sorted(path for path in paths if path != BAD_PATH)
    [entry] = aegis.stats().sinks
    assert (entry.written, entry.dropped["rejected"], entry.errors) == (39, 1, 0)
    if kind != "jsonl":  # history sinks: the rollups count every request once
        from aegis_mw.history.queries import HistoryQueries

        assert HistoryQueries(sink).overview("5m")["total"] == 40


def test_a_jsonl_directory_that_went_away_is_an_outage(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """An OSError is storage being away: kept whole, retried, stored once it is back."""
    directory = tmp_path / "logs"
    directory.mkdir()
    aegis = make_aegis(sink=f"jsonl:///{directory / 'records.jsonl'}", flush_interval=3600)
    shutil.rmtree(directory)
    now = aegis.clock.monotonic()
    for number in range(12):
        aegis.recorder.offer(
            ["GET", "/r", f"/r/{number}", 200, now, None, now, 0, 0, None, None, "", False, None]
        )

    assert aegis.force_flush(30) is False
    [entry] = aegis.stats().sinks
    assert (entry.backlog, entry.errors, entry.dropped["rejected"]) == (12, 1, 0)
    assert entry.last_error.startswith("FileNotFoundError")

    directory.mkdir()
    assert aegis.force_flush(30) is True
    lines = (directory / "records.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == 12

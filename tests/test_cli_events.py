"""``aegis-mw events``: the events API's filters and checks from a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_mw.cli import main
from aegis_mw.core.events import EventQuery, read_merged
from aegis_mw.core.record import Batch, RequestRecord
from aegis_mw.sinks import SQLiteSink

T0 = 1_780_000_000.0


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A file with one failed and one good request, written by the sink an app uses."""
    path = tmp_path / "aegis.db"
    sink = SQLiteSink(str(path))
    failed = RequestRecord(
        "f" * 32, T0, "GET", "/boom", "/boom", 500, 1.5, 1.0, 0, 0, None, "RuntimeError: x"
    )
    good = RequestRecord("a" * 32, T0 + 1, "GET", "/", "/", 200, 1.0, 0.5, 0, 2, None, "")
    sink.write(Batch([failed, good], batch_id="b1"))
    sink.close()
    return path


def test_create_then_list_reads_what_the_api_reads(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{database}"
    assert main([
        "events", "create", "deployed 2.4.1", "--tag", "deploy", "--tag", "version:2.4.1",
        "--payload", '{"by": "ci"}', "--id", "deploy-2.4.1", "--level", "warning",
        "--timestamp", "2026-05-28T20:26:42Z", "--db", url,
    ]) == 0  # fmt: skip
    assert capsys.readouterr().out == "deploy-2.4.1\n"
    # Again with the same id: stored once.
    assert main(["events", "create", "other text", "--id", "deploy-2.4.1", "--db", url]) == 0
    capsys.readouterr()

    assert main(["events", "list", "--db", url, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    sink = SQLiteSink(str(database))
    try:
        merged = read_merged(EventQuery(), sink.read_events, sink.read_requests)
    finally:
        sink.close()
    assert [event["id"] for event in printed["events"]] == [e.event_id for e in merged]
    assert [event["id"] for event in printed["events"]] == ["deploy-2.4.1", f"request:{'f' * 32}"]
    deploy = printed["events"][0]
    assert deploy["message"] == "deployed 2.4.1" and deploy["level"] == "warning"
    assert deploy["tags"] == ["deploy", "version:2.4.1"] and deploy["payload"] == {"by": "ci"}
    assert deploy["timestamp"] == "2026-05-28T20:26:42.000Z"

    assert main(["events", "list", "--db", url, "--json", "--tags", "deploy"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)["events"]] == ["deploy-2.4.1"]
    assert main(["events", "list", "--db", url, "--json", "--level", "error"]) == 0
    only = json.loads(capsys.readouterr().out)["events"]
    assert [e["payload"]["route"] for e in only] == ["/boom"]

    assert main(["events", "list", "--db", url]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["time", "level", "type", "source", "tags", "message", "id"]
    assert len(rows) == 2 + 2 and "deploy-2.4.1" in rows[2]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["events", "create", "x", "--level", "loud"], "--level"),
        (["events", "create", "x", "--tag", "ok", "--tag", "a,b"], "--tag: tags[1]"),
        (["events", "create", "x", "--payload", "[1]"], "--payload"),
        (["events", "create", "x", "--payload", "{"], "--payload"),
        (["events", "create", "x", "--id", "request:1"], "--id"),
        (["events", "create", "x", "--trace-id", "XYZ"], "--trace-id"),
        (["events", "list", "--type", "nope"], "--type"),
        (["events", "list", "--limit", "0"], "--limit"),
        (["events", "list", "--trace-id", "0"], "--trace-id"),
    ],
)
def test_bad_input_names_the_option_and_stores_nothing(
    database: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], named: str
) -> None:
    assert main([*arguments, "--db", str(database)]) == 2
    assert f"aegis-mw: error: {named}:" in capsys.readouterr().err
    sink = SQLiteSink(str(database))
    try:
        assert sink.read_events(EventQuery()) == []
    finally:
        sink.close()


def test_a_missing_file_is_an_error_not_a_new_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    assert main(["events", "create", "x", "--db", str(missing)]) == 2
    assert "nothing is stored there" in capsys.readouterr().err
    assert not missing.exists()


def test_a_database_that_cannot_be_read_is_an_error_not_a_traceback(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database.write_bytes(b"not a database, but a file of the right name" * 100)
    assert main(["events", "list", "--db", str(database)]) == 2
    assert "aegis-mw: error:" in capsys.readouterr().err
    deep = "[" * 50_000 + "]" * 50_000
    assert main(["events", "create", "x", "--payload", deep, "--db", str(database)]) == 2
    assert "--payload" in capsys.readouterr().err

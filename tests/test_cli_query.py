"""``aegis-mw query``: the API's answers from a terminal, as JSON or a table."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegis_mw.cli import main
from aegis_mw.core.record import RequestRecord, isoformat
from aegis_mw.history import HistoryQueries
from aegis_mw.sinks import SQLiteSink

from .history.dataset import NOW, batches, make_records, trace_of

FROM, TO = isoformat(NOW - 3600), isoformat(NOW)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "aegis.db"
    sink = SQLiteSink(str(path))
    for batch in batches(make_records(800)):
        sink.write(batch)
    sink.close()
    return path


def test_json_output_is_the_query_answer(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{database}"
    assert main(["query", "overview", "--db", url, "--from", FROM, "--to", TO, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = HistoryQueries(SQLiteSink(str(database))).overview(None, FROM, TO)
    assert printed == expected
    assert printed["total"] > 0

    assert main(["query", "top-endpoints", "--db", url, "--from", FROM, "--to", TO,
                 "--sort", "errors", "--limit", "3", "--json"]) == 0  # fmt: skip
    top = json.loads(capsys.readouterr().out)
    assert top["sort"] == "errors" and len(top["endpoints"]) == 3


def test_tables(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{database}"
    answer = HistoryQueries(SQLiteSink(str(database))).overview(None, FROM, TO)
    assert main(["query", "overview", "--db", url, "--from", FROM, "--to", TO]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(answer["range"]["from"])
    assert ["total", str(answer["total"])] in [line.split() for line in lines]
    assert main(["query", "requests", "--db", url, "--status", "5xx", "--limit", "4"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["time", "method", "route", "path", "status", "ms", "error"]
    assert len(rows) == 2 + 4 and all(row.split()[4].startswith("5") for row in rows[2:])
    assert main(["query", "latency", "--db", url, "--from", FROM, "--to", TO]) == 0
    series = capsys.readouterr().out.splitlines()
    assert series[2].split() == ["time", "requests", "avg", "p50", "p95", "p99"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["overview", "--range", "2h"], "range: range must be one of"),
        (["overview", "--sort", "p95"], "--sort does not apply to overview"),
        (["requests", "--limit", "0"], "limit: limit must be an integer from 1 to 1000"),
        (["overview", "--db", "sqlite:///missing.db"], "an existing database file"),
        (["overview", "--db", "jsonl:///x.jsonl"], "a sink that keeps history"),
        (
            ["requests", "--trace-id", "4BF92F3577B34DA6A3CE929D0E0E4736"],
            "trace_id: trace_id must be 32 lowercase hex digits, not all zeros",
        ),
        (["requests", "--trace-id", "0" * 32], "trace_id: trace_id must be 32 lowercase hex"),
        (["overview", "--trace-id", "a" * 32], "--trace_id does not apply to overview"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    database: Path,
    arguments: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    if "--db" not in arguments:
        arguments = [*arguments, "--db", f"sqlite:///{database}"]
    assert main(["query", *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.count("\n") == 1


def test_the_installed_command(database: Path) -> None:
    script = Path(sys.executable).with_name("aegis-mw")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "aegis_mw.cli"]
    done = subprocess.run(
        [*command, "query", "status-distribution", "--db", f"sqlite:///{database}",
         "--from", FROM, "--to", TO, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout)["points"]
    assert sum(sum(p[f"{n}xx"] for n in range(1, 6)) for p in points) > 0


def test_db_takes_a_plain_file_path(
    database: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--db aegis.db`` reads the same file as ``--db sqlite:///aegis.db``."""
    expected = HistoryQueries(SQLiteSink(str(database))).overview(None, FROM, TO)
    monkeypatch.chdir(database.parent)
    for db in (str(database), database.name, f"sqlite:///{database.name}"):
        assert main(["query", "overview", "--db", db, "--from", FROM, "--to", TO, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == expected


@pytest.mark.parametrize("scheme", ["", "sqlite:///"])
def test_db_in_a_missing_directory_is_an_error_naming_it(
    tmp_path: Path, scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such"
    assert main(["query", "overview", "--db", f"{scheme}{missing / 'aegis.db'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"the directory {missing} does not exist" in captured.err
    assert not (tmp_path / "no").exists()


def _stored_now(path: Path, ages: dict[str, float]) -> None:
    """One request per name, ``ages[name]`` seconds old (real time), with an error."""
    now = time.time()
    records = [
        RequestRecord(
            request_id=f"{number:016x}", timestamp=now - age, method="GET", route="/r",
            path=f"/{name}", status=500, duration_ms=1.0, ttfb_ms=None, request_bytes=0,
            response_bytes=0, client_ip=None, error=f"RuntimeError: {name} failed",
        )
        for number, (name, age) in enumerate(ages.items())
    ]  # fmt: skip
    sink = SQLiteSink(str(path))
    for batch in batches(records):
        sink.write(batch)
    sink.close()


def test_since_takes_a_duration_or_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "aegis.db"
    _stored_now(database, {"recent": 60.0, "older": 1800.0, "oldest": 3 * 86400.0})

    def paths(*options: str) -> list[str]:
        assert main(["query", "requests", "--db", str(database), "--json", *options]) == 0
        return [r["path"] for r in json.loads(capsys.readouterr().out)["requests"]]

    assert paths("--since", "15m") == ["/recent"]
    assert paths("--since", "900s") == ["/recent"]
    assert paths("--since", "2h") == ["/recent", "/older"]
    assert paths("--since", "7d") == ["/recent", "/older", "/oldest"]
    assert paths("--since", "7d", "--until", "15m") == ["/older", "/oldest"]
    assert paths("--since", isoformat(time.time() - 3600)) == ["/recent", "/older"]


@pytest.mark.parametrize("value", ["15x", "m", "-5m", "1.5h", "yesterday", "2026-13-01"])
def test_a_bad_since_is_a_usage_error_naming_the_option(
    database: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["query", "requests", "--db", str(database), f"--since={value}"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"argument --since: {value!r} is not a duration (30s, 15m, 2h, 7d)" in captured.err


def test_the_requests_table_shows_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "aegis.db"
    _stored_now(database, {"recent": 60.0})
    assert main(["query", "requests", "--db", str(database)]) == 0
    header, _, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["time", "method", "route", "path", "status", "ms", "error"]
    assert row.endswith("  RuntimeError: recent failed")


def test_custom_metric_history_from_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The app's own metric as the API charts it, read from the file the app
    wrote, by a process that does not declare it; bad input is exit 2."""
    from aegis_mw import Aegis

    path = tmp_path / "app.db"
    aegis = Aegis(sink=f"sqlite:///{path}", metrics_registry="none")
    aegis.start()
    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    orders.labels("eu").inc(3)
    orders.labels("us").inc(2)
    orders.labels("eu").inc(4)
    assert aegis.force_flush()
    assert aegis.shutdown()
    url = f"sqlite:///{path}"
    arguments = ["query", "custom-metric-history", "--db", url, "--range", "1h"]
    assert main([*arguments, "--name", "orders_total", "--by", "region", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["name"], answer["kind"], answer["by"]) == ("orders", "counter", ["region"])
    increases = {
        series["labels"]["region"]: sum(point["increase"] for point in series["points"])
        for series in answer["series"]
    }
    assert increases == {"eu": 7.0, "us": 2.0}
    assert main([*arguments, "--name", "orders"]) == 0
    printed = capsys.readouterr().out
    assert "orders (counter)" in printed
    assert [line.split()[-2] for line in printed.splitlines() if "(all)" in line] == ["9"]
    assert main([*arguments, "--name", "refunds"]) == 2
    assert "no custom metric named 'refunds'" in capsys.readouterr().err
    assert main([*arguments, "--name", "orders", "--by", "shop"]) == 2
    assert "by:" in capsys.readouterr().err
    assert main(["query", "overview", "--db", url, "--name", "orders"]) == 2
    assert "--name does not apply to overview" in capsys.readouterr().err


def test_a_gauge_of_zero_is_a_row_of_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aegis_mw import Aegis

    path = tmp_path / "app.db"
    aegis = Aegis(sink=f"sqlite:///{path}", metrics_registry="none")
    aegis.start()
    aegis.gauge("queue_depth", "Jobs waiting.").set(0)
    assert aegis.force_flush()
    assert aegis.shutdown()
    arguments = ["query", "custom-metric-history", "--db", f"sqlite:///{path}", "--range", "5m"]
    assert main([*arguments, "--name", "queue_depth"]) == 0
    [row] = [line.split() for line in capsys.readouterr().out.splitlines() if "(all)" in line]
    assert row[-3:] == ["0", "0", "0"]  # value, low, high


def test_requests_of_one_trace(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--trace-id`` is the API's ``trace_id``: one trace's requests, with
    their ids in the JSON, and as a table."""
    trace = trace_of(5 * 3)
    url = f"sqlite:///{database}"
    assert main(["query", "requests", "--db", url, "--trace-id", str(trace), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["requests"]
    expected = sorted(
        (r for r in make_records(800) if r.trace_id == trace),
        key=lambda r: (r.timestamp, r.request_id),
        reverse=True,
    )
    assert len(expected) == 3  # of the 800 requests: every 5th, in 64 traces
    assert found == [r.to_json() for r in expected]
    assert main(["query", "requests", "--db", url, "--trace-id", str(trace)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + len(expected)

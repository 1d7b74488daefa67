"""``aegis-mw query``: the API's answers from a terminal, as JSON or a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_mw.cli import main
from aegis_mw.core.record import isoformat
from aegis_mw.history import HistoryQueries
from aegis_mw.sinks import SQLiteSink

from .history.dataset import NOW, batches, make_records

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
    assert rows[0].split() == ["time", "method", "route", "path", "status", "ms"]
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

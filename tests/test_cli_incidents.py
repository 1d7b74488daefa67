"""``aegis-mw incidents``: the incidents API's checks and answers from a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_mw.cli import main
from aegis_mw.core.record import Batch
from aegis_mw.sinks import SQLiteSink


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "aegis.db"
    sink = SQLiteSink(str(path))
    sink.write(Batch())
    sink.close()
    return path


def test_open_attach_change_show_and_list(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", str(database)]
    assert main(["incidents", "create", "checkout errors", "--severity", "critical",
                 "--correlation-key", "checkout", "--as", "ana", *db]) == 0  # fmt: skip
    incident_id = capsys.readouterr().out.strip()
    assert incident_id.startswith("inc-")
    assert main(["incidents", "create", "again", "--correlation-key", "checkout", *db]) == 0
    assert capsys.readouterr().out.strip() == f"{incident_id} (attached)"
    assert main(["incidents", "update", incident_id, "--status", "resolved",
                 "--root-cause", "deploy 2.4.1", "--note", "rolled back", "--as", "bo", *db]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == f"{incident_id} resolved"

    assert main(["incidents", "show", incident_id, "--json", *db]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["incident"]["status"] == "resolved"
    assert shown["incident"]["root_cause"] == "deploy 2.4.1"
    assert [(u["kind"], u["actor"]) for u in shown["updates"]] == [
        ("created", "ana via cli"), ("attached", shown["updates"][1]["actor"]),
        ("changed", "bo via cli"),
    ]  # fmt: skip
    assert shown["updates"][2]["note"] == "rolled back"
    assert shown["summary"]["resolved"] is True

    assert main(["incidents", "list", "--status", "active", "--json", *db]) == 0
    assert json.loads(capsys.readouterr().out)["incidents"] == []
    assert main(["incidents", "list", *db]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["id", "status", "severity", "opened", "assignee", "title"]
    assert rows[2].split()[:3] == [incident_id, "resolved", "critical"]
    assert main(["incidents", "show", incident_id, "--timeline", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[4:]] == ["incident"] * 3


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["incidents", "create", " "], "title:"),
        (["incidents", "create", "x", "--severity", "huge"], "severity:"),
        (["incidents", "create", "x", "--status", "resolved"], "status:"),
        (["incidents", "update", "inc-nope", "--note", "x"], "no incident has the id inc-nope"),
        (["incidents", "list", "--status", "closed"], "--status:"),
        (["incidents", "show", "inc-nope"], "no incident has this id"),
    ],
)
def test_bad_input_says_why(
    database: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], said: str
) -> None:
    assert main([*arguments, "--db", str(database)]) == 2
    assert said in capsys.readouterr().err

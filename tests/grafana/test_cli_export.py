"""``aegis-mw export``: prints the shipped files as they are (valid JSON and
YAML), writes them with ``-o``, and refuses bad input with a one-line message
and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from aegis_mw.cli import main
from tests.servers import ROOT

#: option -> the file in aegis_mw/grafana/ it prints
OPTIONS = {
    "--grafana-dashboard": "prometheus-dashboard.json",
    "--grafana-postgresql-dashboard": "postgresql-dashboard.json",
    "--recording-rules": "recording-rules.yml",
}


def shipped(filename: str) -> str:
    return resources.files("aegis_mw.grafana").joinpath(filename).read_text(encoding="utf-8")


@pytest.mark.parametrize(("option", "filename"), OPTIONS.items())
def test_prints_the_shipped_file(
    option: str, filename: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", option]) == 0
    printed = capsys.readouterr()
    assert printed.out == shipped(filename) and printed.err == ""
    assert printed.out == (ROOT / "aegis_mw" / "grafana" / filename).read_text(encoding="utf-8")
    if filename.endswith(".json"):
        assert json.loads(printed.out)["uid"].startswith("aegis-mw-")
    else:
        assert yaml.safe_load(printed.out)["groups"]


@pytest.mark.parametrize(("option", "filename"), OPTIONS.items())
def test_writes_a_file(
    option: str, filename: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / filename
    assert main(["export", option, "-o", str(target)]) == 0
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("wrote the ") and printed.err.endswith(f" to {target}\n")
    assert target.read_text(encoding="utf-8") == shipped(filename)


def test_the_namespace_renames_the_prometheus_series(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--grafana-dashboard", "--namespace", "shop_api"]) == 0
    text = capsys.readouterr().out
    assert "shop_api_http_requests_total" in text and "aegis_http" not in text
    json.loads(text)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--recording-rules", "--namespace", "shop-api"], "not a metric name prefix"),
        (["--grafana-postgresql-dashboard", "--namespace", "shop"], "has no metric namespace"),
        (["--grafana-dashboard", "-o", "/no/such/directory/x.json"], "No such file or directory"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", *arguments]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("aegis-mw: error: ") and message in printed.err
    assert printed.err.count("\n") == 1


@pytest.mark.parametrize(
    "arguments", [[], ["--grafana-dashboard", "--recording-rules"], ["--grafana"]]
)
def test_exactly_one_export_is_asked_for(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["export", *arguments])
    assert exited.value.code == 2
    assert "usage: aegis-mw export" in capsys.readouterr().err


def test_the_installed_command_prints_it() -> None:
    """Through the console script's module, as a user's shell runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "aegis_mw.cli", "export", "--recording-rules"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == shipped("recording-rules.yml")

"""``aegis-mw alerts``: the stored alerts and their history read from a real
SQLite file, a test notice sent to a real HTTP receiver, and the export
checked by promtool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from aegis_mw.alerts import AlertRule, evaluate
from aegis_mw.alerts.channels import WebhookChannel
from aegis_mw.alerts.outbox import notices_for
from aegis_mw.alerts.store import changes_between
from aegis_mw.cli import main
from aegis_mw.sinks import SQLiteSink

from .test_prometheus_rules import run_promtool
from .timeline import START, ratio

SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ="  # base64 of 24 bytes
URL_TOKEN = "T0KEN-in-the-url-path"


@pytest.fixture(autouse=True)
def no_aegis_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings come from each test alone, not from the machine's AEGIS_* variables."""
    for name in list(os.environ):
        if name.startswith("AEGIS_"):
            monkeypatch.delenv(name)


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AEGIS_")}
    return {**environ, **extra}


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A SQLite file whose store holds one alert firing, one pending, one
    without data, their transitions, and the firing's notice to a channel."""
    path = tmp_path / "aegis.db"
    sink = SQLiteSink(str(path))
    store = sink.alert_store()
    rules = [
        AlertRule(name="errors", input="error_ratio", operator=">", threshold=0.05,
                  severity="critical", annotations={"summary": "$value_percent fail"}),
        AlertRule(name="slow_errors", input="error_ratio", operator=">", threshold=0.05,
                  for_="5m"),
        AlertRule(name="quiet", input="error_ratio", operator=">", threshold=0.05),
    ]  # fmt: skip
    figures = {
        "errors": ratio(rules[0], 0.5),
        "slow_errors": ratio(rules[1], 0.25),
        "quiet": ratio(rules[2], None),
    }
    result = evaluate(rules, {}, figures, START, 20)
    token = store.claim("cli-test", START, 15)
    changed, removed = changes_between({}, result.instances)
    channels = {"ops": WebhookChannel("ops", "http://127.0.0.1:9/hook", allow_private=True)}
    notices = notices_for(result.transitions, channels)
    assert store.commit("cli-test", token, changed, removed, result.transitions, START + 15,
                        notices)  # fmt: skip
    sink.close()
    return path


def test_list_as_json_and_as_a_table(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{database}"
    assert main(["alerts", "list", "--db", url, "--json"]) == 0
    alerts = json.loads(capsys.readouterr().out)["alerts"]
    assert [(a["rule"], a["state"]) for a in alerts] == [
        ("errors", "firing"), ("slow_errors", "pending"), ("quiet", "nodata"),
    ]  # fmt: skip
    firing = alerts[0]
    assert firing["value"] == 0.5 and firing["since"] == START and firing["episode"]
    assert alerts[1]["since"] == START and alerts[2]["value"] is None

    assert main(["alerts", "list", "--db", str(database)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["state", "rule", "group", "value", "since", "flapping"]
    assert [line.split()[:2] for line in lines[2:]] == [
        ["firing", "errors"], ["pending", "slow_errors"], ["nodata", "quiet"],
    ]  # fmt: skip


def test_history_as_json_and_as_tables(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{database}"
    assert main(["alerts", "history", "--db", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    sink = SQLiteSink(str(database))
    store = sink.alert_store()
    assert data == {"transitions": store.history(50), "notices": store.notices(50)}
    sink.close()
    assert {(t["rule"], t["kind"]) for t in data["transitions"]} == {
        ("errors", "firing"), ("slow_errors", "pending"), ("quiet", "nodata"),
    }  # fmt: skip
    assert [(n["channel"], n["state"]) for n in data["notices"]] == [("ops", "pending")]

    assert main(["alerts", "history", "--db", url, "--limit", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["transitions"]) == 1

    assert main(["alerts", "history", "--db", url]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Transitions\n")
    assert "inactive -> firing" in text and "\nNotices\n" in text
    notices = text[text.index("\nNotices\n") :].splitlines()
    assert notices[3].split()[:2] == ["created", "channel"]
    assert notices[5].split()[1:4] == ["ops", "pending", "0"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["list", "--db", "missing.db"], "an existing database file"),
        (["history", "--db", "no/such/dir/aegis.db"], "does not exist"),
        (["list", "--db", "jsonl:///x.jsonl"], "a sink that keeps history"),
    ],
)
def test_a_database_that_is_not_there_is_an_error_and_creates_nothing(
    arguments: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["alerts", *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert list(tmp_path.iterdir()) == []


def test_the_command_in_a_process_of_its_own(database: Path) -> None:
    script = Path(sys.executable).with_name("aegis-mw")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "aegis_mw.cli"]
    for runner in (command, [sys.executable, "-m", "aegis_mw.cli"]):
        done = subprocess.run(
            [*runner, "alerts", "list", "--db", f"sqlite:///{database}", "--json"],
            capture_output=True, text=True, timeout=60, check=False, env=clean_environ(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert [a["state"] for a in json.loads(done.stdout)["alerts"]] == [
            "firing", "pending", "nodata",
        ]  # fmt: skip


# -- alerts test ------------------------------------------------------------------------
def settings_file(tmp_path: Path, url: str, **extra: Any) -> Path:
    channel = {"type": "webhook", "url": url, "secret": "env:CLI_TEST_SECRET",
               "allow_private": True, **extra}  # fmt: skip
    lines = ["[aegis.alert_channels.ops]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in channel.items()]
    lines += ["", "[aegis.alert_channels.team]", 'type = "slack"',
              'url = "https://hooks.example.com/services/x"']  # fmt: skip
    path = tmp_path / "aegis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_test_notice_is_delivered(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("CLI_TEST_SECRET", SECRET)
    httpserver.expect_request(f"/hook/{URL_TOKEN}", method="POST").respond_with_data("ok")
    config = settings_file(tmp_path, httpserver.url_for(f"/hook/{URL_TOKEN}"))
    assert main(["alerts", "test", "ops", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "delivered\n"
    (request, _), = httpserver.log  # fmt: skip
    body = json.loads(request.get_data())
    assert body["alerts"][0]["labels"]["alertname"] == "aegis_test"
    assert body["aegis"]["kind"] == "test" and body["receiver"] == "ops"
    assert "test notice" in body["commonAnnotations"]["summary"].lower()
    assert request.headers["webhook-signature"].startswith("v1,")


def test_the_settings_come_from_aegis_config_and_the_environment(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    httpserver.expect_request("/env-hook").respond_with_data("ok")
    channels = {"pager": {"type": "webhook", "url": httpserver.url_for("/env-hook"),
                          "allow_private": True}}  # fmt: skip
    monkeypatch.setenv("AEGIS_ALERT_CHANNELS", json.dumps(channels))
    assert main(["alerts", "test", "pager"]) == 0
    assert capsys.readouterr().out == "delivered\n"
    # AEGIS_CONFIG's channels, overridden by the variable as the app would.
    monkeypatch.setenv("CLI_TEST_SECRET", SECRET)
    monkeypatch.setenv("AEGIS_CONFIG", str(settings_file(tmp_path, "http://127.0.0.1:9/")))
    assert main(["alerts", "test", "ops"]) == 2
    assert "configured: pager" in capsys.readouterr().err


def test_a_refused_test_notice_fails_without_showing_the_answer_or_a_secret(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("CLI_TEST_SECRET", SECRET)
    httpserver.expect_request(f"/hook/{URL_TOKEN}").respond_with_data(
        "internal detail: database password hunter2", status=500
    )
    config = settings_file(tmp_path, httpserver.url_for(f"/hook/{URL_TOKEN}"))
    assert main(["alerts", "test", "ops", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "failed: the webhook answered 500\n"
    for shown in (captured.out, captured.err):
        assert "hunter2" not in shown and URL_TOKEN not in shown and SECRET not in shown


def test_an_unreachable_receiver_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.servers import free_port

    monkeypatch.setenv("CLI_TEST_SECRET", SECRET)
    config = settings_file(tmp_path, f"http://127.0.0.1:{free_port()}/hook/{URL_TOKEN}",
                           timeout=5)  # fmt: skip
    assert main(["alerts", "test", "ops", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("failed: the webhook could not be reached") and URL_TOKEN not in out


def test_an_unknown_channel_names_the_configured_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLI_TEST_SECRET", SECRET)
    config = settings_file(tmp_path, f"http://127.0.0.1:9/hook/{URL_TOKEN}")
    assert main(["alerts", "test", "opps", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'opps'" in captured.err and "configured: ops, team" in captured.err
    assert URL_TOKEN not in captured.err and SECRET not in captured.err
    assert main(["alerts", "test", "ops", "--config", str(tmp_path / "none.toml")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_a_missing_secret_is_an_error_that_does_not_show_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings_file(tmp_path, f"http://127.0.0.1:9/hook/{URL_TOKEN}")
    assert main(["alerts", "test", "ops", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "CLI_TEST_SECRET" in err and URL_TOKEN not in err


# -- alerts export ---------------------------------------------------------------------
RULES_TOML = """\
[aegis]
metrics_namespace = "shop"

[[aegis.alert_rules]]
name = "checkout_errors"
input = "error_ratio"
operator = ">"
threshold = 0.05
window = "5m"
for = "2m"
route = "/checkout"
severity = "critical"
labels = { team = "web" }
annotations = { summary = "$route fails $value_percent of requests" }

[[aegis.alert_rules]]
name = "slow_routes"
input = "latency_p99_ms"
operator = ">"
threshold = 800
window = "15m"
group_by = ["route"]
"""


def test_export_is_checked_and_tested_by_promtool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(RULES_TOML)
    out = tmp_path / "rules" / "aegis.rules.yml"
    out.parent.mkdir()
    tests = tmp_path / "aegis.rules.test.yml"
    assert main(["alerts", "export", "--prometheus-rules", "--config", str(config),
                 "-o", str(out), "--tests", str(tests)]) == 0  # fmt: skip
    assert "wrote 2 rule(s)" in capsys.readouterr().err
    text = out.read_text()
    assert "shop_http_requests_total" in text and "aegis_http" not in text
    checked = run_promtool("check", "rules", str(out), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 2 rules found" in checked.stdout
    # The test file names the rule file relative to itself: run from anywhere.
    assert 'rule_files: ["rules/aegis.rules.yml"]' in tests.read_text()
    tested = run_promtool("test", "rules", str(tests), cwd=out.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr

    assert main(["alerts", "export", "--prometheus-rules", "--config", str(config)]) == 0
    assert capsys.readouterr().out == text


def test_export_in_a_process_of_its_own(tmp_path: Path) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(RULES_TOML)
    done = subprocess.run(
        [sys.executable, "-m", "aegis_mw.cli", "alerts", "export", "--prometheus-rules"],
        capture_output=True, text=True, timeout=60, check=False,
        env=clean_environ(AEGIS_CONFIG=str(config)), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (tmp_path / "rules.yml").write_text(done.stdout)
    checked = run_promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["export"], "--prometheus-rules"),
        (["export", "--prometheus-rules", "--tests", "t.yml"], "--tests needs -o"),
    ],
)
def test_export_usage_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["alerts", *arguments])
    except SystemExit as exited:
        code = int(exited.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_bad_rule_in_the_settings_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(RULES_TOML.replace("threshold = 0.05", "threshold = 5"))
    assert main(["alerts", "export", "--prometheus-rules", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "checkout_errors" in err and "threshold" in err


def test_a_channel_written_through_the_api_is_tested_from_the_store(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Not in the settings: read from the store of the settings' sink and
    built as the app builds it (its networks, its env: references)."""
    from aegis_mw.alerts.store import CHANNEL
    from tests.history.dataset import open_sink

    database = tmp_path / "aegis.db"
    sink = open_sink("sqlite", None, tmp_path)
    hook = {"type": "webhook", "url": httpserver.url_for(f"/hook/{URL_TOKEN}"),
            "secret": "env:ALERT_SECRET_CLI"}  # fmt: skip
    sink.alert_store().put_item(CHANNEL, "api-ops", hook, "test", 0.0, 10)
    sink.close()
    monkeypatch.setenv("ALERT_SECRET_CLI", SECRET)
    monkeypatch.setenv("AEGIS_SINK", f"sqlite:///{database}")
    httpserver.expect_request(f"/hook/{URL_TOKEN}", method="POST").respond_with_data("ok")
    # Its address is the host's own: refused unless alert_api_networks lets it.
    assert main(["alerts", "test", "api-ops"]) == 1
    assert "resolves to a loopback address" in capsys.readouterr().out
    monkeypatch.setenv("AEGIS_ALERT_API_NETWORKS", "127.0.0.1/32,::1/128")
    assert main(["alerts", "test", "api-ops"]) == 0
    assert capsys.readouterr().out == "delivered\n"
    (request, _), = httpserver.log  # fmt: skip
    assert request.headers["webhook-signature"].startswith("v1,")
    assert main(["alerts", "test", "nope"]) == 2
    assert "through the API: api-ops" in capsys.readouterr().err

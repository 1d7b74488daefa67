"""The dry run (``aegis-mw alerts dry-run``): rules replayed over a known
traffic history in real SQLite and PostgreSQL stores, held to what the live
evaluation gives over the same rollups at the same times."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.dry_run import (
    MAX_SPAN,
    MAX_STEPS,
    Period,
    evaluation_times,
    replay,
)
from aegis_mw.alerts.evaluator import FIRING, Instance, Key, Transition, evaluate
from aegis_mw.alerts.figures import SETTLE_SECONDS, collect
from aegis_mw.alerts.service import AlertService
from aegis_mw.alerts.sliding import SlidingFigures
from aegis_mw.cli import main
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import RollupDelta
from aegis_mw.sinks import MemorySink, SQLiteSink, build_sink

from .timeline import START

STEP = 10.0
#: The history: /ok always fine, /bad failing half its requests from FAIL_FROM
#: to FAIL_TO, and no request at all from QUIET_FROM to QUIET_TO.
FAIL_FROM, FAIL_TO = START + 1200, START + 1800
QUIET_FROM, QUIET_TO = START + 2400, START + 2700
END = START + 3600
ROUTES = ("/ok", "/bad")
#: The CLI's settle: the default flush_interval after SETTLE_SECONDS.
CLI_SETTLE = SETTLE_SECONDS + 1.0


def errors(name: str, **fields: Any) -> AlertRule:
    base: dict[str, Any] = {
        "input": "error_ratio", "operator": ">", "threshold": 0.1, "window": "1m",
        "group_by": ("route",), "min_requests": 5,
    }  # fmt: skip
    return AlertRule(name=name, **{**base, **fields})


PLAIN = errors("plain")
HELD = errors("held", for_="2m")
KEPT = errors("kept", keep_firing_for="3m")
#: One instance (no group_by): it has data only while /bad is served.
BAD_ONLY = errors("bad_only", group_by=(), route="/bad")
RULES = (PLAIN, HELD, KEPT, BAD_ONLY)


@pytest.fixture(autouse=True)
def no_aegis_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings come from each test alone, not from the machine's AEGIS_* variables."""
    for name in list(os.environ):
        if name.startswith("AEGIS_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A real sink holding the history, and the --db URL that opens it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'aegis.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    sink = build_sink(url)
    history(sink)
    yield sink, url
    sink.close()


def history(sink: Any, seed: int = 3) -> None:
    """10 requests a route every 5 s from START to END but the quiet span;
    half of /bad's fail from FAIL_FROM to FAIL_TO. Latencies vary (a latency
    rule sees more than one bucket), written a few minutes a batch."""
    chance = random.Random(seed)
    for chunk in range(int(START), int(END), 600):
        delta = RollupDelta()
        for at in range(chunk, chunk + 600, 5):
            if QUIET_FROM <= at < QUIET_TO:
                continue
            for route in ROUTES:
                failing = route == "/bad" and FAIL_FROM <= at < FAIL_TO
                for n in range(10):
                    status = 500 if failing and n < 5 else (404 if n == 9 else 200)
                    method = "POST" if n == 8 else "GET"
                    duration = chance.lognormvariate(2.0, 0.8)
                    delta.add(at, route, method, status, duration, status >= 500, 0, 10)
        delta.delta_id = f"history-{chunk}"
        sink.write(Batch(requests=[], rollups=delta))


def by_hand(
    sink: Any, rules: Sequence[AlertRule], times: Sequence[float], step: float, settle: float
) -> tuple[list[Transition], dict[str, list[Period]], dict[Key, Instance]]:
    """The live evaluation over the same rollups at the same times: collect
    (a full read, no running sums) and evaluate, the instances carried; the
    firing periods per rule from the instances' states."""
    instances: dict[Key, Instance] = {}
    transitions: list[Transition] = []
    periods: dict[str, list[Period]] = {rule.name: [] for rule in rules}
    opened: dict[Key, float] = {}
    for now in times:
        result = evaluate(rules, instances, collect(sink, rules, now, settle), now, 2 * step)
        assert all(not problem for problem in result.health.values())
        transitions += result.transitions
        for key in list(opened):
            instance = result.instances.get(key)
            if instance is None or instance.state != FIRING:
                periods[key[0]].append(Period(key[1], opened.pop(key), now))
        for key, instance in result.instances.items():
            if instance.state == FIRING and key not in opened:
                opened[key] = now
        instances = result.instances
    for key, since in opened.items():
        periods[key[0]].append(Period(key[1], since, None))
    return (
        transitions,
        {k: sorted(v, key=lambda p: (p.start, p.group)) for k, v in periods.items()},
        instances,
    )


def test_the_replay_is_the_live_evaluation(store: tuple[Any, str]) -> None:
    sink, _ = store
    times = evaluation_times(START, END, STEP)
    replays = {r.rule.name: r for r in replay(sink, RULES, start=START, end=END, step=STEP)}
    transitions, live, instances = by_hand(sink, RULES, times, STEP, SETTLE_SECONDS)
    for rule in RULES:
        assert list(replays[rule.name].transitions) == [
            t for t in transitions if t.rule == rule.name
        ]
        assert replays[rule.name].health == "" and replays[rule.name].failed == 0
    firing = {name: list(r.periods) for name, r in replays.items()}
    assert firing == live

    bad = (("route", "/bad"),)
    # /bad fails half its requests from FAIL_FROM; the 1 m window read at
    # now ends at the 5 s bucket 10 s (settle) before: at FAIL_FROM + 30 it
    # holds 4 failing buckets of 12 (17 % > 10 %), at + 20 only 2 (8 %). It
    # clears as the last but 2 failing buckets leave: at FAIL_TO + 60.
    [plain] = firing["plain"]
    assert (plain.group, plain.start, plain.end) == (bad, FAIL_FROM + 30, FAIL_TO + 60)
    # for delays the start by exactly 2 minutes of ticks; keep_firing_for the
    # end by 3; neither moves the other end.
    [held] = firing["held"]
    assert (held.group, held.start, held.end) == (bad, plain.start + 120, plain.end)
    [kept] = firing["kept"]
    assert (kept.group, kept.start, kept.end) == (bad, plain.start, plain.end + 180)
    assert firing["bad_only"] == [Period((), plain.start, plain.end)]
    # /ok never fired; at the end nothing fires, /ok and /bad are inactive.
    assert [(g.group, g.state) for g in replays["plain"].now] == [
        ((("route", "/bad"),), "inactive"), ((("route", "/ok"),), "inactive"),
    ]  # fmt: skip
    assert {k: i.state for k, i in instances.items()} == {
        (r.rule.name, g.group): g.state for r in replays.values() for g in r.now
    }


def test_a_no_data_window(store: tuple[Any, str]) -> None:
    """No request from QUIET_FROM to QUIET_TO: the instances go to nodata
    and back, as live; a rule firing through it stays firing (silence is no
    proof of recovery), one with no_data="ok" resolves."""
    sink, _ = store
    firing_quiet = errors("firing_quiet", input="request_rate", operator=">", threshold=0.5,
                          group_by=())  # fmt: skip
    resolving = errors("resolving", input="status_2xx_ratio", operator=">", threshold=0.5,
                       group_by=(), no_data="ok")  # fmt: skip
    steady = errors("steady", input="status_2xx_ratio", operator=">", threshold=0.5, group_by=())
    rules = (firing_quiet, resolving, steady, BAD_ONLY)
    start = QUIET_FROM - 300  # after /bad's failures: every instance starts clear
    times = evaluation_times(start, END, STEP)
    replays = {r.rule.name: r for r in replay(sink, rules, start=start, end=END, step=STEP)}
    transitions, live, _ = by_hand(sink, rules, times, STEP, SETTLE_SECONDS)
    assert [t for r in replays.values() for t in r.transitions] == sorted(
        transitions, key=lambda t: [rule.name for rule in rules].index(t.rule)
    )
    assert {name: list(r.periods) for name, r in replays.items()} == live
    kinds = {name: [(t.kind, t.at) for t in r.transitions] for name, r in replays.items()}
    # An inactive instance waits out the quiet span in nodata.
    quiet = [at for kind, at in kinds["bad_only"] if kind == "nodata"]
    back = [at for kind, at in kinds["bad_only"] if kind == "inactive"]
    assert len(quiet) == 1 and QUIET_FROM + SETTLE_SECONDS < quiet[0] < QUIET_FROM + 90
    assert len(back) == 1 and QUIET_TO < back[0] < QUIET_TO + 90
    # A firing one fired at once, and stayed firing through no data.
    assert replays["steady"].periods == (Period((), start, None),)
    assert kinds["steady"] == [("firing", start)]
    # request_rate is data at any count: it resolves as the rate drops to 0.
    [dropped] = replays["firing_quiet"].periods[:1]
    assert dropped.start == start and QUIET_FROM < (dropped.end or 0) < QUIET_FROM + 90
    [first, second] = replays["resolving"].periods
    assert first.end == quiet[0] and second.start == back[0] and second.end is None
    assert [(g.state, g.value) for g in replays["steady"].now] == [("firing", 0.9)]
    assert replays["steady"].firing_now and not replays["bad_only"].firing_now


def test_the_running_sums_are_collects_figures(store: tuple[Any, str]) -> None:
    """SlidingFigures at irregular forward times (a jump past a window too)
    gives what collect reads afresh, for every kind of rule."""
    sink, _ = store
    rules = [
        *RULES,
        errors("p99", input="latency_p99_ms", operator=">", threshold=20, window="15m"),
        errors("methods", group_by=("route", "method"), window="5m"),
        errors("filtered", group_by=("method",), route="/bad", method="POST"),
        errors("totals", input="request_rate", operator=">", threshold=1, group_by=()),
        errors("hourly", input="status_4xx_ratio", window="1h", group_by=("route",)),
    ]
    figures = SlidingFigures(sink, rules, SETTLE_SECONDS)
    chance = random.Random(5)
    now = START - 120
    while now < END + 60:
        assert figures.collect(now) == collect(sink, rules, now, SETTLE_SECONDS), now
        now += chance.choice((0, 1, 5, 7, 10, 60, 333)) if now < START + 3000 else 1000


def test_the_replay_agrees_with_a_ticking_alert_service(store: tuple[Any, str]) -> None:
    """The service the app runs, ticked at the replay's times over the same
    store, records the same transitions."""
    sink, _ = store
    start, end = FAIL_FROM - 300, FAIL_TO + 600
    wall_now = [start]
    service = AlertService(
        RULES, sink.alert_store(), sink, interval=STEP, wall=lambda: wall_now[0],
        settle=SETTLE_SECONDS,
    )  # fmt: skip
    for now in evaluation_times(start, end, STEP):
        wall_now[0] = now
        service.tick()
        assert service.token is not None
    recorded = [
        (row["rule"], dict(row["group"]), row["kind"], row["at"], row["value"])
        for row in sink.alert_store().history(1000)[::-1]
    ]
    replays = replay(sink, RULES, start=start, end=end, step=STEP)
    replayed = sorted(
        ((t.rule, dict(t.group), t.kind, t.at, t.value) for r in replays for t in r.transitions),
        key=lambda t: t[3],
    )
    assert sorted(recorded, key=lambda t: t[3]) == replayed
    assert any(kind == FIRING for _, _, kind, _, _ in recorded)


# -- bounds -----------------------------------------------------------------------------
def test_the_times_evaluated() -> None:
    assert evaluation_times(100, 130, 10) == [100, 110, 120, 130]
    assert evaluation_times(100, 125, 10) == [100, 110, 120, 125]  # the end always
    assert evaluation_times(100, 100, 10) == [100]
    assert len(evaluation_times(0, MAX_SPAN, 60)) == 10_081
    assert len(evaluation_times(0, (MAX_STEPS - 1) * 10.0, 10)) == MAX_STEPS


@pytest.mark.parametrize(
    ("start", "end", "step", "message"),
    [
        (0, MAX_SPAN + 1, 3600, "at most 7 days"),
        (0, MAX_STEPS * 10.0, 10, f"at most {MAX_STEPS} evaluations"),
        (0, (MAX_STEPS - 1) * 10.0 + 5, 10, f"at most {MAX_STEPS} evaluations, not 20001"),
        (0, 86400, 0, "more than 0 seconds"),
        (100, 0, 10, "end must not be before start"),
        (0, float("inf"), 10, "finite"),
    ],
)
def test_the_bounds_are_refused(start: float, end: float, step: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluation_times(start, end, step)
    with pytest.raises(ValueError, match=message):
        replay(MemorySink(), [PLAIN], start=start, end=end, step=step)


def test_two_rules_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="same name"):
        replay(MemorySink(), [PLAIN, PLAIN], start=0, end=60, step=10)


def test_a_state_input_is_not_replayed() -> None:
    rule = AlertRule(name="down", input="channel_disabled", operator=">", threshold=0)
    [result] = replay(MemorySink(), [rule], start=START, end=START + 60, step=10)
    assert "not replayed" in result.health and result.now == () and result.periods == ()


# -- the command ------------------------------------------------------------------------
RULES_TOML = """\
[[aegis.alert_rules]]
name = "held"
input = "error_ratio"
operator = ">"
threshold = 0.1
window = "1m"
for = "2m"
group_by = ["route"]
min_requests = 5

[[aegis.alert_rules]]
name = "ok_latency"
input = "latency_p50_ms"
operator = ">"
threshold = 10000
window = "5m"
"""


def command(url: str, *extra: str, end: float = FAIL_TO) -> list[str]:
    return ["alerts", "dry-run", "--db", url, "--hours", "1", "--step", "10s",
            "--end", str(end), *extra]  # fmt: skip


def test_the_json_output(
    store: tuple[Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink, url = store
    config = tmp_path / "aegis.toml"
    config.write_text(RULES_TOML)
    assert main(command(url, "--config", str(config), "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"from", "to", "step", "evaluations", "rules"}
    assert (data["from"], data["to"], data["step"]) == (FAIL_TO - 3600, FAIL_TO, 10.0)
    assert data["evaluations"] == 361
    held, latency = data["rules"]
    assert set(held) == {
        "rule", "would_fire_now", "now", "periods", "transitions", "health",
        "failed_evaluations",
    }  # fmt: skip
    assert (held["rule"], latency["rule"]) == ("held", "ok_latency")
    # What the library gives with the app's settle (flush_interval after it).
    rule = errors("held", for_="2m")
    [expected] = replay(sink, [rule], start=FAIL_TO - 3600, end=FAIL_TO, step=10, settle=CLI_SETTLE)
    assert held == json.loads(json.dumps(expected.to_mapping()))
    assert held["would_fire_now"] is True and held["health"] == ""
    assert held["now"][0] == {
        "group": {"route": "/bad"}, "state": "firing", "value": 0.5,
        "since": held["periods"][0]["from"],
    }  # fmt: skip
    assert held["periods"] == [
        {"group": {"route": "/bad"}, "from": held["periods"][0]["from"], "to": None}
    ]
    assert held["transitions"][-1] == {
        "at": held["periods"][0]["from"], "group": {"route": "/bad"}, "kind": "firing",
        "from_state": "pending", "to_state": "firing", "value": 0.5,
    }  # fmt: skip
    assert latency["would_fire_now"] is False and latency["periods"] == []
    assert latency["now"][0]["state"] == "inactive" and latency["now"][0]["value"] > 0


def test_the_tables(
    store: tuple[Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = store
    config = tmp_path / "aegis.toml"
    config.write_text(RULES_TOML)
    assert main(command(url, "--config", str(config), end=END)) == 0
    text = capsys.readouterr().out
    held = text[text.index("\nheld:") : text.index("\nok_latency:")]
    lines = held.strip().splitlines()
    assert lines[0] == "held: error_ratio > 0.1 over 60 s, for 120 s"
    assert lines[1] == "  would fire now: no"
    assert lines[2].split() == ["group", "from", "to", "lasted"]
    [period] = lines[4:]
    # From FAIL_FROM + 150 (30 s, then for) to FAIL_TO + 70 (the app's settle
    # is 11 s: the window clears a tick later than with 10).
    assert period.split()[0] == "route=/bad" and period.split()[-1] == "8m40s"
    assert "ok_latency: latency_p50_ms > 10000 over 300 s\n  would fire now: no (" in text
    assert "no firing periods" in text
    # Only the rule named, from the same settings.
    assert main(command(url, "--config", str(config), "--rule", "ok_latency", end=END)) == 0
    text = capsys.readouterr().out
    assert "ok_latency:" in text and "held:" not in text


def empty_database(tmp_path: Path) -> Path:
    """A SQLite file with the tables and one bucket of traffic."""
    database = tmp_path / "aegis.db"
    sink = SQLiteSink(str(database))
    delta = RollupDelta()
    delta.add(START, "/ok", "GET", 200, 1.0, False, 0, 10)
    delta.delta_id = "one"
    sink.write(Batch(requests=[], rollups=delta))
    sink.close()
    return database


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ('{"name": "x", "input": "error_ratio", "operator": "=>", "threshold": 0.1}', "operator"),
        ('{"name": "x", "input": "error_ratio", "operator": ">", "threshold": 5}', "threshold"),
        ('{"name": "x", "input": "error_ratio", "operator": ">", "treshold": 0.1}', "treshold"),
        (
            '{"name": "x", "input": "error_ratio", "operator": ">", "threshold": 0.1, '
            '"window": "25h"}',
            "window",
        ),
        (
            '[{"name": "x", "input": "error_rate", "operator": ">", "threshold": 1}, '
            '{"name": "x", "input": "error_rate", "operator": ">", "threshold": 2}]',
            "name",
        ),
    ],
)
def test_a_bad_rule_json_is_named(
    rule: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = empty_database(tmp_path)
    assert main(command(str(database), "--rule-json", rule)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("aegis-mw: error: alert rule 'x': ")
    assert f": {named} = " in captured.err or f"{named!r}" in captured.err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rule-json", "{not json"], "--rule-json is not JSON"),
        (["--hours", "169"], "at most 7 days"),
        (["--hours", "6", "--step", "1s"], "at most 20000 evaluations, not 21601"),
        (["--rule", "nope"], "no rule 'nope' in alert_rules; configured: none"),
        ([], "no alert rules to replay"),
    ],
)
def test_usage_errors_exit_2(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = empty_database(tmp_path)
    rule = '{"name": "x", "input": "error_rate", "operator": ">", "threshold": 1}'
    given = arguments if arguments[:1] in (["--rule-json"], ["--rule"], []) else [
        "--rule-json", rule, *arguments]  # fmt: skip
    argv = ["alerts", "dry-run", "--db", str(database), "--end", str(END), *given]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


def test_a_missing_database_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rule = '{"name": "x", "input": "error_rate", "operator": ">", "threshold": 1}'
    assert main(command(str(tmp_path / "none.db"), "--rule-json", rule)) == 2
    assert "an existing database file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_command_in_a_process_of_its_own(tmp_path: Path) -> None:
    database = tmp_path / "aegis.db"
    sink = SQLiteSink(str(database))
    history(sink)
    sink.close()
    rule = json.dumps(PLAIN.to_mapping())
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AEGIS_")}
    done = subprocess.run(
        [sys.executable, "-m", "aegis_mw.cli", *command(f"sqlite:///{database}", "--json",
                                                         "--rule-json", rule)],
        capture_output=True, text=True, timeout=120, check=False, env=environ, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [plain] = json.loads(done.stdout)["rules"]
    assert plain["rule"] == "plain" and plain["would_fire_now"] is True
    assert [p["group"] for p in plain["periods"]] == [{"route": "/bad"}]

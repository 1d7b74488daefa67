"""Bounds on what one read of the app's own metrics' stored history may cost,
with the limits made small (monkeypatched where they are looked up at call
time) so that both sides of each bound are cheap to reach, on memory, a
SQLite file and the real PostgreSQL:

- ``{api_path}/custom-metric-history`` (ASGI and WSGI) reads at most
  ``custom_series.MAX_ROWS`` stored rows across the range's segments, each
  read with a LIMIT of what is left plus one: exactly at the bound it
  answers, one row past it is a 400 (``too_many_rows``, naming ``range``);
  ``aegis-mw query custom-metric-history`` likewise exits 2 with one line;
- an alert rule over a custom input reads at most
  ``custom_inputs.MAX_RULE_ROWS`` rows per evaluation, else its figures are
  a CustomInputError naming the bound (its health), the other rules read all
  the same; a dry run shares ``dry_run.DRY_RUN_CUSTOM_ROWS`` between its
  steps, stops reading once it is spent and says so in the rule's health,
  and still replays the other rules;
- a custom rule's ``group_by`` may not name an alert's own labels (the API
  refuses ``channel`` with a 400 naming ``group_by``);
- a figure past a float's range is null in the JSON answer (never Infinity
  or NaN, on a store that keeps an overflowed sum or one that refuses it),
  and an alert value that is not finite is no data."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
import httpx
import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.alerts import AlertRule, RuleError, collect, custom_inputs, dry_run, rule_from_mapping
from aegis_mw.alerts.custom_inputs import CustomInputError
from aegis_mw.alerts.dry_run import replay
from aegis_mw.alerts.figures import Collected
from aegis_mw.alerts.sliding import SlidingFigures
from aegis_mw.cli import main
from aegis_mw.core.custom_history import CustomRow
from aegis_mw.history import custom_series
from aegis_mw.testing import FakeClock
from tests.alerts.test_custom_inputs import T0 as RULE_T0
from tests.alerts.test_custom_inputs import Recording, alert_service, custom, values_of
from tests.api_apps import (
    ACCESS,
    API,
    EDITOR,
    VIEWER,
    assert_bad_field,
    assert_bad_parameter,
    bearer,
    seconds,
    serving,
)
from tests.endpoints.test_api import client, starlette_app
from tests.endpoints.test_custom_metric_history import T0, HistoryServed, at, conforms

Serve = Callable[..., Awaitable[HistoryServed]]
serve = serving(HistoryServed)

#: The names a custom rule's group_by may not take: the alert's own labels
#: and what annotations fill in.
ALERT_LABELS = ("alertname", "severity", "channel", "value", "value_percent", "threshold", "rule")


def refuse_constant(text: str) -> Any:
    """``json.loads``' parse_constant: Infinity, -Infinity and NaN are not JSON."""
    raise AssertionError(f"{text} in a JSON answer")


def strict_json(text: str) -> Any:
    return json.loads(text, parse_constant=refuse_constant)


class ReadSpy:
    """A store's ``read_custom_rollups``, recording each read: (resolution,
    start and end from ``origin``, the limit asked, the rows answered)."""

    def __init__(self, read: Callable[..., list[CustomRow]], origin: float) -> None:
        self.read = read
        self.origin = origin
        self.calls: list[tuple[int, float, float, int, int]] = []

    def __call__(
        self, metric: str, resolution: int, start: int, end: int, limit: int = 2**62
    ) -> list[CustomRow]:
        rows = self.read(metric, resolution, start, end, limit)
        assert len(rows) <= limit, (metric, resolution, limit, len(rows))
        self.calls.append((resolution, start - self.origin, end - self.origin, limit, len(rows)))
        return rows

    def take(self) -> list[tuple[int, float, float, int, int]]:
        calls, self.calls = self.calls, []
        return calls


# -- the chart's bound: custom-metric-history ------------------------------------------

#: Where the counter ``orders`` (label ``shop``) changes, by offset from T0:
#: (offset, label set prefix, how many label sets), each label set once (an
#: increase of 1). A range from T0 - 86400 reads three segments: the
#: 5-minute resolution before T0 (the bucket T0 - 300: 20 rows), the minutes
#: from T0 to T0 + 120 (the minute T0: 20 rows), then the 5-second buckets
#: (T0 + 120: 10 rows, T0 + 125: 1 row).
PLACES = ((-295, "a", 20), (5, "b", 20), (120, "c", 10), (125, "d", 1))
DAY_AGO = -86_400
SEGMENTS_TO_125 = [(300, DAY_AGO, 0), (60, 0, 120), (5, 120, 125)]
SEGMENTS_TO_130 = [(300, DAY_AGO, 0), (60, 0, 120), (5, 120, 130)]
SEGMENTS_NAMED_24H = [(300, DAY_AGO, 0), (60, 0, 120), (5, 120, 135)]


async def record_shops(served: HistoryServed) -> None:
    """PLACES, sampled through the app; the clock then stands at T0 + 130."""
    orders = served.aegis.counter("orders_total", "Orders placed.", ("shop",))
    for offset, prefix, count in PLACES:
        for index in range(count):
            orders.labels(f"{prefix}{index:02}").inc()
        await served.sample_at(offset)
    served.clock.advance(5)


def expected_reads(
    segments: list[tuple[int, int, int]], rows: list[int], max_rows: int
) -> tuple[list[tuple[int, float, float, int, int]], bool]:
    """The reads a bounded answer makes of ``segments`` holding ``rows``:
    each asks for what is left plus one, and the first that takes more than
    what was left is the last (refused); True when every read fitted."""
    reads: list[tuple[int, float, float, int, int]] = []
    left = max_rows
    for (level, start, end), held in zip(segments, rows, strict=True):
        limit = left + 1
        answered = min(held, limit)
        reads.append((level, float(start), float(end), limit, answered))
        left -= answered
        if left < 0:
            return reads, False
    return reads, True


#: (query, the segments it reads, the rows each holds, MAX_ROWS).
BOUND_CASES: list[tuple[dict[str, str], list[tuple[int, int, int]], list[int], int]] = [
    # 20 + 20 + 10 rows: exactly at the bound answers; a bound one lower refuses.
    ({"from": at(DAY_AGO), "to": at(125)}, SEGMENTS_TO_125, [20, 20, 10], 50),
    ({"from": at(DAY_AGO), "to": at(125)}, SEGMENTS_TO_125, [20, 20, 10], 49),
    # One bucket more holds one row more: 51.
    ({"from": at(DAY_AGO), "to": at(130)}, SEGMENTS_TO_130, [20, 20, 11], 50),
    ({"from": at(DAY_AGO), "to": at(130)}, SEGMENTS_TO_130, [20, 20, 11], 51),
    # A named range alike (24h at T0 + 130 ends at T0 + 135).
    ({"range": "24h"}, SEGMENTS_NAMED_24H, [20, 20, 11], 50),
    ({"range": "24h"}, SEGMENTS_NAMED_24H, [20, 20, 11], 51),
    # One segment: its 20 rows at the bound, and past it.
    ({"from": at(DAY_AGO), "to": at(0)}, [(300, DAY_AGO, 0)], [20], 20),
    ({"from": at(DAY_AGO), "to": at(0)}, [(300, DAY_AGO, 0)], [20], 19),
    # The bound reached in the first segment: one row in the next is too many.
    ({"from": at(DAY_AGO), "to": at(125)}, SEGMENTS_TO_125, [20, 20, 10], 20),
    # Far fewer than stored: the read itself is bounded.
    ({"from": at(DAY_AGO), "to": at(125)}, SEGMENTS_TO_125, [20, 20, 10], 3),
]


@pytest.mark.anyio
async def test_an_answer_reads_at_most_max_rows_across_its_segments(
    history_sink_url: str, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(wall=T0 - 900)
    served = await serve(sink=history_sink_url, clock=clock)
    served.clock = clock
    await record_shops(served)
    guarded: Any = served.aegis.reads.history
    source = guarded.source  # the store the API reads, behind its breaker
    spy = ReadSpy(source.read_custom_rollups, T0)
    monkeypatch.setattr(source, "read_custom_rollups", spy)
    outcomes = []
    for query, segments, rows, max_rows in BOUND_CASES:
        monkeypatch.setattr(custom_series, "MAX_ROWS", max_rows)
        reads, fits = expected_reads(segments, rows, max_rows)
        where = (query, max_rows)
        if fits:
            data = await served.history(name="orders", by="shop", limit=100, **query)
            total = sum(rows)
            assert len(data["series"]) == total and data["left_out"] == 0, where
            increases = [p["increase"] for s in data["series"] for p in s["points"]]
            assert sum(increases) == total and max(increases) == 1, where
        else:
            response = await served.ask(urlencode({"name": "orders", **query}))
            assert_bad_parameter(response, "range")
            error = response.json()["error"]
            assert error["code"] == "too_many_rows", (where, error)
            assert f"more than {max_rows:,} stored changes of orders" in error["message"]
        assert spy.take() == reads, where
        outcomes.append(fits)
    assert outcomes == [True, False, False, True, False, True, True, False, False, False]


# -- the CLI ---------------------------------------------------------------------------


def test_the_cli_exits_2_with_one_line_past_the_bound(
    database_url: str,
    make_aegis: Callable[..., Aegis],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock(wall=T0 - 900)
    aegis = make_aegis(sink=database_url, clock=clock, flush_interval=3600, metrics_registry="none")
    assert aegis.force_flush(10)
    orders = aegis.counter("orders_total", "Orders placed.", ("shop",))
    for offset, prefix, count in PLACES:
        for index in range(count):
            orders.labels(f"{prefix}{index:02}").inc()
        clock.advance(T0 + offset - clock.wall())
        assert aegis.force_flush(10)
    base = ["query", "custom-metric-history", "--db", database_url, "--name", "orders"]
    base += ["--from", at(DAY_AGO)]
    monkeypatch.setattr(custom_series, "MAX_ROWS", 50)
    # Exactly at the bound (20 + 20 + 10 rows): answered.
    assert main([*base, "--to", at(125), "--json"]) == 0
    answer = strict_json(capsys.readouterr().out)
    assert sum(p["increase"] for s in answer["series"] for p in s["points"]) == 50
    assert main([*base, "--to", at(125), "--by", "shop", "--limit", "100"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and "orders (counter)" in printed.out
    # One row past it (the bucket T0 + 125): exit 2, one line, nothing printed.
    for extra in (["--json"], []):
        assert main([*base, "--to", at(130), *extra]) == 2
        printed = capsys.readouterr()
        assert printed.out == ""
        assert printed.err.count("\n") == 1 and printed.err.endswith("\n")
        assert printed.err.startswith("aegis-mw: error: range: the range holds more than 50 ")
        assert "stored changes of orders" in printed.err
    monkeypatch.setattr(custom_series, "MAX_ROWS", 51)
    assert main([*base, "--to", at(130), "--json"]) == 0
    answer = strict_json(capsys.readouterr().out)
    assert sum(p["increase"] for s in answer["series"] for p in s["points"]) == 51


# -- figures past a float's range --------------------------------------------------------


async def sink_rejected(aegis: Aegis) -> int:
    stats = await anyio.to_thread.run_sync(aegis.stats)
    return int(stats.sinks[0].dropped["custom_rollups_rejected"])


async def strict_answer(served: HistoryServed, **params: str) -> dict[str, Any]:
    """The 200 answer's data, parsed refusing Infinity and NaN, as described."""
    response = await served.ask(urlencode(params))
    assert response.status_code == 200, response.text
    body = strict_json(response.text)
    conforms(body["data"], await served.schema())
    data: dict[str, Any] = body["data"]
    return data


def point_at(series: dict[str, Any], offset: float) -> dict[str, Any]:
    [point] = [p for p in series["points"] if seconds(p["timestamp"]) == T0 + offset]
    return {key: value for key, value in point.items() if key != "timestamp"}


@pytest.mark.anyio
async def test_a_sum_past_a_floats_range_is_null_never_infinity(
    history_sink_url: str, serve: Serve
) -> None:
    """A gauge of 1e308 sampled in two 5-second buckets of one minute: the
    stored minute's total overflows to inf (memory, SQLite), or PostgreSQL
    refuses the upsert and the second sample is set aside (counted). Either
    way each answer is JSON, the overflowed average null. Two label sets of
    1e308 and -1e308 make inf + -inf (NaN) once added up; a counter's two
    label sets of 1e308 overflow when the answer adds them (on every store)."""
    clock = FakeClock(wall=T0)
    served = await serve(sink=history_sink_url, clock=clock)
    served.clock = clock
    huge = served.aegis.gauge("huge", "Past a float's range.")
    tilt = served.aegis.gauge("tilt", "Both ways.", ("side",))
    big = served.aegis.counter("big_total", "Big increases.", ("region",))
    huge.set(1e308)
    tilt.labels("up").set(1e308)
    tilt.labels("down").set(-1e308)
    big.labels("eu").inc(1e308)
    big.labels("us").inc(1e308)
    await served.sample_at(5)
    await served.sample_at(10)
    served.clock.advance(110)  # T0 + 120
    rejected = await sink_rejected(served.aegis)
    postgres = history_sink_url.startswith("postgresql")
    # PostgreSQL refuses the minute's (and hour's) overflowing upsert: the
    # three gauge cells of the second sample are set aside, whole.
    assert rejected in ((0, 3) if postgres else (0,))
    kept_one = rejected == 3  # only the first sample of each gauge was stored

    minutes = await strict_answer(served, name="huge", range="1h")
    [series] = minutes["series"]
    assert point_at(series, 0) == {
        "value": 1e308 if kept_one else None,
        "low": 1e308,
        "high": 1e308,
    }
    quarter = await strict_answer(served, name="huge", range="15m")
    [series] = quarter["series"]
    # 15-second points of the 5-second rows: two samples added up overflow.
    assert point_at(series, 0) == {
        "value": 1e308 if kept_one else None,
        "low": 1e308,
        "high": 1e308,
    }
    fine = await strict_answer(served, name="huge", **{"from": at(0), "to": at(60)})
    [series] = fine["series"]
    assert point_at(series, 5) == {"value": 1e308, "low": 1e308, "high": 1e308}
    assert point_at(series, 10) == (
        {"value": None, "low": None, "high": None}
        if kept_one
        else {"value": 1e308, "low": 1e308, "high": 1e308}
    )

    both = await strict_answer(served, name="tilt", range="1h")
    [series] = both["series"]
    assert point_at(series, 0) == {"value": 0.0 if kept_one else None, "low": -1e308, "high": 1e308}
    sides = await strict_answer(served, name="tilt", by="side", range="1h")
    shown = {s["labels"]["side"]: point_at(s, 0)["value"] for s in sides["series"]}
    assert shown == ({"up": 1e308, "down": -1e308} if kept_one else {"up": None, "down": None})

    added = await strict_answer(served, name="big", **{"from": at(0), "to": at(60)})
    [series] = added["series"]
    assert point_at(series, 5) == {"increase": None, "rate": None}
    regions = await strict_answer(served, name="big", by="region", **{"from": at(0), "to": at(60)})
    for one in regions["series"]:
        assert point_at(one, 5) == {"increase": 1e308, "rate": 2e307}


def test_the_cli_prints_json_without_infinity(
    database_url: str, make_aegis: Callable[..., Aegis], capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock(wall=T0)
    aegis = make_aegis(sink=database_url, clock=clock, flush_interval=3600, metrics_registry="none")
    assert aegis.force_flush(10)
    big = aegis.counter("big_total", "Big increases.", ("region",))
    big.labels("eu").inc(1e308)
    big.labels("us").inc(1e308)
    clock.advance(5)
    assert aegis.force_flush(10)
    command = ["query", "custom-metric-history", "--db", database_url, "--name", "big"]
    assert main([*command, "--from", at(0), "--to", at(60), "--json"]) == 0
    answer = strict_json(capsys.readouterr().out)
    [series] = answer["series"]
    assert point_at(series, 5) == {"increase": None, "rate": None}


# -- a rule's bound ----------------------------------------------------------------------

REGIONS = {f"r{index:02}": 1.0 for index in range(10)}


@pytest.fixture
def crowded(history_sink_url: str, make_aegis: Callable[..., Aegis]) -> Recording:
    """orders: ten regions in bucket 0 and in bucket 5, one (r00) in bucket
    10; order_seconds: one observation in bucket 0. A 30 s window at
    RULE_T0 + 22 holds buckets 0 and 5 (20 rows of orders), at + 27 buckets
    0 to 10 (21 rows)."""
    recording = Recording(make_aegis, history_sink_url)
    recording.at(1, REGIONS, {"eu": [0.3]})
    recording.at(6, REGIONS)
    recording.at(11, {"r00": 1})
    return recording


BOUNDED_RULES = [
    custom("all", "custom_increase", "orders_total"),
    custom("by_region", "custom_increase", "orders_total", group_by=("region",)),
    custom("observations", "custom_increase", "order_seconds"),
]
TOO_MANY = (
    "CustomInputError: its window holds more than 20 stored changes of orders "
    "(every label set's): a shorter window reads fewer"
)


def test_a_rules_window_reads_at_most_max_rule_rows(
    crowded: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(custom_inputs, "MAX_RULE_ROWS", 20)
    spy = ReadSpy(crowded.reader.read_custom_rollups, RULE_T0)
    monkeypatch.setattr(crowded.reader, "read_custom_rollups", spy)
    sliding = SlidingFigures(crowded.reader, BOUNDED_RULES)
    # At the bound: 20 rows, read.
    readers: list[Callable[[float], Collected]] = [
        lambda now: collect(crowded.reader, BOUNDED_RULES, now),
        sliding.collect,
    ]
    for read in readers:
        got = values_of(read(RULE_T0 + 22), BOUNDED_RULES)
        assert got["all"] == {(): 20.0}
        assert got["by_region"] == {(("region", r),): 2.0 for r in REGIONS}
        assert got["observations"] == {(): 1.0}
        # Each custom rule asked for one row more than the bound.
        assert spy.take() == [(5, -20, 10, 21, 20), (5, -20, 10, 21, 20), (5, -20, 10, 21, 1)]
    # One row past it: the rules over orders are an error naming the bound,
    # the one over order_seconds is read all the same.
    for read in readers:
        collected = read(RULE_T0 + 27)
        for name in ("all", "by_region"):
            error = collected[name]
            assert isinstance(error, CustomInputError)
        got = values_of(collected, BOUNDED_RULES)
        assert got["all"] == got["by_region"] == TOO_MANY
        assert got["observations"] == {(): 1.0}
        assert spy.take() == [(5, -15, 15, 21, 21), (5, -15, 15, 21, 21), (5, -15, 15, 21, 1)]
    # The alert service shows it as the rule's health.
    service = alert_service(crowded.reader, BOUNDED_RULES, crowded.clock)
    crowded.clock.advance(RULE_T0 + 22 - crowded.clock.wall())
    service.tick()
    assert service.health == dict.fromkeys(("all", "by_region", "observations"), "")
    crowded.clock.advance(5)
    service.tick()
    assert service.health == {"all": TOO_MANY, "by_region": TOO_MANY, "observations": ""}


def test_an_evaluation_reads_at_most_max_evaluation_rows_in_all(
    crowded: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every custom rule reads its whole window at each evaluation: past what
    one evaluation may read in all, the rules after are errors in their
    health (the request rollups' rules are not counted), and the next
    evaluation starts again."""
    monkeypatch.setattr(custom_inputs, "MAX_EVALUATION_ROWS", 21)
    sliding = SlidingFigures(crowded.reader, BOUNDED_RULES)
    for _ in range(2):  # each evaluation has a budget of its own
        collected = sliding.collect(RULE_T0 + 22)
        got = values_of(collected, BOUNDED_RULES[:1])
        assert got["all"] == {(): 20.0}  # 20 rows of 21
        for name in ("by_region", "observations"):
            assert isinstance(collected[name], CustomInputError)
            assert f"CustomInputError: {collected[name]}" == SPENT


def test_the_bound_counts_every_label_set_whatever_match_keeps(
    crowded: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``match`` is applied to the rows read, so it does not bring a window
    under the bound: the health says what does (a shorter window)."""
    monkeypatch.setattr(custom_inputs, "MAX_RULE_ROWS", 20)
    narrow = custom("r00", "custom_increase", "orders_total", match={"region": "r00"})
    # r00 holds 3 of the window's 21 rows.
    [got] = collect(crowded.reader, [narrow], RULE_T0 + 27).values()
    assert isinstance(got, custom_inputs.CustomInputError)
    assert f"{type(got).__name__}: {got}" == TOO_MANY
    monkeypatch.setattr(custom_inputs, "MAX_RULE_ROWS", 21)
    assert values_of(collect(crowded.reader, [narrow], RULE_T0 + 27), [narrow]) == {
        "r00": {(): 3.0}
    }


def test_the_bounds_unpatched(crowded: Recording) -> None:
    """The documented bounds; the window of 21 rows is read under them."""
    assert custom_series.MAX_ROWS == 100_000
    assert custom_inputs.MAX_RULE_ROWS == 100_000
    assert dry_run.DRY_RUN_CUSTOM_ROWS == 300_000
    assert custom_inputs.MAX_EVALUATION_ROWS == 300_000
    rule = custom("all", "custom_increase", "orders_total")
    got = values_of(collect(crowded.reader, [rule], RULE_T0 + 27), [rule])
    assert got == {"all": {(): 21.0}}


# -- a dry run's budget ------------------------------------------------------------------

SURGE = custom("orders_surge", "custom_rate", "orders_total", threshold=0.5)
#: A rule over the request rollups: no traffic is a rate of 0, below 1.
QUIET = AlertRule(name="quiet", input="request_rate", operator="<", threshold=1)
SPENT = (
    "CustomInputError: the rows this evaluation (or replay) may read were all read by the "
    "rules before it: fewer custom rules, or shorter windows (or replay less time)"
)


@pytest.fixture
def steady(history_sink_url: str, make_aegis: Callable[..., Aegis]) -> Recording:
    """Orders in eu and us in every bucket from 0 to 55: a 30 s window holds
    12 rows at RULE_T0 + 50, + 60 and + 70 (the dry run's three steps)."""
    recording = Recording(make_aegis, history_sink_url)
    for second in range(1, 60, 5):  # bounded: 12 steps
        recording.at(second, {"eu": 6, "us": 1})
    return recording


def replay_steady(steady: Recording, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any]:
    spy = ReadSpy(steady.reader.read_custom_rollups, RULE_T0)
    monkeypatch.setattr(steady.reader, "read_custom_rollups", spy)
    surge, quiet = replay(
        steady.reader, [SURGE, QUIET], start=RULE_T0 + 50, end=RULE_T0 + 70, step=10
    )
    return surge, quiet, spy.take()


def firing_since(result: Any) -> list[tuple[str, float]]:
    return [(t.kind, t.at - RULE_T0) for t in result.transitions]


@pytest.mark.parametrize(
    ("budget", "reads", "failed", "health"),
    [
        # 36 rows: every step reads its 12 rows, the budget spent exactly.
        (36, [(5, 10, 40, 37, 12), (5, 20, 50, 25, 12), (5, 30, 60, 13, 12)], 0, ""),
        # 24 rows: the third step reads nothing, and the health says why.
        (24, [(5, 10, 40, 25, 12), (5, 20, 50, 13, 12)], 1, SPENT),
        # 12 rows: only the first step reads.
        (12, [(5, 10, 40, 13, 12)], 2, SPENT),
    ],
)
def test_a_dry_run_stops_reading_once_its_budget_is_spent(
    steady: Recording,
    monkeypatch: pytest.MonkeyPatch,
    budget: int,
    reads: list[tuple[int, float, float, int, int]],
    failed: int,
    health: str,
) -> None:
    monkeypatch.setattr(dry_run, "DRY_RUN_CUSTOM_ROWS", budget)
    surge, quiet, calls = replay_steady(steady, monkeypatch)
    assert calls == reads
    assert (surge.health, surge.failed) == (health, failed)
    # It fired at the first step (1.4/s); the failed steps change nothing.
    assert firing_since(surge) == [("firing", 50.0)]
    assert [g.state for g in surge.now] == ["firing"]
    # The rule over the request rollups is replayed whatever the budget.
    assert (quiet.health, quiet.failed) == ("", 0)
    assert firing_since(quiet) == [("firing", 50.0)]


def test_a_budget_spent_within_a_step_says_the_replay_read_its_rows(
    steady: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dry_run, "DRY_RUN_CUSTOM_ROWS", 35)
    surge, quiet, _ = replay_steady(steady, monkeypatch)
    assert surge.failed == 1
    assert quiet.health == ""
    assert "replay less time" in surge.health, surge.health


# -- group_by ------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ALERT_LABELS)
def test_a_custom_rule_may_not_group_by_an_alerts_own_label(label: str) -> None:
    for group_by in ([label], ["region", label]):
        with pytest.raises(RuleError) as caught:
            rule_from_mapping({
                "name": "orders", "input": "custom_increase", "metric": "orders_total",
                "operator": ">", "threshold": 0, "group_by": group_by,
            })  # fmt: skip
        assert caught.value.field == "group_by"
        for name in ALERT_LABELS:
            assert name in str(caught.value)
    # A label of any other name is the metric's to have.
    rule = custom("orders", "custom_increase", "orders_total", group_by=(f"{label}_name",))
    assert rule.group_by == (f"{label}_name",)


def test_a_state_rule_still_groups_by_channel() -> None:
    rule = rule_from_mapping({
        "name": "off", "input": "channel_disabled", "operator": ">", "threshold": 0,
        "group_by": ["channel"],
    })  # fmt: skip
    assert rule.group_by == ("channel",)


@pytest.fixture
def alerts_app(make_aegis: Callable[..., Aegis], tmp_path: Path) -> tuple[Aegis, Any]:
    clock = FakeClock(wall=RULE_T0)
    aegis = make_aegis(
        sink=f"sqlite:///{tmp_path / 'aegis.db'}", clock=clock, access=ACCESS,
        alerts_enabled=True, alert_interval=3600, flush_interval=3600, metrics_registry="none",
    )  # fmt: skip
    return aegis, AegisMiddleware(starlette_app(clock), aegis=aegis)


@pytest.mark.anyio
async def test_the_api_refuses_a_custom_rule_grouped_by_channel(
    alerts_app: tuple[Aegis, Any],
) -> None:
    aegis, app = alerts_app
    rule = {
        "name": "orders_by_channel", "input": "custom_increase", "metric": "orders_total",
        "operator": ">", "threshold": 10, "window": "1m", "group_by": ["channel"],
    }  # fmt: skip
    async with client(app) as http:

        async def put(body: dict[str, Any]) -> httpx.Response:
            return await http.put(f"{API}/alert-rules", json=body, headers=bearer(EDITOR))

        refused = await put(rule)
        assert_bad_field(refused, "group_by")
        assert "channel" in refused.json()["error"]["message"]
        for group_by in (["region", "channel"], ["value_percent"], ["rule"]):
            assert_bad_field(await put({**rule, "group_by": group_by}), "group_by")
        # The dry run refuses it alike.
        trial = await http.post(
            f"{API}/alert-rules/dry-run", json={"rule": rule}, headers=bearer(EDITOR)
        )
        assert_bad_field(trial, "rule.group_by")
        # Grouped by one of the metric's own labels, it is written.
        written = await put({**rule, "group_by": ["channel_name"]})
        assert written.status_code == 201, written.text
        listed = await http.get(f"{API}/alert-rules", headers=bearer(VIEWER))
    names = [r["name"] for r in listed.json()["data"]["rules"]]
    assert names.count("orders_by_channel") == 1
    assert aegis.alerts is not None
    [stored] = aegis.alerts.api_rules
    assert stored.group_by == ("channel_name",)


# -- an alert value that is not finite ----------------------------------------------------


def test_an_alert_value_that_is_not_finite_is_no_data(
    history_sink_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    """Two label sets of 1e308 in one bucket (stored apart, on every store)
    add up past a float's range when a rule reads them all: no data; one of
    them alone is its value."""
    recording = Recording(make_aegis, history_sink_url)
    recording.at(
        1, {"eu": 1e308, "us": 1e308}, {"eu": [1e308], "us": [1e308]}, {"a": 1e308, "b": 1e308}
    )
    rules = [
        custom("orders", "custom_increase", "orders_total"),
        custom("orders_rate", "custom_rate", "orders_total"),
        custom("eu_orders", "custom_increase", "orders_total", match={"region": "eu"}),
        custom("by_region", "custom_increase", "orders_total", group_by=("region",)),
        custom("avg", "custom_avg", "order_seconds"),
        custom("eu_avg", "custom_avg", "order_seconds", match={"region": "eu"}),
        custom("observed", "custom_increase", "order_seconds"),
        custom("depth", "custom_value", "queue_depth"),  # the sum of a and b
        custom("peak", "custom_value", "queue_peak"),
        custom("floor", "custom_value", "queue_floor"),
    ]
    for collected in (
        collect(recording.reader, rules, RULE_T0 + 22),
        SlidingFigures(recording.reader, rules).collect(RULE_T0 + 22),
    ):
        assert values_of(collected, rules) == {
            "orders": {(): None}, "orders_rate": {(): None}, "eu_orders": {(): 1e308},
            "by_region": {(("region", "eu"),): 1e308, (("region", "us"),): 1e308},
            "avg": {(): None}, "eu_avg": {(): 1e308}, "observed": {(): 2.0},
            "depth": {(): None}, "peak": {(): 1e308}, "floor": {(): 1e308},
        }  # fmt: skip
    # The alert service: the rule whose value overflowed does not fire.
    service = alert_service(recording.reader, rules[:3], recording.clock)
    recording.clock.advance(RULE_T0 + 22 - recording.clock.wall())
    service.tick()
    assert service.health == {"orders": "", "orders_rate": "", "eu_orders": ""}
    view = service.view()
    assert [(a["name"], a["state"], a["value"]) for a in view if a["state"] == "firing"] == [
        ("eu_orders", "firing", 1e308)
    ]
    json.dumps(view, allow_nan=False)  # no Infinity anywhere

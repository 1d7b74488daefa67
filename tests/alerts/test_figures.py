"""Window figures read from the stored rollups of real sinks equal those
computed record by record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.alerts import AlertRule, collect, window_of
from aegis_mw.alerts.figures import Group
from aegis_mw.alerts.rules import RATIO_INPUTS, ROLLUP_INPUTS
from aegis_mw.core import histogram
from aegis_mw.core.record import RequestRecord
from aegis_mw.sinks import MemorySink
from tests.history.dataset import NOW, batches, make_records, open_sink

RECORDS = make_records(4000, seed=11, span=3 * 3600)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    sink = open_sink(request.param, request, tmp_path)
    for batch in batches(RECORDS, tag="alerts"):
        sink.write(batch)
    yield sink
    sink.close()


def _expected(rule: AlertRule, records: list[RequestRecord]) -> dict[Group, float | None]:
    start, end = window_of(rule, NOW)
    groups: dict[Group, list[RequestRecord]] = {} if rule.group_by else {(): []}
    for r in records:
        if not start <= r.timestamp < end:
            continue
        if (rule.route is not None and r.route != rule.route) or (
            rule.method is not None and r.method != rule.method
        ):
            continue
        group = tuple((label, getattr(r, label)) for label in rule.group_by)
        groups.setdefault(group, []).append(r)
    return {group: _value(rule, chosen) for group, chosen in groups.items()}


def _value(rule: AlertRule, records: list[RequestRecord]) -> float | None:
    count = len(records)
    errors = sum(1 for r in records if r.status >= 500 or r.error)
    limited = sum(1 for r in records if r.status == 429)
    name = rule.input
    if (name in RATIO_INPUTS or name.startswith("latency")) and count < max(rule.min_requests, 1):
        return None
    if name == "request_rate":
        return count / rule.window
    if name == "error_rate":
        return errors / rule.window
    if name == "rate_limited_rate":
        return limited / rule.window
    if name == "error_ratio":
        return errors / count
    if name == "rate_limited_ratio":
        return limited / count
    if name.startswith("status_"):
        return sum(1 for r in records if r.status // 100 == int(name[7])) / count
    counts = [0] * histogram.COUNT
    durations = [r.duration_ms for r in records]
    for duration in durations:
        counts[histogram.bucket_index(duration)] += 1
    quantile = float("0." + name.split("_p")[1].removesuffix("_ms"))
    low, high = min(durations), max(durations)
    return histogram.percentiles(counts, [quantile], lowest=low, highest=high)[0]


RULES = [
    AlertRule(name=f"{name}_{window}", input=name, operator=">", threshold=0.5, window=window)
    for name in ROLLUP_INPUTS
    for window in ("5m", "1h")
] + [
    AlertRule(name="by_route", input="error_ratio", operator=">", threshold=0.1, group_by=("route",), window="30m"),
    AlertRule(
        name="by_route_method", input="latency_p95_ms", operator=">", threshold=100,
        group_by=("route", "method"), window="2h", min_requests=3,
    ),
    AlertRule(name="one_route", input="request_rate", operator="<", threshold=1, route="/search", window="15m"),
    AlertRule(name="posts", input="status_4xx_ratio", operator=">", threshold=0.2, method="POST", window="1h"),
    AlertRule(name="few", input="error_ratio", operator=">", threshold=0.2, route="/upload", window="1m", min_requests=50),
]  # fmt: skip


def test_figures_equal_the_records(store: Any) -> None:
    collected = collect(store, RULES, NOW)
    for rule in RULES:
        read = collected[rule.name]
        assert not isinstance(read, Exception), read
        got = {group: figures.value(rule) for group, figures in read.items()}
        expected = _expected(rule, RECORDS)
        assert got == expected, rule.name
    # The dataset reaches every kind of answer.
    assert collected["few"][()].value(RULES[-1]) is None
    assert len(collected["by_route"]) > 3


class CountingReader:
    def __init__(self, inner: Any, failing: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.inner, self.failing, self.calls = inner, failing, 0

    def read_rollups(self, resolution: int, start: int, end: int, *, by_route: bool) -> Any:
        self.calls += 1
        if resolution in self.failing:
            raise ConnectionError("store unreachable")
        return self.inner.read_rollups(resolution, start, end, by_route=by_route)


def test_rules_with_the_same_window_share_one_read() -> None:
    sink = MemorySink()
    for batch in batches(RECORDS, tag="share"):
        sink.write(batch)
    reader = CountingReader(sink)
    rules = [
        AlertRule(
            name=f"r{n}", input=ROLLUP_INPUTS[n % len(ROLLUP_INPUTS)], operator=">", threshold=0.5
        )
        for n in range(200)
    ]
    collect(reader, rules, NOW)
    assert reader.calls == 1


def test_a_failed_read_is_the_health_of_its_rules_only() -> None:
    sink = MemorySink()
    for batch in batches(RECORDS, tag="fail"):
        sink.write(batch)
    short = AlertRule(name="short", input="error_ratio", operator=">", threshold=0.5, window="5m")
    long = AlertRule(name="long", input="error_ratio", operator=">", threshold=0.5, window="2h")
    collected = collect(CountingReader(sink, failing={60}), [short, long], NOW)
    assert isinstance(collected["long"], ConnectionError)
    assert not isinstance(collected["short"], Exception)


def test_the_window_ends_at_settled_buckets() -> None:
    rule = AlertRule(name="w", input="request_rate", operator=">", threshold=1, window="1m")
    assert window_of(rule, 1000.0) == (930, 990)
    assert window_of(rule, 1004.9) == (930, 990)
    assert window_of(rule, 1005.0) == (935, 995)
    hourly = AlertRule(name="h", input="request_rate", operator=">", threshold=1, window="6h")
    start, end = window_of(hourly, 100_000.0)
    assert end % 60 == 0 and end - start == 6 * 3600 and 100_000 - 70 < end <= 100_000 - 10


def _values(collected: Any) -> dict[str, Any]:
    return {
        name: {group: (f.requests, f.errors, f.latency) for group, f in read.items()}
        for name, read in collected.items()
    }


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_kept_rows_read_as_a_fresh_read_does(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Ticks 10 s apart while traffic is written: what the kept rows give is
    what a fresh read gives, a late write within a minute at once; one
    older than that after the next whole read (at most five minutes)."""
    from aegis_mw.alerts.figures import RecentRollups

    from .test_service import write

    sink = open_sink(kind, request, tmp_path)
    recent = RecentRollups(recheck=60, refresh=300)
    rules = [rule for rule in RULES if rule.window <= 3600]
    start = NOW - 3600
    for second in range(0, 3600, 5):
        write(sink, start + second, 2, second % 3, f"h{second}-")
    for tick in range(40):
        now = NOW + 10 * tick
        write(sink, now - 2, 3, 1, f"t{tick}-")
        if tick == 5:
            write(sink, now - 40, 4, 4, "late-in-recheck-")
        if tick == 10:
            write(sink, now - 150, 4, 4, "late-beyond-recheck-")
        kept = _values(collect(sink, rules, now, recent=recent))
        fresh = _values(collect(sink, rules, now))
        # The late rows beyond the recheck are missing from the kept ones (the
        # hour's window holds them) until the whole range is read again at
        # tick 30, 300 s after the first read.
        assert (kept == fresh) is not (10 <= tick < 30), tick
    sink.close()

"""Alert rules over the app's own metrics (``custom_increase``, ``custom_rate``,
``custom_value``, ``custom_avg``, ``custom_p50/95/99``): every new field
checked, the figures of metrics recorded through a real Aegis into memory, a
SQLite file and the real PostgreSQL held to what was recorded, an evaluation
by the alert service from pending to firing to resolved, rules written over
the API, and the Prometheus export."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.alerts import AlertRule, RuleError, WindowFigures, collect, rule_from_mapping
from aegis_mw.alerts.custom_inputs import CustomInputError, custom_figures
from aegis_mw.alerts.dry_run import replay
from aegis_mw.alerts.figures import SETTLE_SECONDS, Collected, Group
from aegis_mw.alerts.prometheus_rules import prometheus_rules
from aegis_mw.alerts.rules import CUSTOM_INPUTS
from aegis_mw.alerts.service import AlertService
from aegis_mw.alerts.sliding import SlidingFigures
from aegis_mw.alerts.store import MemoryAlertStore
from aegis_mw.core.custom_history import HOLD_BUCKETS
from aegis_mw.core.errors import ConfigError
from aegis_mw.testing import FakeClock
from tests.alerts.test_prometheus_rules import run_promtool
from tests.api_apps import ACCESS, EDITOR, VIEWER, assert_bad_field, bearer
from tests.endpoints.test_api import client, starlette_app

#: "Now" is counted from here: a bucket boundary of every stored resolution.
T0 = 1_800_000_000.0
#: The buckets of the histogram (then +Inf).
BOUNDS = (0.25, 0.5, 1.0, 4.0)
#: The gauges, one per multiprocess_mode, all set to the same values.
GAUGES = {"sum": "queue_depth", "max": "queue_peak", "min": "queue_floor"}
API = "/api/metrics"

RESERVED_GROUP_NAMES = "not alertname, channel, rule, severity, threshold, value, value_percent"


def custom(name: str, input: str, metric: str, window: Any = "30s", **fields: Any) -> AlertRule:
    """A rule over ``metric``, breaching above 0 unless told."""
    fields.setdefault("operator", ">")
    fields.setdefault("threshold", 0)
    return AlertRule(name=name, input=input, metric=metric, window=window, **fields)


# -- rule checks ----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "name": "orders", "input": "custom_rate", "metric": "orders_total", "operator": "<",
    "threshold": 0.1,
}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"metric": None}, "metric", "the name of one of the app's own metrics"),
        ({"input": "custom_value", "metric": None}, "metric", "the name of one"),
        ({"metric": ""}, "metric", "[a-zA-Z_:]"),
        ({"metric": "9orders"}, "metric", "[a-zA-Z_:]"),
        ({"metric": "orders-total"}, "metric", "[a-zA-Z_:]"),
        ({"metric": "orders total"}, "metric", "[a-zA-Z_:]"),
        ({"metric": "o" * 201}, "metric", "[a-zA-Z_:]"),
        ({"metric": 3}, "metric", "[a-zA-Z_:]"),
        ({"metric": ["orders"]}, "metric", "[a-zA-Z_:]"),
        ({"match": "region=eu"}, "match", "a mapping of the metric's label names"),
        ({"match": ["region", "eu"]}, "match", "a mapping of the metric's label names"),
        ({"match": None}, "match", "a mapping of the metric's label names"),
        ({"match": {"region": 3}}, "match", "a mapping of the metric's label names"),
        ({"match": {"region": None}}, "match", "to the values its series must have"),
        ({"match": {"bad-label": "eu"}}, "match", "a mapping of the metric's label names"),
        ({"match": {"": "eu"}}, "match", "a mapping"),
        ({"match": {"9region": "eu"}}, "match", "a mapping"),
        ({"match": {"region": "x" * 2049}}, "match", "a mapping"),
        (
            {"input": "error_ratio", "threshold": 0.5, "match": {}},
            "metric",
            "none: only the custom inputs (custom_increase, custom_rate",
        ),
        (
            {"input": "request_rate", "metric": None, "match": {"region": "eu"}},
            "match",
            "none: only the custom inputs",
        ),
        (
            {"input": "channel_disabled", "metric": "orders"},
            "metric",
            "none: only the custom inputs",
        ),
        ({"group_by": ["alertname"]}, "group_by", RESERVED_GROUP_NAMES),
        ({"group_by": ["severity"]}, "group_by", RESERVED_GROUP_NAMES),
        ({"group_by": ["region", "severity"]}, "group_by", RESERVED_GROUP_NAMES),
        # An alert about a channel is not sent to it; annotations fill these in.
        ({"group_by": ["channel"]}, "group_by", RESERVED_GROUP_NAMES),
        ({"group_by": ["value"]}, "group_by", RESERVED_GROUP_NAMES),
        ({"group_by": ["threshold"]}, "group_by", RESERVED_GROUP_NAMES),
        ({"group_by": ["bad-label"]}, "group_by", "a list of the metric's label names"),
        ({"group_by": ["9region"]}, "group_by", "a list of the metric's label names"),
        ({"group_by": [3]}, "group_by", "a list of the metric's label names"),
        ({"group_by": "region"}, "group_by", "a list of the metric's label names"),
        ({"group_by": {"region": 1}}, "group_by", "a list of the metric's label names"),
        ({"group_by": None}, "group_by", "a list of the metric's label names"),
        ({"group_by": ["region", "region"]}, "group_by", "each label once"),
        ({"route": "/orders"}, "route", "none: custom_rate is not per request"),
        ({"method": "GET"}, "method", "none: custom_rate is not per request"),
        ({"input": "custom_p95", "route": "<unmatched>"}, "route", "none: custom_p95 is"),
        ({"input": "custom_value", "method": "post"}, "method", "none: custom_value is"),
    ],
)
def test_a_bad_custom_field_is_named(changes: dict[str, Any], field: str, allowed: str) -> None:
    data = {**BASE, **changes}
    with pytest.raises(RuleError) as caught:
        rule_from_mapping(data)
    error = caught.value
    assert isinstance(error, ConfigError)  # what the app's start-up reports
    assert (error.rule, error.field) == ("orders", field)
    assert allowed in str(error)
    assert f"alert rule 'orders': {field} = " in str(error)
    # The class refuses it alike.
    arguments = {("for_" if key == "for" else key): value for key, value in data.items()}
    with pytest.raises(RuleError) as direct:
        AlertRule(**arguments)
    assert direct.value.field == field


@pytest.mark.parametrize("input_name", CUSTOM_INPUTS)
def test_every_custom_input_takes_a_metric_match_and_group(input_name: str) -> None:
    rule = rule_from_mapping({
        **BASE, "input": input_name, "metric": "orders", "match": {"region": "eu"},
        "group_by": ["shop", "route", "method"], "threshold": 1000,
    })  # fmt: skip
    assert (rule.metric, rule.match, rule.group_by) == (
        "orders", {"region": "eu"}, ("shop", "route", "method"),
    )  # fmt: skip
    # Not a ratio: a threshold of any size; not per request: no minimum of requests.
    assert rule.threshold == 1000 and not rule.needs_requests
    assert rule.route is None and rule.method is None


def test_rule_from_mapping_takes_metric_and_match_as_given() -> None:
    match = {"region": "eu", "tier": ""}
    rule = rule_from_mapping({**BASE, "match": match, "group_by": ["shop"], "for": "1m"})
    assert rule.metric == "orders_total"
    assert rule.match == {"region": "eu", "tier": ""}
    match["region"] = "us"  # the rule keeps its own copy
    assert rule.match == {"region": "eu", "tier": ""}
    assert (rule.group_by, rule.for_, rule.window) == (("shop",), 60.0, 300.0)
    # Without match: every series.
    assert rule_from_mapping(BASE).match == {}


def test_to_mapping_round_trips_a_custom_rule_and_leaves_other_rules_alone() -> None:
    rule = AlertRule(
        name="queue_deep", input="custom_value", metric="queue_depth", match={"queue": "mail"},
        group_by=("shop",), operator=">", threshold=1000, window="5m", for_="1m",
        severity="critical", labels={"team": "ops"},
        annotations={"summary": "queue $queue of $shop holds $value jobs"},
    )  # fmt: skip
    mapping = rule.to_mapping()
    assert (mapping["metric"], mapping["match"], mapping["group_by"]) == (
        "queue_depth", {"queue": "mail"}, ["shop"],
    )  # fmt: skip
    assert "for" in mapping and "for_" not in mapping
    # JSON and back (as the API stores it), then a rule again: the same rule.
    again = rule_from_mapping(json.loads(json.dumps(mapping)))
    assert again == rule
    assert again.to_mapping() == mapping
    # Other rules say nothing of metric and match, and round-trip too.
    for other in (
        AlertRule(name="errors", input="error_ratio", operator=">", threshold=0.05),
        AlertRule(name="off", input="channel_disabled", operator=">", threshold=0,
                  group_by=("channel",)),
    ):  # fmt: skip
        plain = other.to_mapping()
        assert "metric" not in plain and "match" not in plain
        assert rule_from_mapping(plain) == other


def test_a_custom_value_is_data_whatever_the_requests() -> None:
    """``min_requests`` is about requests: a custom input's window holds none,
    and is data all the same (None only when the metric gave none)."""
    rule = custom("orders", "custom_increase", "orders", min_requests=50)
    assert WindowFigures(30.0, custom=2.5, custom_read=True).value(rule) == 2.5
    assert WindowFigures(30.0, custom=0.0, custom_read=True).value(rule) == 0.0
    assert WindowFigures(30.0, custom=None, custom_read=True).value(rule) is None
    # A window the evaluator fills in for a group with nothing in it: an
    # increase of 0, and no data for the inputs that need samples.
    assert WindowFigures(30.0).value(rule) == 0.0
    gauge = custom("jobs", "custom_value", "jobs", min_requests=50)
    assert WindowFigures(30.0).value(gauge) is None
    # A ratio over the same figures still wants its requests.
    ratio = AlertRule(name="e", input="error_ratio", operator=">", threshold=0.1)
    assert WindowFigures(30.0, errors=2, requests=5, custom=7.0).value(ratio) is None
    assert WindowFigures(30.0, errors=2, requests=10, custom=7.0).value(ratio) == 0.2


# -- figures of metrics recorded through a real Aegis ------------------------------------


@dataclass
class Story:
    """What the test recorded, by bucket (seconds after T0): the orders per
    region, the observations per region, and the gauges' sample per queue
    (one per bucket: the first flush in it; the buckets skipped before one
    take the values the flush before read, up to HOLD_BUCKETS)."""

    orders: dict[int, dict[str, float]] = field(default_factory=dict)
    observed: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    samples: dict[int, dict[str, float]] = field(default_factory=dict)


class Recording:
    """An Aegis over ``url`` whose flusher runs only when asked, on a fake
    clock: what is recorded at a time lands in that time's 5-second bucket."""

    def __init__(self, make_aegis: Callable[..., Aegis], url: str) -> None:
        self.clock = FakeClock(wall=T0 - 9)
        self.aegis = make_aegis(
            sink=url, clock=self.clock, flush_interval=3600, metrics_registry="none"
        )
        # The first cycle is behind us (it took the gauges' sample of bucket -10).
        assert self.aegis.force_flush(10)
        self.sampled = {-10}
        self.reader: Any = self.aegis.sinks[0]
        self.orders = self.aegis.counter("orders_total", "Orders placed.", ("region",))
        self.seconds = self.aegis.histogram(
            "order_seconds", "Time to place an order.", ("region",), buckets=BOUNDS
        )
        self.gauges = {
            mode: self.aegis.gauge(name, "Jobs queued.", ("queue",), multiprocess_mode=mode)
            for mode, name in GAUGES.items()
        }
        self.queues: dict[str, float] = {}
        self.read_before: dict[str, float] = {}
        self.story = Story()

    def at(
        self,
        second: int,
        orders: Mapping[str, float] | None = None,
        observe: Mapping[str, Sequence[float]] | None = None,
        queues: Mapping[str, float] | None = None,
    ) -> None:
        """At ``T0 + second``: orders, observations and gauge values, then a forced flush."""
        wall = T0 + second
        assert wall >= self.clock.wall()
        self.clock.advance(wall - self.clock.wall())
        bucket = second // 5 * 5
        for region, amount in (orders or {}).items():
            self.orders.labels(region).inc(amount)
            held = self.story.orders.setdefault(bucket, {})
            held[region] = held.get(region, 0.0) + amount
        for region, values in (observe or {}).items():
            for value in values:
                self.seconds.labels(region).observe(value)
            self.story.observed.setdefault(bucket, {}).setdefault(region, []).extend(values)
        for queue, depth in (queues or {}).items():
            for gauge in self.gauges.values():
                gauge.labels(queue).set(depth)
            self.queues[queue] = depth
        assert self.aegis.force_flush(10)
        if bucket not in self.sampled:
            last = max(self.sampled)
            skipped = max(0, min((bucket - last) // 5 - 1, HOLD_BUCKETS))
            for filled in range(bucket - 5 * skipped, bucket, 5):
                if self.read_before:
                    self.story.samples[filled] = dict(self.read_before)
            self.sampled.add(bucket)
            if self.queues:
                self.story.samples[bucket] = dict(self.queues)
        self.read_before = dict(self.queues)  # what this flush's sample read


def record_story(recording: Recording) -> None:
    """Changes in most buckets from 0 to 60, some buckets with two flushes,
    gauge-only and counter-only steps, a value on a bucket bound and one past
    the last, then a gap until 95."""
    at = recording.at
    at(1, {"eu": 3, "us": 1}, {"eu": [0.125, 0.375]}, {"a": 4, "b": 6})
    at(6, {"eu": 2}, {"us": [2.0]}, {"a": 10})
    at(8, {"us": 5}, {"eu": [0.75]}, {"b": 1})  # bucket 5's second flush: no gauge sample
    at(13, {"eu": 1}, {"eu": [0.75, 3.0]}, {"a": 2})
    at(27, {"us": 2.5}, {"us": [8.0]}, {"b": 12})
    at(31, {"eu": 4}, {"eu": [0.25]})
    at(33, {"eu": 0.5})
    at(44, queues={"a": 7})
    at(52, {"us": 6}, {"us": [0.5, 1.0]})
    at(61, {"eu": 1.5})
    at(95, queues={"b": 3})


@pytest.fixture
def recorded(history_sink_url: str, make_aegis: Callable[..., Aegis]) -> Recording:
    recording = Recording(make_aegis, history_sink_url)
    record_story(recording)
    return recording


def window_at(rule: AlertRule, now: float) -> tuple[int, int]:
    """The buckets (seconds after T0) a 5-second rule reads at ``T0 + now``:
    those settled SETTLE_SECONDS before it, back ``window`` seconds."""
    assert rule.resolution == 5
    end = int((now - SETTLE_SECONDS) // 5 * 5)
    return end - int(rule.window), end


def expected(rule: AlertRule, story: Story, now: float) -> dict[Group, float | None]:
    """The rule's value per group at ``T0 + now``, from what was recorded."""
    start, end = window_at(rule, now)
    label = "queue" if rule.metric in GAUGES.values() else "region"
    assert set(rule.match) <= {label} and set(rule.group_by) <= {label}

    def kept(key: str) -> Group | None:
        if any(value != key for value in rule.match.values()):
            return None
        return ((label, key),) if rule.group_by else ()

    buckets = list(range(start, end, 5))
    seconds = float(rule.window)
    out: dict[Group, float | None] = {}
    if rule.metric in ("orders", "orders_total"):
        increases: dict[Group, float] = {} if rule.group_by else {(): 0.0}
        for bucket in buckets:
            for region, amount in sorted(story.orders.get(bucket, {}).items()):
                group = kept(region)
                if group is not None:
                    increases[group] = increases.get(group, 0.0) + amount
        for group, increase in increases.items():
            out[group] = increase if rule.input == "custom_increase" else increase / seconds
        return out
    if rule.metric == "order_seconds":
        values: dict[Group, list[float]] = {} if rule.group_by else {(): []}
        for bucket in buckets:
            for region, observed in sorted(story.observed.get(bucket, {}).items()):
                group = kept(region)
                if group is not None:
                    values.setdefault(group, []).extend(observed)
        for group, chosen in values.items():
            if rule.input == "custom_increase":
                out[group] = float(len(chosen))
            elif rule.input == "custom_rate":
                out[group] = len(chosen) / seconds
            else:
                assert rule.input == "custom_avg"
                out[group] = round(sum(chosen) / len(chosen), 6) if chosen else None
        return out
    mode = next(mode for mode, name in GAUGES.items() if name == rule.metric)
    per_bucket: dict[Group, list[list[float]]] = {} if rule.group_by else {(): []}
    for bucket in buckets:
        sample = story.samples.get(bucket)
        if sample is None:
            continue
        by_group: dict[Group, list[float]] = {}
        for queue, depth in sample.items():
            group = kept(queue)
            if group is not None:
                by_group.setdefault(group, []).append(depth)
        for group, depths in by_group.items():
            per_bucket.setdefault(group, []).append(depths)
    for group, samples in per_bucket.items():
        if not samples:
            out[group] = None
        elif mode == "sum":  # the time average of the sum, the samples' buckets alike
            out[group] = round(sum(sum(depths) for depths in samples) / len(samples), 6)
        elif mode == "max":
            out[group] = max(max(depths) for depths in samples)
        else:
            out[group] = min(min(depths) for depths in samples)
    return out


def values_of(
    collected: Collected, rules: Sequence[AlertRule]
) -> dict[str, dict[Group, float | None] | str]:
    """Each rule's value per group, or its error as health shows it."""
    out: dict[str, dict[Group, float | None] | str] = {}
    for rule in rules:
        read = collected[rule.name]
        if isinstance(read, Exception):
            out[rule.name] = f"{type(read).__name__}: {read}"
        else:
            out[rule.name] = {group: figures.value(rule) for group, figures in read.items()}
    return out


FIGURE_RULES = [
    custom("all_orders", "custom_increase", "orders_total"),
    custom("all_orders_rate", "custom_rate", "orders"),  # a counter without its _total
    custom("eu_orders", "custom_increase", "orders_total", match={"region": "eu"}),
    custom("us_orders_rate", "custom_rate", "orders_total", window="1m", match={"region": "us"}),
    custom("nowhere_orders", "custom_increase", "orders", match={"region": "asia"}),
    custom("orders_by_region", "custom_increase", "orders_total", group_by=("region",)),
    custom("rate_by_region", "custom_rate", "orders_total", window="1m", group_by=("region",)),
    custom(
        "eu_by_region", "custom_increase", "orders", match={"region": "eu"}, group_by=("region",)
    ),
    custom("observations", "custom_increase", "order_seconds"),
    custom("eu_observations", "custom_increase", "order_seconds", match={"region": "eu"}),
    custom("observed_by_region", "custom_rate", "order_seconds", group_by=("region",)),
    custom("order_avg", "custom_avg", "order_seconds"),
    custom("order_avg_by_region", "custom_avg", "order_seconds", window="1m",
           group_by=("region",)),
    *(
        rule
        for mode, name in GAUGES.items()
        for rule in (
            custom(f"{mode}_value", "custom_value", name),
            custom(f"{mode}_value_1m", "custom_value", name, window="1m"),
            custom(f"{mode}_a", "custom_value", name, match={"queue": "a"}),
            custom(f"{mode}_by_queue", "custom_value", name, window="1m", group_by=("queue",)),
        )
    ),
]  # fmt: skip
#: Evaluation times (seconds after T0): before anything settled, through the
#: changes, the gap without a sample, the last sample, and after it.
TIMES = [11 + 3.5 * step for step in range(40)] + [151.0, 200.0]


def test_figures_equal_what_was_recorded_at_successive_times(recorded: Recording) -> None:
    story = recorded.story
    sliding = SlidingFigures(recorded.reader, FIGURE_RULES)
    groups_seen: dict[str, set[int]] = {rule.name: set() for rule in FIGURE_RULES}
    valued: set[str] = set()
    for now in TIMES:
        wanted = {rule.name: expected(rule, story, now) for rule in FIGURE_RULES}
        fresh = values_of(collect(recorded.reader, FIGURE_RULES, T0 + now), FIGURE_RULES)
        kept = values_of(sliding.collect(T0 + now), FIGURE_RULES)
        assert fresh == wanted, now
        assert kept == wanted, now
        for name, groups in wanted.items():
            groups_seen[name].add(len(groups))
            if any(groups.values()):
                valued.add(name)
    # The story reaches every kind of answer: values, several groups, none.
    assert valued == {rule.name for rule in FIGURE_RULES} - {"nowhere_orders"}
    for name in ("orders_by_region", "rate_by_region", "observed_by_region"):
        assert {0, 1, 2} <= groups_seen[name], (name, groups_seen[name])
    for name in ("sum_by_queue", "max_by_queue", "min_by_queue"):  # every sample has a and b
        assert groups_seen[name] == {0, 2}, (name, groups_seen[name])
    assert groups_seen["eu_by_region"] == {0, 1}


def test_hand_computed_values_at_one_time(recorded: Recording) -> None:
    """At T0 + 22 the 30 s window is the buckets 0 and 5 (10 s settle):
    figures worked out by hand from the story's first three steps."""
    got = values_of(collect(recorded.reader, FIGURE_RULES, T0 + 22), FIGURE_RULES)
    assert got["all_orders"] == {(): 11.0}  # eu 3 + 2, us 1 + 5
    assert got["all_orders_rate"] == {(): 11 / 30}
    assert got["eu_orders"] == {(): 5.0}
    assert got["orders_by_region"] == {(("region", "eu"),): 5.0, (("region", "us"),): 6.0}
    assert got["eu_by_region"] == {(("region", "eu"),): 5.0}
    assert got["observations"] == {(): 4.0}
    assert got["observed_by_region"] == {(("region", "eu"),): 3 / 30, (("region", "us"),): 1 / 30}
    assert got["order_avg"] == {(): (0.125 + 0.375 + 2.0 + 0.75) / 4}
    # Gauges: bucket 0 sampled a=4, b=6; bucket 5 a=10, b=6 (b=1 came in a
    # second flush of bucket 5: not sampled there).
    assert got["sum_value"] == {(): 13.0}  # (10 + 16) / 2
    assert got["max_value"] == {(): 10.0}
    assert got["min_value"] == {(): 4.0}
    assert got["sum_a"] == {(): 7.0} and got["max_a"] == {(): 10.0} and got["min_a"] == {(): 4.0}


def test_histogram_average_and_percentiles_are_interpolated_in_the_buckets(
    history_sink_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    recording = Recording(make_aegis, history_sink_url)
    eu = [0.125] * 4 + [0.375] * 6 + [0.75] * 8 + [2.0] * 2  # per bucket: 4, 6, 8, 2, 0
    recording.at(1, observe={"eu": eu})
    recording.at(7, observe={"us": [8.0, 0.125]})  # per bucket: 1, 0, 0, 0, 1 (+Inf)
    rules = [
        custom(f"{input_name}{suffix}", input_name, "order_seconds", **fields)
        for input_name in ("custom_avg", "custom_p50", "custom_p95", "custom_p99")
        for suffix, fields in (
            ("", {}), ("_eu", {"match": {"region": "eu"}}), ("_by", {"group_by": ("region",)}),
        )
    ]  # fmt: skip
    eu_group, us_group = (("region", "eu"),), (("region", "us"),)
    # Both buckets: counts 5, 6, 8, 2, 1 (22 in all).
    both = values_of(collect(recording.reader, rules, T0 + 22), rules)
    assert both == {
        # 20.875 / 22 = 0.94886363..., to six places as the chart shows it.
        "custom_avg": {(): 0.948864},
        "custom_avg_eu": {(): 0.6375},  # 12.75 / 20
        "custom_avg_by": {eu_group: 0.6375, us_group: 4.0625},
        # Rank 11: the 6th of 6 in (0.25, 0.5]; eu: rank 10, the 6th of 6 too;
        # us: rank 1, the only one in (0, 0.25].
        "custom_p50": {(): 0.5},
        "custom_p50_eu": {(): 0.5},
        "custom_p50_by": {eu_group: 0.5, us_group: 0.25},
        # Rank 20.9: 1.9 into the 2 of (1, 4] -> 1 + 3 * 0.95; eu: rank 19,
        # 1 of 2 -> 1 + 3 * 0.5; us: rank 1.9 is in +Inf: its lower bound.
        "custom_p95": {(): 3.85},
        "custom_p95_eu": {(): 2.5},
        "custom_p95_by": {eu_group: 2.5, us_group: 4.0},
        # Rank 21.78 is past the 21 below +Inf: 4; eu: rank 19.8 -> 1 + 3 * 0.9.
        "custom_p99": {(): 4.0},
        "custom_p99_eu": {(): 3.7},
        "custom_p99_by": {eu_group: 3.7, us_group: 4.0},
    }
    # Bucket 0 alone: eu's figures, whatever the match.
    first = values_of(collect(recording.reader, rules, T0 + 17), rules)
    assert first["custom_p95"] == first["custom_p95_eu"] == {(): 2.5}
    assert first["custom_avg"] == {(): 0.6375}
    assert first["custom_p95_by"] == {eu_group: 2.5}
    # Neither: no observation is no data (a group-less rule has its one group).
    nothing = values_of(collect(recording.reader, rules, T0 + 52), rules)
    for rule in rules:
        assert nothing[rule.name] == ({} if rule.group_by else {(): None}), rule.name


def test_no_data(recorded: Recording) -> None:
    """A metric never stored is no data (it may not have changed yet); so
    are a histogram without an observation in the window and a gauge without
    a sample (none for over 5 minutes: shorter gaps take the value before);
    a counter that did not change is 0."""
    recorded.aegis.counter("refunds_total", "Refunds.", ("region",))  # declared, never moved
    rules = [
        custom("unknown", "custom_rate", "never_declared"),
        custom("unknown_by", "custom_rate", "never_declared", group_by=("region",)),
        custom("idle", "custom_increase", "refunds_total"),
        custom("idle_value", "custom_value", "refunds"),  # its kind is not known either
        custom("orders", "custom_increase", "orders_total"),
        custom("orders_by", "custom_increase", "orders_total", group_by=("region",)),
        custom("avg", "custom_avg", "order_seconds"),
        custom("p95", "custom_p95", "order_seconds"),
        custom("depth", "custom_value", "queue_depth"),
        custom("peak", "custom_value", "queue_peak"),
        custom("depth_by", "custom_value", "queue_depth", group_by=("queue",)),
    ]
    # At T0 + 107 the 30 s window is [65, 95): nothing changed in it and no
    # flush sampled the gauges (the last before it at 61, the next at 95,
    # whose sample filled 65..90 with the values read at 61: a=7, b=12).
    for collected in (
        collect(recorded.reader, rules, T0 + 107),
        SlidingFigures(recorded.reader, rules).collect(T0 + 107),
    ):
        assert values_of(collected, rules) == {
            "unknown": {(): None}, "unknown_by": {}, "idle": {(): None},
            "idle_value": {(): None}, "orders": {(): 0.0}, "orders_by": {},
            "avg": {(): None}, "p95": {(): None}, "depth": {(): 19.0}, "peak": {(): 12.0},
            "depth_by": {(("queue", "a"),): 7.0, (("queue", "b"),): 12.0},
        }  # fmt: skip
    # Past the last sample (at 95), nothing fills the window: no data.
    gone = values_of(collect(recorded.reader, rules, T0 + 500), rules)
    assert (gone["depth"], gone["peak"], gone["depth_by"]) == ({(): None}, {(): None}, {})
    # Five seconds on, the sample of bucket 95 is in too (a=7, b=3), after
    # five buckets filled (a=7, b=12): sums of 19 five times and 10 once.
    later = values_of(collect(recorded.reader, rules, T0 + 112), rules)
    assert later["depth"] == {(): 17.5} and later["peak"] == {(): 12.0}
    assert later["depth_by"] == {(("queue", "a"),): 7.0, (("queue", "b"),): 10.5}
    assert later["orders"] == {(): 0.0}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            custom("misread", "custom_value", "orders_total"),
            "custom_value reads a gauge; orders is a counter",
        ),
        (
            custom("misread", "custom_p95", "queue_depth"),
            "custom_p95 reads a histogram; queue_depth is a gauge",
        ),
        (
            custom("misread", "custom_avg", "orders"),
            "custom_avg reads a histogram; orders is a counter",
        ),
        (
            custom("misread", "custom_rate", "queue_peak"),
            "custom_rate reads a counter or a histogram; queue_peak is a gauge",
        ),
        (
            custom("misread", "custom_value", "order_seconds"),
            "custom_value reads a gauge; order_seconds is a histogram",
        ),
        (
            custom("misread", "custom_increase", "orders_total", group_by=("country",)),
            "orders has no label 'country' (its labels: region)",
        ),
        (
            custom("misread", "custom_rate", "orders_total", group_by=("region", "shop")),
            "orders has no label 'shop' (its labels: region)",
        ),
        (
            custom("misread", "custom_value", "queue_depth", match={"region": "eu"}),
            "queue_depth has no label 'region' (its labels: queue)",
        ),
        (
            custom("misread", "custom_p99", "order_seconds", match={"queue": "a"}),
            "order_seconds has no label 'queue' (its labels: region)",
        ),
    ],
)
def test_a_rule_that_does_not_fit_its_metric_is_an_error_in_its_figures(
    recorded: Recording, rule: AlertRule, message: str
) -> None:
    good = custom("good", "custom_increase", "orders_total")
    rules = [rule, good]
    for collected in (
        collect(recorded.reader, rules, T0 + 22),
        SlidingFigures(recorded.reader, rules).collect(T0 + 22),
    ):
        error = collected["misread"]
        assert isinstance(error, CustomInputError)
        assert str(error) == message
        # The other rules are read all the same.
        assert values_of(collected, [good]) == {"good": {(): 11.0}}


def test_a_store_that_keeps_no_custom_metrics_is_every_custom_rules_health() -> None:
    class RollupsOnly:
        def read_rollups(self, *args: Any, **kwargs: Any) -> list[Any]:
            return []

    class Failing(RollupsOnly):
        def read_custom_metrics(self) -> list[Any]:
            raise ConnectionError("store unreachable")

        def read_custom_rollups(self, *args: Any) -> list[Any]:
            raise AssertionError("not reached")

    rules = [
        custom("a", "custom_rate", "orders"),
        custom("b", "custom_value", "queue_depth", group_by=("queue",)),
        AlertRule(name="requests", input="request_rate", operator="<", threshold=1),
    ]
    kept = custom_figures(RollupsOnly(), rules, T0, SETTLE_SECONDS)
    assert set(kept) == {"a", "b"}
    for name in ("a", "b"):
        error = kept[name]
        assert isinstance(error, CustomInputError)
        assert "keeps none of the app's own metrics" in str(error)
    failing = collect(Failing(), rules, T0)
    assert isinstance(failing["a"], ConnectionError) and isinstance(failing["b"], ConnectionError)
    # The request rule is read from the rollups as ever.
    requests = failing["requests"]
    assert not isinstance(requests, Exception) and requests[()].value(rules[2]) == 0.0


# -- the alert service ----------------------------------------------------------------

SURGE = AlertRule(
    name="orders_surge", input="custom_rate", metric="orders_total", group_by=("region",),
    operator=">", threshold=0.5, window="30s", for_="20s", labels={"team": "shop"},
    annotations={
        "summary": "region $region takes $value orders/s",
        "description": "$rule: above $threshold ($severity)",
    },
)  # fmt: skip
MISREAD = custom("orders_misread", "custom_value", "orders_total")
INTERVAL = 10.0


def alert_service(sink: Any, rules: Sequence[AlertRule], clock: FakeClock) -> AlertService:
    make_store = getattr(sink, "alert_store", None)
    store = make_store() if callable(make_store) else MemoryAlertStore()
    return AlertService(rules, store, sink, interval=INTERVAL, wall=clock.wall)


def test_a_custom_rate_rule_goes_pending_fires_and_resolves(
    history_sink_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    recording = Recording(make_aegis, history_sink_url)
    service = alert_service(recording.reader, [SURGE, MISREAD], recording.clock)
    # eu: 6 orders every 5 s from 1 to 56 (1.2/s over a full window); us: one.
    # The service ticks every 10 s at 2, 12, 22...
    steps = [(second, "record") for second in range(1, 60, 5)]
    steps += [(second, "tick") for second in range(2, 125, 10)]
    states: dict[int, list[tuple[str, dict[str, str], str, float | None]]] = {}
    for second, what in sorted(steps):
        if what == "record":
            recording.at(second, {"eu": 6, **({"us": 1} if second == 1 else {})})
            continue
        recording.clock.advance(T0 + second - recording.clock.wall())
        service.tick()
        states[second] = [(a["name"], a["group"], a["state"], a["value"]) for a in service.view()]
    assert service.failures == 0
    eu = {"region": "eu"}
    # Window ends at the last settled bucket: at 22 it holds buckets 0 and 5
    # (12 orders: 0.4/s); at 32 four buckets (0.8/s): pending; 20 s on, firing.
    assert states == {
        2: [], 12: [], 22: [],
        32: [("orders_surge", eu, "pending", 0.8)],
        42: [("orders_surge", eu, "pending", 1.2)],
        52: [("orders_surge", eu, "firing", 1.2)],
        62: [("orders_surge", eu, "firing", 1.2)],
        72: [("orders_surge", eu, "firing", 1.2)],
        82: [("orders_surge", eu, "firing", 0.8)],  # buckets 40 to 55 in [40, 70)
        92: [], 102: [], 112: [], 122: [],  # two buckets left: 0.4/s, resolved
    }  # fmt: skip
    history = [row for row in service.store.history(100)[::-1] if row["rule"] == SURGE.name]
    assert [(r["kind"], r["at"] - T0, r["group"], r["notify"]) for r in history[:3]] == [
        ("pending", 32.0, eu, False), ("firing", 52.0, eu, True), ("resolved", 92.0, eu, True),
    ]  # fmt: skip
    pending, firing, resolved = history[:3]
    labels = {"alertname": "orders_surge", "severity": "warning", "team": "shop", "region": "eu"}
    assert firing["labels"] == resolved["labels"] == labels
    assert firing["annotations"] == {
        "summary": "region eu takes 1.2 orders/s",
        "description": "orders_surge: above 0.5 (warning)",
    }
    assert resolved["annotations"]["summary"] == "region eu takes 0.4 orders/s"
    assert pending["value"] == 0.8 and resolved["value"] == 0.4
    # us never reached the threshold (1/30 per second); the misfit is health.
    assert all(row["group"] == eu for row in history)
    assert service.health == {
        "orders_surge": "",
        "orders_misread": "CustomInputError: custom_value reads a gauge; orders is a counter",
    }


def test_a_view_of_a_firing_custom_alert_renders_its_group(
    make_aegis: Callable[..., Aegis],
) -> None:
    recording = Recording(make_aegis, "memory://")
    rule = custom(
        "queue_deep", "custom_value", "queue_peak", group_by=("queue",), threshold=5,
        annotations={"summary": "queue $queue holds $value jobs ($method$route)"},
    )  # fmt: skip
    service = alert_service(recording.reader, [rule], recording.clock)
    recording.at(1, queues={"mail": 9, "sms": 2})
    recording.clock.advance(T0 + 16 - recording.clock.wall())
    service.tick()
    [alert] = service.view()
    assert (alert["name"], alert["state"], alert["group"], alert["value"]) == (
        "queue_deep", "firing", {"queue": "mail"}, 9,
    )  # fmt: skip
    # A custom rule has no route or method: those names render empty.
    assert alert["annotations"] == {"summary": "queue mail holds 9 jobs ()"}
    assert alert["message"] == "queue_deep [queue=mail] firing: queue mail holds 9 jobs ()"


def test_a_grouped_counter_alert_resolves_once_the_counter_stops(
    make_aegis: Callable[..., Aegis],
) -> None:
    recording = Recording(make_aegis, "memory://")
    by_region = custom("refunds", "custom_increase", "orders_total", group_by=("region",))
    eu_only = custom("eu_refunds", "custom_increase", "orders_total", match={"region": "eu"})
    service = alert_service(recording.reader, [by_region, eu_only], recording.clock)
    for second in range(1, 200, 5):  # bounded: 40 steps
        if second < 30:
            recording.at(second, {"eu": 1})
        else:
            recording.clock.advance(T0 + second - recording.clock.wall())
        service.tick()
    kinds = [(row["rule"], row["kind"]) for row in service.store.history(100)[::-1]]
    # The ungrouped rule reads 0 once the window is past the last change, and resolves.
    assert ("eu_refunds", "resolved") in kinds
    # The grouped one should too: its counter did not change either.
    assert ("refunds", "resolved") in kinds
    assert service.view() == []


def test_a_dry_run_replays_a_custom_rule(make_aegis: Callable[..., Aegis]) -> None:
    recording = Recording(make_aegis, "memory://")
    for second in range(1, 60, 5):
        recording.at(second, {"eu": 6})
    rule = custom("orders_surge", "custom_rate", "orders_total", threshold=0.5)
    # The live evaluation's figures breach from T0 + 32 on.
    assert values_of(collect(recording.reader, [rule], T0 + 52), [rule]) == {
        "orders_surge": {(): 1.2}
    }
    [replayed] = replay(recording.reader, [rule], start=T0, end=T0 + 60, step=10)
    assert replayed.health == ""
    assert [(t.kind, t.at - T0) for t in replayed.transitions] == [("firing", 30.0)]
    assert [p.start - T0 for p in replayed.periods] == [30.0]


# -- rules written over the API -------------------------------------------------------


async def tick(aegis: Aegis) -> None:
    assert aegis.alerts is not None
    await anyio.to_thread.run_sync(aegis.alerts.tick)


@pytest.mark.anyio
async def test_a_custom_rule_written_over_the_api(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    clock = FakeClock(wall=T0 - 9)
    aegis = make_aegis(
        sink=f"sqlite:///{tmp_path / 'aegis.db'}", clock=clock, access=ACCESS,
        alerts_enabled=True, alert_interval=3600, flush_interval=3600, metrics_registry="none",
    )  # fmt: skip
    assert await anyio.to_thread.run_sync(aegis.force_flush, 10.0)
    orders = aegis.counter("orders_total", "Orders placed.", ("region",))
    clock.advance(10)  # T0 + 1: bucket 0
    orders.labels("eu").inc(30)
    orders.labels("us").inc(3)
    assert await anyio.to_thread.run_sync(aegis.force_flush, 10.0)
    rule = {
        "name": "eu_orders", "input": "custom_increase", "metric": "orders_total",
        "match": {"region": "eu"}, "operator": ">", "threshold": 10, "window": "1m",
        "annotations": {"summary": "$value orders in eu"},
    }  # fmt: skip
    misread = {**rule, "name": "eu_orders_misread", "input": "custom_value"}
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)
    async with client(app) as http:
        made = await http.put(f"{API}/alert-rules", json=rule, headers=bearer(EDITOR))
        assert made.status_code == 201, made.text
        written = made.json()["data"]["rule"]
        assert (written["metric"], written["match"]) == ("orders_total", {"region": "eu"})
        # A rule that reads its metric wrongly is a valid rule: its health says why.
        assert (
            await http.put(f"{API}/alert-rules", json=misread, headers=bearer(EDITOR))
        ).status_code == 201
        # The service's windows settle a flush interval more: the window
        # [T0 - 40, T0 + 20) holds bucket 0.
        clock.advance(T0 + 3630 - clock.wall())
        await tick(aegis)
        listed = await http.get(f"{API}/alert-rules", headers=bearer(VIEWER))
        assert listed.status_code == 200, listed.text
        rules = {r["name"]: r for r in listed.json()["data"]["rules"]}
        alerts = (await http.get(f"{API}/alerts", headers=bearer(VIEWER))).json()["data"]
        bad_cases = [
            ({k: v for k, v in rule.items() if k != "metric"}, "metric"),
            ({**rule, "metric": "orders-total"}, "metric"),
            ({**rule, "match": "region=eu"}, "match"),
            ({**rule, "match": {"region": 1}}, "match"),
            ({**rule, "input": "error_ratio", "threshold": 0.5}, "metric"),
            ({**rule, "group_by": ["severity"]}, "group_by"),
            ({**rule, "group_by": ["bad-label"]}, "group_by"),
            ({**rule, "route": "/checkout"}, "route"),
            ({**rule, "method": "GET"}, "method"),
        ]
        for body, bad_field in bad_cases:
            answer = await http.put(f"{API}/alert-rules", json=body, headers=bearer(EDITOR))
            assert_bad_field(answer, bad_field)
        # Rules are written with PUT; a POST is refused whole.
        post = await http.post(f"{API}/alert-rules", json=rule, headers=bearer(EDITOR))
        assert post.status_code == 405
    got = rules["eu_orders"]
    assert (got["metric"], got["match"], got["input"]) == (
        "orders_total", {"region": "eu"}, "custom_increase",
    )  # fmt: skip
    assert (got["health"], got["source"]) == ("", "api")
    assert got["updated_by"].startswith("editor token 1")
    assert rules["eu_orders_misread"]["health"] == (
        "CustomInputError: custom_value reads a gauge; orders is a counter"
    )
    [alert] = alerts["alerts"]
    assert (alert["name"], alert["state"], alert["value"], alert["group"]) == (
        "eu_orders", "firing", 30.0, {},
    )  # fmt: skip
    assert alert["annotations"] == {"summary": "30 orders in eu"}
    # What is stored is what was written, and is read back into the same rule.
    assert aegis.alerts is not None
    [stored] = [r for r in aegis.alerts.api_rules if r.name == "eu_orders"]
    assert stored == rule_from_mapping(rule)
    assert len(aegis.alerts.api_rules) == 2  # the bad ones were not kept


# -- the Prometheus export ------------------------------------------------------------


def test_the_prometheus_export_writes_a_custom_rule_as_a_comment(tmp_path: Path) -> None:
    errors = AlertRule(name="checkout_errors", input="error_ratio", operator=">", threshold=0.05)
    rules = [SURGE, errors, custom("queue_deep", "custom_value", "queue_peak", threshold=9)]
    text = prometheus_rules(rules)
    lines = text.splitlines()
    for rule in (SURGE, rules[2]):
        assert rule.metric is not None
        comment = (
            f"      # {rule.name}: not exported: its input {rule.input!r} reads the stored "
            f"history of the app's metric {rule.metric}; its series are on /metrics"
        )
        assert comment in lines
        # Never an alert of its own, nor an expression over its metric.
        assert not any(rule.name in line and "alert:" in line for line in lines)
        assert not any(rule.metric in line for line in lines if "expr:" in line)
    assert '      - alert: "checkout_errors"' in lines
    assert sum(1 for line in lines if line.strip().startswith("- alert:")) == 1
    # Only custom rules: an empty group, with the comments.
    alone = prometheus_rules([SURGE])
    assert "    rules: []" in alone.splitlines() and "orders_total" in alone
    assert "expr:" not in alone
    # Prometheus's own tool reads both files.
    for name, content, count in (("all.yml", text, 1), ("alone.yml", alone, 0)):
        (tmp_path / name).write_text(content, encoding="utf-8")
        checked = run_promtool("check", "rules", name, cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {count} rules found" in checked.stdout

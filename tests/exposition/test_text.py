"""The renderer against prometheus-client's own parsers: escaping, numbers, both formats."""

from __future__ import annotations

import math

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from aegis_mw.exposition.collector import parse_label_text
from aegis_mw.exposition.text import Family, escape_label_value, label_text, number, render

AWKWARD = ['/a"quoted"/{id}', "/back\\slash", "/new\nline", "/plain", "/ünïcode/€"]


def families() -> list[Family]:
    counter = Family("demo_requests", "counter", "Requests.")
    gauge = Family("demo_in_progress", "gauge", "Now.", [("", "", 3)])
    histogram = Family("demo_seconds", "histogram", "Latency.")
    for route in AWKWARD:
        labels = label_text([("route", route)])
        counter.samples.append(("_total", labels, 7))
        running = 0
        for le, count in (("0.1", 1), ("1.0", 2), ("+Inf", 3)):
            running += count
            histogram.samples.append(("_bucket", f'{labels},le="{le}"', running))
        histogram.samples += [("_count", labels, running), ("_sum", labels, 2.5)]
    return [counter, gauge, histogram]


@pytest.mark.parametrize("openmetrics", [False, True])
def test_awkward_label_values_round_trip_through_the_parsers(openmetrics: bool) -> None:
    text = render(families(), openmetrics=openmetrics)
    parse = parse_openmetrics if openmetrics else parse_text
    parsed = {family.name: family for family in parse(text)}
    counter = parsed["demo_requests"]  # both parsers name a counter without _total
    assert sorted(s.labels["route"] for s in counter.samples) == sorted(AWKWARD)
    assert {s.value for s in counter.samples} == {7}
    histogram = parsed["demo_seconds"]
    buckets = [s for s in histogram.samples if s.name == "demo_seconds_bucket"]
    assert len(buckets) == 3 * len(AWKWARD)
    assert {s.labels["le"] for s in buckets} == {"0.1", "1.0", "+Inf"}
    assert parsed["demo_in_progress"].samples[0].value == 3
    assert text.endswith("# EOF\n") is openmetrics


def test_counter_type_lines_follow_each_format() -> None:
    plain = render(families(), openmetrics=False)
    assert "# TYPE demo_requests_total counter" in plain
    assert "# TYPE demo_requests counter" in render(families(), openmetrics=True)


def test_numbers_are_written_as_prometheus_does() -> None:
    assert [number(v) for v in (3, 2.5, math.inf, -math.inf, 0.1)] == [
        "3", "2.5", "+Inf", "-Inf", "0.1",
    ]  # fmt: skip
    assert number(math.nan) == "NaN"


def test_label_text_parses_back() -> None:
    pairs = [("route", value) for value in AWKWARD]
    for name, value in pairs:
        text = label_text([(name, value), ("method", "GET")])
        assert parse_label_text(text) == {name: value, "method": "GET"}
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'

"""The app's own metrics on /metrics: both text formats, promtool, the
Collector, and several processes' figures added up (their snapshot files)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from aegis_mw import Aegis
from aegis_mw.exposition.multiprocess import ARCHIVE, encode
from tests.servers import promtool_checks


def samples(text: str, *, openmetrics: bool = False) -> dict[tuple[str, tuple[Any, ...]], float]:
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse(text)
        for sample in family.samples
    }


def declare(aegis: Aegis) -> tuple[Any, Any, Any]:
    counter = aegis.counter("orders_total", "Orders placed.", ("region",))
    gauge = aegis.gauge("jobs_running", "Jobs running now.")
    histogram = aegis.histogram("job_seconds", "Time a job took.", ("kind",), buckets=(0.5, 2))
    return counter, gauge, histogram


def test_every_kind_on_metrics_in_both_formats(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none", metrics_labels="service=shop")
    counter, gauge, histogram = declare(aegis)
    counter.labels("eu").inc(3)
    counter.labels('quote " back \\ new\nline').inc()
    gauge.set(7)
    histogram.labels("a").observe(0.5)
    histogram.labels("a").observe(1)
    histogram.labels("a").observe(9)
    response = aegis.metrics.endpoint.respond()
    text = response.body.decode()
    found = samples(text)
    shop = ("service", "shop")
    assert found[("orders_total", (("region", "eu"), shop))] == 3
    assert found[("orders_total", (("region", 'quote " back \\ new\nline'), shop))] == 1
    assert found[("jobs_running", (shop,))] == 7
    bucket = "job_seconds_bucket"
    assert found[(bucket, (("kind", "a"), ("le", "0.5"), shop))] == 1
    assert found[(bucket, (("kind", "a"), ("le", "2.0"), shop))] == 2
    assert found[(bucket, (("kind", "a"), ("le", "+Inf"), shop))] == 3
    assert found[("job_seconds_count", (("kind", "a"), shop))] == 3
    assert found[("job_seconds_sum", (("kind", "a"), shop))] == 10.5
    overflow = "aegis_custom_metric_overflow_total"
    assert found[(overflow, (("metric", "orders"), shop))] == 0
    assert "# TYPE orders_total counter" in text
    assert "# TYPE job_seconds histogram" in text
    promtool_checks(text)

    openmetrics = aegis.metrics.endpoint.respond(accept="application/openmetrics-text")
    found_om = samples(openmetrics.body.decode(), openmetrics=True)
    assert found_om[("orders_total", (("region", "eu"), shop))] == 3
    assert found_om[("job_seconds_count", (("kind", "a"), shop))] == 3


def test_the_overflow_counter_and_series(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none")
    counter = aegis.counter("logins_total", "Logins.", ("user",), max_series=2)
    for user in ("a", "b", "c", "d"):
        counter.labels(user).inc()
    found = samples(aegis.metrics.endpoint.respond().body.decode())
    assert found[("logins_total", (("user", "<overflow>"),))] == 2
    assert found[("aegis_custom_metric_overflow_total", (("metric", "logins"),))] == 2


def test_no_custom_metrics_no_custom_families(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none")
    assert "custom_metric_overflow" not in aegis.metrics.endpoint.respond().body.decode()


def test_the_collector_yields_them_for_a_registry_of_the_apps(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(metrics_registry="none")
    counter, _gauge, histogram = declare(aegis)
    counter.labels("us").inc(2)
    histogram.labels("b").observe(1)
    registry = CollectorRegistry()
    registry.register(aegis.metrics.collector())
    found = samples(generate_latest(registry).decode())
    assert found[("orders_total", (("region", "us"),))] == 2
    assert found[("job_seconds_count", (("kind", "b"),))] == 1
    assert found[("jobs_running", ())] == 0


def publish_as(directory: Path, pid: int, worker: Aegis) -> None:
    """The snapshot worker ``pid`` would publish of ``worker``'s figures."""
    data = encode(worker.metrics.read_own(), pid=pid, live=True)
    (directory / f"aegis_{pid}_0a0b0c0d.json").write_text(json.dumps(data))


def test_workers_add_up_and_a_dead_workers_gauges_leave(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    for pid, orders, jobs, seconds in ((living_pid, 5, 2, 0.25), (dead_pid, 7, 3, 3.0)):
        worker = make_aegis(metrics_registry="none")
        counter, gauge, histogram = declare(worker)
        counter.labels("eu").inc(orders)
        gauge.set(jobs)
        histogram.labels("a").observe(seconds)
        publish_as(tmp_path, pid, worker)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    counter, gauge, histogram = declare(aegis)
    counter.labels("eu").inc(1)
    counter.labels("us").inc(1)
    gauge.set(10)
    histogram.labels("a").observe(1)

    def check() -> None:
        found = samples(aegis.metrics.endpoint.respond().body.decode())
        assert found[("orders_total", (("region", "eu"),))] == 1 + 5 + 7
        assert found[("orders_total", (("region", "us"),))] == 1
        assert found[("jobs_running", ())] == 10 + 2  # the living worker's only
        assert found[("job_seconds_count", (("kind", "a"),))] == 3
        assert found[("job_seconds_sum", (("kind", "a"),))] == 4.25
        assert found[("job_seconds_bucket", (("kind", "a"), ("le", "0.5")))] == 1
        assert found[("job_seconds_bucket", (("kind", "a"), ("le", "2.0")))] == 2

    check()
    assert aegis.force_flush(10)  # publishes ours and archives the dead worker's file
    assert (tmp_path / ARCHIVE).exists()
    archived = json.loads((tmp_path / ARCHIVE).read_text())
    assert {entry["kind"] for entry in archived["custom"]} == {"counter", "histogram"}
    check()  # nothing lost or counted twice


@pytest.mark.parametrize(("mode", "expected"), [("sum", 9), ("max", 5), ("min", 4)])
def test_a_gauges_mode_combines_the_workers(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, mode: str, expected: int
) -> None:
    worker = make_aegis(metrics_registry="none")
    worker.gauge("queue_depth", "Depth.", multiprocess_mode=mode).set(5)
    publish_as(tmp_path, living_pid, worker)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    aegis.gauge("queue_depth", "Depth.", multiprocess_mode=mode).set(4)
    found = samples(aegis.metrics.endpoint.respond().body.decode())
    assert found[("queue_depth", ())] == expected


def test_a_metric_only_another_worker_declared_is_shown(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int
) -> None:
    worker = make_aegis(metrics_registry="none")
    worker.counter("exports_total", "Exports.").inc(4)
    publish_as(tmp_path, living_pid, worker)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    found = samples(aegis.metrics.endpoint.respond().body.decode())
    assert found[("exports_total", ())] == 4


def test_a_differently_declared_or_damaged_metric_is_left_out(
    tmp_path: Path,
    make_aegis: Callable[..., Aegis],
    living_pid: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = make_aegis(metrics_registry="none")
    worker.gauge("orders", "Orders as a gauge.").set(100)
    worker.counter("fine_total", "Fine.").inc(2)
    data = encode(worker.metrics.read_own(), pid=living_pid, live=True)
    base = data["custom"][0]  # the counter "fine"
    histogram = {**base, "kind": "histogram", "bounds": [1.0], "series": [[[1, 0, 0.5]]]}
    damaged = [
        {"name": "bad name", "kind": "counter"},
        {**base, "name": "broken", "series": [["x", "y", 1]]},
        {**base, "name": "not_a_list", "kind": "histogram"},
        {**histogram, "name": "infinite_bound", "bounds": [math.inf]},
        {**histogram, "name": "huge_bound", "bounds": [10**400]},
        {**histogram, "name": "negative_bound", "bounds": [-1.0]},
        {**histogram, "name": "nan_counts", "series": [[[math.nan, 0, 0.5]]]},
        {**histogram, "name": "le_label", "labels": ["le"], "series": [["x", [1, 0, 0.5]]]},
        {**histogram, "name": "lat_bucket"},
        {**base, "name": "huge_overflowed", "overflowed": math.inf},
        {**base, "name": "nan_overflowed", "overflowed": math.nan},
        {**base, "name": "huge_value", "series": [[10**400]]},
        {**base, "name": "negative_value", "series": [[-5]]},
        {**base, "name": "true_value", "series": [[True]]},
        {**base, "name": "twice", "labels": ["r", "r"], "series": [["a", "b", 1]]},
        {**base, "name": "env_clash", "labels": ["env"], "series": [["dev", 1]]},
        {**base, "name": "aegis_http_requests"},
        {**base, "name": "process_things"},
        {**base, "name": "fine_total"},  # a counter's family name never ends in _total
        {**base, "name": "x_total", "kind": "gauge", "mode": "sum"},
        {**base, "name": "bad_mode", "kind": "gauge", "mode": "average"},
        "not a metric",
    ]
    data["custom"] += damaged
    (tmp_path / f"aegis_{living_pid}_0a0b0c0d.json").write_text(json.dumps(data))
    aegis = make_aegis(
        metrics_registry="none", metrics_multiprocess_dir=str(tmp_path), metrics_labels="env=prod"
    )
    aegis.counter("orders_total", "Orders.").inc(1)
    left_out = {entry["name"] for entry in damaged if isinstance(entry, dict)}
    with caplog.at_level(logging.WARNING, logger="aegis_mw.metrics"):
        first = samples(aegis.metrics.endpoint.respond().body.decode())
        second = samples(aegis.metrics.endpoint.respond().body.decode())
    for found in (first, second):
        assert found[("orders_total", (("env", "prod"),))] == 1
        assert found[("fine_total", (("env", "prod"),))] == 2
        shown = {name.removesuffix("_total") for name, _ in found}
        assert not shown & left_out, shown & left_out
    answer = aegis.metrics.read_custom()
    assert [metric.name for metric in answer] == ["fine", "orders"]
    warnings = [record for record in caplog.records if "declared differently" in record.message]
    assert len(warnings) == 1  # once per name, not per scrape
    promtool_checks(aegis.metrics.endpoint.respond().body.decode())


def test_publishing_follows_a_change_of_custom_metrics_only(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    counter = aegis.counter("orders_total", "Orders.")
    assert aegis.force_flush(10)
    [mine] = tmp_path.glob("aegis_*_*.json")
    assert json.loads(mine.read_text())["custom"][0]["series"] == [[0]]
    counter.inc(6)  # no request: only the custom metric changed
    assert aegis.force_flush(10)
    assert json.loads(mine.read_text())["custom"][0]["series"] == [[6]]
    assert aegis.shutdown(10)
    assert json.loads(mine.read_text())["custom"][0]["series"] == [[6]]


def test_the_json_api_answers_every_workers_figures(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int
) -> None:
    import anyio
    import httpx
    from starlette.applications import Starlette

    from aegis_mw import AegisMiddleware

    worker = make_aegis(metrics_registry="none")
    counter, gauge, histogram = declare(worker)
    counter.labels("eu").inc(5)
    histogram.labels("a").observe(3)
    publish_as(tmp_path, living_pid, worker)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    counter, gauge, histogram = declare(aegis)
    counter.labels("eu").inc(1)
    gauge.set(math.inf)
    histogram.labels("a").observe(0.25)
    app = AegisMiddleware(Starlette(), aegis=aegis)

    async def ask(query: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.get(f"/api/metrics/custom-metrics{query}")

    response = anyio.run(ask, "")
    assert response.status_code == 200, response.text
    metrics = {metric["name"]: metric for metric in response.json()["data"]["metrics"]}
    assert metrics["orders"]["series"] == [{"labels": {"region": "eu"}, "value": 6}]
    assert metrics["orders"]["kind"] == "counter"
    assert metrics["jobs_running"]["series"] == [{"labels": {}, "value": None}]  # +Inf
    assert metrics["jobs_running"]["multiprocess_mode"] == "sum"
    assert metrics["job_seconds"]["buckets"] == [0.5, 2.0]
    assert metrics["job_seconds"]["series"] == [
        {"labels": {"kind": "a"}, "count": 2, "sum": 3.25, "buckets": [1, 0, 1]}
    ]
    only_one = anyio.run(ask, "?name=orders").json()["data"]["metrics"]
    assert [metric["name"] for metric in only_one] == ["orders"]
    by_sample_name = anyio.run(ask, "?name=orders_total").json()["data"]["metrics"]
    assert [metric["name"] for metric in by_sample_name] == ["orders"]
    assert anyio.run(ask, "?name=absent").json()["data"]["metrics"] == []
    refused = anyio.run(ask, "?name=a%00b")
    assert refused.status_code == 400
    assert refused.json()["error"]["parameter"] == "name"
    refused = anyio.run(ask, "?other=1")
    assert refused.status_code == 400


def test_the_streams_section_carries_at_most_its_bound_of_series(
    make_aegis: Callable[..., Aegis],
) -> None:
    from aegis_mw.realtime.sections import MAX_STREAM_SERIES, build

    aegis = make_aegis(metrics_registry="none")
    for name in ("a_total", "b_total", "c_total"):
        counter = aegis.counter(name, "Some.", ("n",))
        for number in range(300):
            counter.labels(str(number)).inc()
    aegis.gauge("d_small", "One label set.").set(-2)
    section = build(aegis, ["customMetrics"])["customMetrics"]
    metrics = section["metrics"]
    # Shared fairly: the small one takes its one, the others the rest in equal parts.
    assert [len(metric["series"]) for metric in metrics] == [167, 166, 166, 1]
    assert MAX_STREAM_SERIES == 500
    assert [metric["series_left_out"] for metric in metrics] == [133, 134, 134, 0]
    assert section["series_left_out"] == 401
    assert [metric["total"] for metric in metrics] == [300, 300, 300, -2]  # every label set
    assert metrics[1]["series"][0] == {"labels": {"n": "0"}, "value": 1}
    aegis.gauge("e_infinite", "Not finite.").set(math.inf)
    section = build(aegis, ["customMetrics"])["customMetrics"]
    assert section["metrics"][-1]["total"] is None  # JSON has no infinity
    from aegis_mw.realtime.protocol import metrics as frame

    frame("2026-12-05T00:00:00Z", {"customMetrics": section})  # encodes: no NaN or Infinity


def test_custom_figures_are_added_even_where_the_request_buckets_differ(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int
) -> None:
    """The request histogram's buckets keep a file's request figures out of the
    sum; its custom metrics do not depend on them, so /metrics and the JSON API
    say the same."""
    worker = make_aegis(metrics_registry="none", metrics_buckets=[0.5, 1])
    worker.counter("orders_total", "Orders.").inc(10)
    publish_as(tmp_path, living_pid, worker)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    aegis.counter("orders_total", "Orders.").inc(1)
    found = samples(aegis.metrics.endpoint.respond().body.decode())
    assert found[("orders_total", ())] == 11
    [orders] = aegis.metrics.read_custom()
    assert orders.series == {(): 11}


def test_after_a_changed_declaration_the_dead_workers_newer_figures_are_kept(
    tmp_path: Path, make_aegis: Callable[..., Aegis], dead_pid: int
) -> None:
    """A reload with new code: the archive holds the metric as it was declared
    before, a worker of the new code dies; its figures win over the archive's."""
    old = make_aegis(metrics_registry="none")
    old.counter("orders_total", "Orders.").inc(100)
    archived = encode(old.metrics.read_own(), pid=0, live=False)
    (tmp_path / ARCHIVE).write_text(json.dumps(archived))
    new = make_aegis(metrics_registry="none")
    new.counter("orders_total", "Orders.", ("region",)).labels("eu").inc(50)
    publish_as(tmp_path, dead_pid, new)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    aegis.counter("orders_total", "Orders.", ("region",)).labels("eu").inc(1)
    assert aegis.force_flush(10)  # archives the dead worker
    found = samples(aegis.metrics.endpoint.respond().body.decode())
    assert found[("orders_total", (("region", "eu"),))] == 51


def test_metric_is_no_constant_label(make_aegis: Callable[..., Aegis]) -> None:
    """The overflow counter's own label: a constant label of that name would
    give its series the label twice."""
    from aegis_mw import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_aegis(metrics_labels="metric=m")
    assert caught.value.option == "metrics_labels"


def test_a_file_nested_past_the_parser_is_skipped(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int
) -> None:
    (tmp_path / f"aegis_{living_pid}_0a0b0c0d.json").write_text("[" * 100_000)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    aegis.counter("orders_total", "Orders.").inc(2)
    found = samples(aegis.metrics.endpoint.respond().body.decode())
    assert found[("orders_total", ())] == 2
    assert [metric.series for metric in aegis.metrics.read_custom()] == [{(): 2}]


def test_a_sum_past_2_53_reaches_the_other_workers(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int
) -> None:
    worker = make_aegis(metrics_registry="none")
    counter = worker.counter("bytes_total", "Bytes.")
    for _ in range(1100):
        counter.inc(2**53)
    publish_as(tmp_path, living_pid, worker)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    [bytes_sent] = aegis.metrics.read_custom()
    assert bytes_sent.series == {(): 1100 * 2.0**53}


@pytest.mark.parametrize(
    "custom",
    [None, "text", {"name": "x"}, [None], [{"name": "bad name", "kind": "counter"}], [[1, 2]]],
)
def test_a_live_frames_damaged_custom_part_is_left_out(custom: Any) -> None:
    """What another host sent in its frame (``live_transport``) is read by the
    same rules as a file: never a failed read, nothing of it shown."""
    from aegis_mw.core.custom_merge import CustomMerge
    from aegis_mw.core.live_share import SUMMED, Peers

    peers = Peers()
    assert peers.add({"slots": [], "totals": [0] * SUMMED, "custom": custom}, live=True)
    merge = CustomMerge(())
    for data, live in peers.custom:
        merge.add(data, live=live)
    assert merge.reading() == ()

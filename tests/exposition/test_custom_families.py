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
    damaged = [
        {"name": "bad name", "kind": "counter"},
        {**data["custom"][0], "name": "broken", "series": [["x", "y", 1]]},
        {**data["custom"][0], "name": "nan_bucket", "kind": "histogram", "mode": ""},
        {**data["custom"][0], "name": "infinite_bound", "bounds": [math.inf]},
        "not a metric",
    ]
    data["custom"] += damaged
    (tmp_path / f"aegis_{living_pid}_0a0b0c0d.json").write_text(json.dumps(data))
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    aegis.counter("orders_total", "Orders.").inc(1)
    with caplog.at_level(logging.WARNING, logger="aegis_mw.metrics"):
        first = samples(aegis.metrics.endpoint.respond().body.decode())
        second = samples(aegis.metrics.endpoint.respond().body.decode())
    for found in (first, second):
        assert found[("orders_total", ())] == 1
        assert found[("fine_total", ())] == 2
        assert not {name for name, _ in found} & {"broken", "nan_bucket", "infinite_bound"}
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
    assert anyio.run(ask, "?name=absent").json()["data"]["metrics"] == []
    refused = anyio.run(ask, "?name=a%00b")
    assert refused.status_code == 400
    assert refused.json()["error"]["parameter"] == "name"
    refused = anyio.run(ask, "?other=1")
    assert refused.status_code == 400

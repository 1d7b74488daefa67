"""The OTLP sink against a real OTLP/HTTP receiver on 127.0.0.1: what arrives
under load, a receiver that is down and comes back, refusals, partial
successes, Retry-After, headers, TLS, events as logs, and bad URLs."""

from __future__ import annotations

import logging
import math
import os
import ssl
import subprocess
import sys
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import aegis_mw
from aegis_mw import Aegis, Batch, ConfigError, RecordRejected
from aegis_mw.contrib.starlette import install
from aegis_mw.core.retry_after import retry_after
from aegis_mw.core.stats import SinkStats
from aegis_mw.sinks import build_sinks
from aegis_mw.sinks.otlp import MAX_PAUSE, CollectorUnavailable, OtlpSink
from aegis_mw.sinks.otlp_encode import BOUNDS
from aegis_mw.testing import MemorySink
from tests.conftest import compiled_module
from tests.core.faulty_sinks import accounted
from tests.harness import inbox_item
from tests.servers import free_port
from tests.sinks.otlp_receiver import (
    Receiver,
    Reply,
    attributes,
    metrics,
    partial,
    refusal,
    self_signed,
)
from tests.sinks.test_sqlite import make_request, make_session

DURATION = "http.server.request.duration"
SESSIONS = "aegis.websocket.sessions"
DELTA = 1  # AGGREGATION_TEMPORALITY_DELTA
ROUNDS_LIMIT = 50  # force_flush calls a test may make before it gives up
FLUSH_TIMEOUT = 10.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


@pytest.fixture
def otel_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable of the machine's reaches these tests."""
    for name in (
        "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
        "OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


pytestmark = pytest.mark.usefixtures("otel_environ")


def otlp_stats(aegis: Aegis) -> SinkStats:
    [found] = [sink for sink in aegis.stats().sinks if sink.name.startswith("otlp:")]
    return found


def histogram_totals(messages: list[Any]) -> dict[tuple[Any, ...], list[Any]]:
    """(method, route or None, status, error.type or None) -> [count, sum, buckets]."""
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for _, metric in metrics(messages, DURATION):
        for point in metric.histogram.data_points:
            found = attributes(point.attributes)
            key = (
                found["http.request.method"],
                found.get("http.route"),
                found["http.response.status_code"],
                found.get("error.type"),
            )
            total = totals.setdefault(key, [0, 0.0, [0] * (len(BOUNDS) + 1)])
            total[0] += point.count
            total[1] += point.sum
            total[2] = [a + b for a, b in zip(total[2], point.bucket_counts, strict=True)]
    return totals


def served_count(messages: list[Any]) -> int:
    return sum(total[0] for total in histogram_totals(messages).values())


def flush_until_done(aegis: Aegis) -> None:
    """force_flush until every sink took everything (a refusal's search may
    take several rounds), at most ROUNDS_LIMIT times."""
    for _ in range(ROUNDS_LIMIT):
        if aegis.force_flush(FLUSH_TIMEOUT):
            return
    pytest.fail(f"not written after {ROUNDS_LIMIT} flushes: {otlp_stats(aegis)}")


# -- an app under load ------------------------------------------------------------------


def otlp_app() -> Starlette:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("item")

    async def create(request: Request) -> PlainTextResponse:
        return PlainTextResponse("made", status_code=201)

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("kaboom")

    async def teapot(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=418)

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/items", create, methods=["POST"]),
            Route("/boom", boom),
            Route("/teapot/{kind}", teapot),
        ]
    )


#: (method, path for request number n, the route template, or None when unmatched)
TRAFFIC: list[tuple[str, Callable[[int], str], str | None]] = [
    ("GET", lambda n: f"/items/{n}", "/items/{item_id}"),
    ("GET", lambda n: f"/items/{n}", "/items/{item_id}"),
    ("HEAD", lambda n: f"/items/{n}", "/items/{item_id}"),
    ("POST", lambda n: "/items", "/items"),
    ("GET", lambda n: "/boom", "/boom"),
    ("GET", lambda n: f"/teapot/{n}", "/teapot/{kind}"),
    ("GET", lambda n: f"/nowhere/{n}", None),
]
REQUESTS = 3_000
WORKERS = 8


@pytest.mark.anyio
async def test_an_app_under_load_arrives_as_delta_histograms(
    receiver: Receiver, make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of requests over several routes and statuses, flushed in the
    background in many batches: the histogram counts per (method, route,
    status) add up to what was served, with the sums, bucket counts, minima
    and maxima of the durations recorded, route templates and never a path,
    the resource and scope, DELTA points that adjoin each other."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=a%2Cb")
    receiver.start()
    memory = MemorySink()
    aegis = make_aegis(
        sink=[receiver.url, memory], flush_interval=0.05, batch_size=400, metrics_registry="none"
    )
    app = otlp_app()
    install(app, aegis=aegis)
    served: Counter[tuple[str, str | None, int]] = Counter()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

        async def work(first: int) -> None:
            for number in range(first, REQUESTS, WORKERS):
                method, path, route = TRAFFIC[number % len(TRAFFIC)]
                response = await client.request(method, path(number))
                served[method, route, response.status_code] += 1

        async with anyio.create_task_group() as group:
            for first in range(WORKERS):
                group.start_soon(work, first)
    assert await anyio.to_thread.run_sync(aegis.force_flush, FLUSH_TIMEOUT)

    taken = receiver.taken()
    assert len(taken) >= REQUESTS // 400  # many batches, each its own export
    totals = histogram_totals(taken)
    by_key = Counter[tuple[str, str | None, int]]()
    for (method, route, status, _), total in totals.items():
        by_key[method, route, status] += total[0]
    assert by_key == served
    assert {status for _, _, status in served} == {200, 201, 404, 418, 500}

    # Exactly the durations recorded (the memory sink got the same records).
    assert len(memory.requests) == REQUESTS
    expected: dict[tuple[Any, ...], list[Any]] = {}
    for record in memory.requests:
        error_type = record.error.partition(": ")[0] if record.error else None
        route = None if record.route == "<unmatched>" else record.route
        key = (record.method, route, record.status, error_type or (
            str(record.status) if record.status >= 500 else None))  # fmt: skip
        total = expected.setdefault(key, [0, 0.0, [0] * (len(BOUNDS) + 1)])
        seconds = record.duration_ms / 1000
        total[0] += 1
        total[1] += seconds
        total[2][bisect_left(BOUNDS, seconds)] += 1
    assert totals.keys() == expected.keys()
    for key, (count, seconds, buckets) in expected.items():
        assert totals[key][0] == count
        assert totals[key][2] == buckets
        assert math.isclose(totals[key][1], seconds, rel_tol=1e-9, abs_tol=1e-12)
    assert ("GET", "/boom", 500, "RuntimeError") in totals

    # Paths that are not their own template ("/items/17"): never an attribute.
    paths = {record.path for record in memory.requests if record.path != record.route}
    assert len(paths) > REQUESTS // 2
    previous_end = 0
    for (resource, scope), metric in metrics(taken, DURATION):
        assert (metric.unit, metric.histogram.aggregation_temporality) == ("s", DELTA)
        found = attributes(resource.attributes)
        assert found["service.name"] == "shop"
        assert found["deployment.environment"] == "test"
        assert found["team"] == "a,b"
        assert len(found["service.instance.id"]) == 36
        assert (scope.name, scope.version) == ("aegis_mw", aegis_mw.__version__)
        starts = {point.start_time_unix_nano for point in metric.histogram.data_points}
        ends = {point.time_unix_nano for point in metric.histogram.data_points}
        assert len(starts) == len(ends) == 1
        [start], [end] = starts, ends
        assert start < end
        assert previous_end in (0, start)  # each export begins where the last ended
        previous_end = end
        for point in metric.histogram.data_points:
            assert list(point.explicit_bounds) == list(BOUNDS)
            assert sum(point.bucket_counts) == point.count > 0
            assert point.min <= point.sum / point.count <= point.max
            values = attributes(point.attributes).values()
            assert not paths & {value for value in values if isinstance(value, str)}
    stats = await anyio.to_thread.run_sync(otlp_stats, aegis)  # takes a lock: off the loop
    assert (stats.written, stats.backlog, stats.errors) == (REQUESTS, 0, 0)
    assert not any(stats.dropped.values())


@pytest.mark.anyio
@pytest.mark.parametrize("speedups", [True, False], ids=["compiled", "python"])
async def test_with_a_sample_rate_every_request_is_still_counted(
    receiver: Receiver, make_aegis: Callable[..., Aegis], speedups: bool
) -> None:
    """``sample_rate`` thins the log, not the counts: the collector gets every
    request in its histograms while the log beside it keeps a sample (every
    500 among it), whichever loop built the records."""
    if speedups:
        compiled_module()  # skips where it was not built (fails in CI)
    receiver.start()
    log = MemorySink()
    aegis = make_aegis(
        sink=[receiver.url, log], sample_rate=0.1, flush_interval=0.05, batch_size=400,
        metrics_registry="none", speedups=speedups,
    )  # fmt: skip
    assert aegis.finalizer.compiled is speedups
    app = otlp_app()
    install(app, aegis=aegis)
    served: Counter[tuple[str, str | None, int]] = Counter()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for number in range(REQUESTS // 3):
            method, path, route = TRAFFIC[number % len(TRAFFIC)]
            response = await client.request(method, path(number))
            served[method, route, response.status_code] += 1
    assert await anyio.to_thread.run_sync(aegis.force_flush, FLUSH_TIMEOUT)

    by_key = Counter[tuple[str, str | None, int]]()
    for (method, route, status, _), total in histogram_totals(receiver.taken()).items():
        by_key[method, route, status] += total[0]
    assert by_key == served
    errors = sum(count for (_, _, status), count in served.items() if status >= 500)
    assert sum(record.status >= 500 for record in log.requests) == errors
    assert errors < len(log.requests) < REQUESTS // 6  # 1 in 10 of the 6/7 not kept anyway
    stats = await anyio.to_thread.run_sync(aegis.stats)
    assert stats.sampled_out == REQUESTS // 3 - len(log.requests)
    assert otlp_stats(aegis).written == REQUESTS // 3
    # Each sink's figures add up to what was offered: the sample's for the log.
    assert [sink.counts_every_request for sink in stats.sinks] == [True, False]
    assert accounted(stats, 0) == accounted(stats, 1) == stats.offered == REQUESTS // 3


def test_sessions_are_counted_by_route_and_close_code(receiver: Receiver) -> None:
    """WebSocket sessions: a DELTA monotonic count per route, close code and
    accepted; no http.route for one no route matched."""
    receiver.start()
    sink = OtlpSink(receiver.url)
    sessions = [
        make_session(1, close_code=1000),
        make_session(2, close_code=1000),
        make_session(3, close_code=1006),
        make_session(4, close_code=None),
        make_session(5, route="<unmatched>", close_code=1008, accepted=False),
    ]
    sink.write(Batch(sessions=sessions, batch_id="s1"))

    [(_, metric)] = metrics(receiver.taken(), SESSIONS)
    assert metric.unit == "{session}"
    assert metric.sum.is_monotonic and metric.sum.aggregation_temporality == DELTA
    counts = {
        tuple(sorted(attributes(point.attributes).items())): point.as_int
        for point in metric.sum.data_points
    }
    route = ("http.route", "/ws/{room}")
    accepted = ("aegis.websocket.accepted", True)
    assert counts == {
        (accepted, ("aegis.websocket.close_code", 1000), route): 2,
        (accepted, ("aegis.websocket.close_code", 1006), route): 1,
        (accepted, route): 1,
        (("aegis.websocket.accepted", False), ("aegis.websocket.close_code", 1008)): 1,
    }
    assert not metrics(receiver.taken(), DURATION)  # no requests: no histogram


def test_traced_requests_are_their_points_exemplars(receiver: Receiver) -> None:
    """Each bucket of a point gets the batch's last traced request that fell
    in it as an exemplar (its duration, end time, trace and span); untraced
    requests and ids that are not well formed give none."""
    receiver.start()
    sink = OtlpSink(receiver.url)
    trace = [f"{n:x}" * 32 for n in range(1, 5)]
    records = [
        make_request(0, duration_ms=2.0, trace_id=trace[0], span_id="1" * 16),
        make_request(1, duration_ms=3.0, trace_id=trace[1], span_id="2" * 16),  # same bucket
        make_request(2, duration_ms=300.0, trace_id=trace[2]),  # no span id
        make_request(3, duration_ms=40.0),  # untraced
        make_request(4, duration_ms=60.0, trace_id="not-hex", span_id="2" * 16),  # by hand
        make_request(5, duration_ms=2.0, status=500, trace_id=trace[3], span_id="4" * 16),
    ]
    # By hand, after a good one in the same bucket: a bad id, and an end no
    # OTLP time can carry; stored and counted, their buckets keep the good one.
    records += [
        make_request(6, duration_ms=3.5, trace_id="f" * 31 + "z"),
        make_request(7, duration_ms=300.5, timestamp=math.nan, trace_id=trace[0]),
    ]
    sink.write(Batch(records, batch_id="t1"))
    marks = {
        (attributes(point.attributes)["http.response.status_code"], exemplar.trace_id.hex()): (
            exemplar.span_id.hex(), exemplar.as_double, exemplar.time_unix_nano,
        )
        for _, metric in metrics(receiver.taken(), DURATION)
        for point in metric.histogram.data_points
        for exemplar in point.exemplars
    }  # fmt: skip
    end_ns = int((records[1].timestamp + 0.003) * 1e9)
    assert marks == {
        (200, trace[1]): ("2" * 16, 0.003, end_ns),
        (200, trace[2]): ("", 0.3, int((records[2].timestamp + 0.3) * 1e9)),
        (500, trace[3]): ("4" * 16, 0.002, int((records[5].timestamp + 0.002) * 1e9)),
    }
    assert served_count(receiver.taken()) == 8


def test_a_forked_worker_counts_its_own_rejections_only(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers' snapshot files are summed: a child must not repeat the
    parent's partial successes (nor count down on a negative one)."""
    receiver.start()
    receiver.decide = lambda path, message: partial(2, "points too old")
    sink = OtlpSink(receiver.url)
    sink.write(Batch([make_request(1)]))
    assert sink.rejected_by_store == {"data_points": 2}
    monkeypatch.setattr(os, "getpid", lambda: os.getppid() + 10**6)  # as in a forked child
    assert sink.rejected_by_store == {"data_points": 0}
    receiver.decide = lambda path, message: partial(-3, "odd")
    sink.write(Batch([make_request(2)]))
    assert sink.rejected_by_store == {"data_points": 0}


# -- the receiver away ------------------------------------------------------------------


def test_receiver_down_then_back_delivers_everything_once(make_aegis: Callable[..., Aegis]) -> None:
    """Nothing listening: records are kept, each flush tries again and fails,
    counted; once a receiver listens on the port, everything arrives, once."""
    receiver = Receiver(free_port())
    sink = OtlpSink(receiver.url)
    aegis = make_aegis(sink=sink, flush_interval=3600, batch_size=500)
    routes = ("/a", "/b/{id}", "/c")
    for number in range(1_200):
        aegis.recorder.offer(
            inbox_item(f"/p/{number}", route=routes[number % 3], status=200 + number % 2,
                       end=1000.0 + (number % 50) / 1000)
        )  # fmt: skip
    try:
        assert aegis.force_flush(FLUSH_TIMEOUT) is False
        assert aegis.force_flush(FLUSH_TIMEOUT) is False
        down = otlp_stats(aegis)
        assert (down.written, down.backlog) == (0, 1_200)
        assert down.errors >= 2 and down.consecutive_failures >= 2
        assert "CollectorUnavailable" in down.last_error
        assert "ConnectionRefusedError" in down.last_error
        assert not any(down.dropped.values())

        receiver.start()
        flush_until_done(aegis)
    finally:
        receiver.stop()
    assert served_count(receiver.taken()) == 1_200
    totals = histogram_totals(receiver.taken())
    assert {(key[1], key[2]): total[0] for key, total in totals.items()} == {
        ("/a", 200): 200, ("/a", 201): 200, ("/b/{id}", 200): 200,
        ("/b/{id}", 201): 200, ("/c", 200): 200, ("/c", 201): 200,
    }  # fmt: skip
    back = otlp_stats(aegis)
    assert (back.written, back.backlog, back.consecutive_failures) == (1_200, 0, 0)
    assert not any(back.dropped.values())


def test_with_a_spool_an_outage_waits_on_disk_and_is_replayed_once(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """The sink is remote: with spool_dir, batches the collector could not
    take are kept in the spool file and replayed, once, when it is back."""
    receiver = Receiver(free_port())
    aegis = make_aegis(
        sink=OtlpSink(receiver.url), flush_interval=3600, spool_dir=str(tmp_path / "spool"),
        retry_backoff_initial=0.01, retry_backoff_max=0.01,
    )  # fmt: skip
    for number in range(500):
        aegis.recorder.offer(inbox_item(f"/p/{number}", route="/r"))
    aegis.force_flush(FLUSH_TIMEOUT)
    down = otlp_stats(aegis)
    assert (down.spooled, down.spool_records) == (500, 500)
    assert "ConnectionRefusedError" in down.spool_error
    receiver.start()
    try:
        deadline = time.monotonic() + 30
        for _ in range(10_000):  # the replay waits out the 10 ms backoff
            aegis.force_flush(FLUSH_TIMEOUT)
            if otlp_stats(aegis).spool_records == 0:
                break
            assert time.monotonic() < deadline, otlp_stats(aegis)
    finally:
        receiver.stop()
    assert served_count(receiver.taken()) == 500
    assert otlp_stats(aegis).replayed == 500


def test_503_with_retry_after_pauses_the_sink(receiver: Receiver) -> None:
    """A 503 keeps the batch (raised for the flusher's backoff); its
    Retry-After is honoured: until then a write fails without sending, and
    the pause is capped."""
    receiver.start()
    receiver.decide = lambda path, message: refusal(503, "overloaded", **{"Retry-After": "3600"})
    sink = OtlpSink(receiver.url)
    batch = Batch([make_request(1)], batch_id="b1")
    with pytest.raises(CollectorUnavailable, match="answered 503: overloaded"):
        sink.write(batch)
    assert receiver.count() == 1
    receiver.decide = lambda path, message: Reply()
    with pytest.raises(CollectorUnavailable, match=r"Retry-After\); (\d+\.\d) s left") as caught:
        sink.write(batch)
    left = float(caught.value.args[0].rsplit("; ", 1)[1].split()[0])
    assert MAX_PAUSE - 10 < left <= MAX_PAUSE  # capped: 3600 asked
    assert receiver.count() == 1  # nothing sent while paused


@pytest.mark.parametrize("status", [429, 502, 504, 500, 401, 404])
def test_other_answers_keep_the_batch(receiver: Receiver, status: int) -> None:
    """429, 5xx and the other 4xx (a wrong token or path, fixed by
    configuration) keep the batch for retries; nothing is counted as refused."""
    receiver.start()
    receiver.decide = lambda path, message: refusal(status, f"no ({status})")
    sink = OtlpSink(receiver.url)
    with pytest.raises(CollectorUnavailable, match=f"answered {status}: no"):
        sink.write(Batch([make_request(1)], batch_id="b1"))
    assert sink.refused == 0
    receiver.decide = lambda path, message: Reply()
    sink.write(Batch([make_request(1)], batch_id="b1"))
    assert served_count(receiver.taken()) == 1


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), ("0", 0.0), ("-5", 0.0), ("soon", None), (None, None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after(value) == seconds


def test_a_future_http_date_is_a_wait() -> None:
    from email.utils import formatdate

    waited = retry_after(formatdate(time.time() + 100, usegmt=True))
    assert waited is not None and 90 < waited <= 100


# -- refusals ----------------------------------------------------------------------------


def refuse_route(route: str) -> Callable[[str, Any], Reply]:
    """A collector that refuses (400) any request holding a point of ``route``."""

    def decide(path: str, message: Any) -> Reply:
        for _, metric in metrics([message], DURATION):
            for point in metric.histogram.data_points:
                if attributes(point.attributes).get("http.route") == route:
                    return refusal(400, f"route {route} is not allowed")
        return Reply()

    return decide


def test_400_sets_aside_only_what_the_collector_refuses(
    receiver: Receiver, make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    """A 400 is a refusal of the content: the flusher narrows it down to the
    records refused, sets those aside (counted ``rejected``, logged with the
    collector's message) and delivers every other record once."""
    receiver.start()
    receiver.decide = refuse_route("/poison")
    sink = OtlpSink(receiver.url)
    aegis = make_aegis(sink=sink, flush_interval=3600)
    poisoned = {37, 150, 151}
    for number in range(400):
        route = "/poison" if number in poisoned else "/fine"
        aegis.recorder.offer(inbox_item(f"/p/{number}", route=route))
    with caplog.at_level(logging.WARNING, logger="aegis_mw.flusher"):
        flush_until_done(aegis)

    assert served_count(receiver.taken()) == 400 - len(poisoned)
    assert {key[1] for key in histogram_totals(receiver.taken())} == {"/fine"}
    stats = otlp_stats(aegis)
    assert stats.dropped["rejected"] == len(poisoned)
    assert (stats.written, stats.backlog) == (400 - len(poisoned), 0)
    assert sink.refused >= len(poisoned)
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and "route /poison is not allowed" in refused[0]
    assert len(refused) == 1  # once per burst


def test_a_collector_refusing_everything_is_an_outage(
    receiver: Receiver, make_aegis: Callable[..., Aegis]
) -> None:
    """A 400 for every request, records alone too: not a batch of bad records
    but a collector that cannot take any; nothing is dropped, the records wait
    (retried with backoff) and arrive once it takes them again."""
    receiver.start()
    receiver.decide = lambda path, message: refusal(400, "schema mismatch")
    sink = OtlpSink(receiver.url)
    aegis = make_aegis(sink=sink, flush_interval=3600)
    for number in range(300):
        aegis.recorder.offer(inbox_item(f"/p/{number}", route="/r"))
    assert aegis.force_flush(FLUSH_TIMEOUT) is False
    stats = otlp_stats(aegis)
    assert (stats.written, stats.backlog, stats.dropped["rejected"]) == (0, 300, 0)
    assert "refused every record" in stats.last_error
    assert "schema mismatch" in stats.last_error
    attempts = receiver.count()
    assert attempts < 40  # a search of about 2 log2(n) + 8 requests, then backoff

    receiver.decide = lambda path, message: Reply()
    flush_until_done(aegis)
    assert served_count(receiver.taken()) == 300
    assert not any(otlp_stats(aegis).dropped.values())


def test_413_is_answered_with_smaller_requests(
    receiver: Receiver, make_aegis: Callable[..., Aegis]
) -> None:
    """Too large: the flusher's halving sends smaller batches, and all arrive."""
    receiver.start()

    def decide(path: str, message: Any) -> Reply:
        if len(message.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points) > 8:
            return refusal(413, "request too large")
        return Reply()

    receiver.decide = decide
    aegis = make_aegis(sink=OtlpSink(receiver.url), flush_interval=3600)
    for number in range(64):
        aegis.recorder.offer(inbox_item(f"/p/{number}", route=f"/r{number % 32}"))
    flush_until_done(aegis)
    assert served_count(receiver.taken()) == 64
    stats = otlp_stats(aegis)
    assert (stats.written, stats.dropped["rejected"]) == (64, 0)


def test_a_record_protobuf_cannot_hold_is_refused_here(receiver: Receiver) -> None:
    """A record built by hand with a lone surrogate or a time that is not a
    number is refused before anything is sent, so the flusher can set it aside."""
    receiver.start()
    sink = OtlpSink(receiver.url)
    for bad in (make_request(1, route="/\udce9"), make_request(2, duration_ms=math.nan)):
        with pytest.raises(RecordRejected, match="not encodable as OTLP"):
            sink.write(Batch([make_request(0), bad]))
    assert receiver.count() == 0


def test_partial_success_is_counted_and_logged_once_per_burst(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A 200 with a partial success: stored (no retry), the points the
    collector dropped counted, one warning for the burst."""
    receiver.start()
    receiver.decide = lambda path, message: partial(2, "points too old")
    sink = OtlpSink(receiver.url)
    with caplog.at_level(logging.WARNING, logger="aegis_mw.sinks.otlp"):
        for number in range(5):
            sink.write(Batch([make_request(number, route=f"/r{number % 3}")]))
    assert sink.rejected_points == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "aegis_mw.sinks.otlp"]
    assert len(lines) == 1
    assert "rejected 2 data points: points too old" in lines[0]


def test_what_the_collector_dropped_itself_is_in_stats_and_on_metrics(
    receiver: Receiver, make_aegis: Callable[..., Aegis]
) -> None:
    """The partial successes' counts reach ``aegis.stats()`` and
    ``aegis_sink_rejected_total``, which shows 0 before any (an alert can
    watch it from the start)."""
    receiver.start()
    sink = OtlpSink(receiver.url)
    aegis = make_aegis(sink=sink, flush_interval=3600, metrics_registry="none")

    def rejected_series() -> dict[str, float]:
        text = aegis.metrics.endpoint.respond().body.decode()
        return {
            sample.labels["kind"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "aegis_sink_rejected_total" and sample.labels["sink"] == sink.name
        }

    assert rejected_series() == {"data_points": 0}
    receiver.decide = lambda path, message: partial(3, "points too old")
    aegis.recorder.offer(inbox_item("/p/1", route="/fine"))
    flush_until_done(aegis)
    assert otlp_stats(aegis).rejected == {"data_points": 3}
    assert rejected_series() == {"data_points": 3}


def test_a_stored_batch_the_flusher_retries_is_not_sent_again(receiver: Receiver) -> None:
    """A batch whose write the flusher gave up waiting for, but that was
    stored, comes again under the same id: it is recognised, not counted twice."""
    receiver.start()
    sink = OtlpSink(receiver.url)
    batch = Batch([make_request(n) for n in range(3)], batch_id="abc.1")
    sink.write(batch)
    sink.write(batch)
    sink.write(Batch([make_request(n) for n in range(3, 5)], batch_id="abc.2"))
    assert served_count(receiver.taken()) == 5


# -- headers, TLS, events ---------------------------------------------------------------


def test_headers_from_the_environment_arrive(
    receiver: Receiver, make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_EXPORTER_OTLP_HEADERS (percent-decoded, blanks trimmed) arrive
    with every request; the metrics' own variable replaces it; the body is
    gzipped protobuf; the path prefix of the URL is kept."""
    receiver.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", " api-key = s%3Dcr%2Cet , x-tenant=blue,")
    aegis = make_aegis(sink=f"{receiver.url}/otlp/", flush_interval=3600)
    aegis.recorder.offer(inbox_item("/p/1", route="/r"))
    assert aegis.force_flush(FLUSH_TIMEOUT)
    [arrival] = receiver.arrivals
    assert arrival.path == "/otlp/v1/metrics"
    headers = {name.lower(): value for name, value in arrival.headers.items()}
    assert headers["api-key"] == "s=cr,et"
    assert headers["x-tenant"] == "blue"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-encoding"] == "gzip"
    assert headers["user-agent"] == f"aegis_mw/{aegis_mw.__version__}"

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "authorization=Bearer%20t0k")
    sink = OtlpSink(f"{receiver.url}/otlp")
    sink.write(Batch([make_request(1)]))
    headers = {name.lower(): value for name, value in receiver.arrivals[-1].headers.items()}
    assert headers["authorization"] == "Bearer t0k"
    assert "api-key" not in headers


@pytest.mark.parametrize(
    "value", ["novalue", "=x", "a=1,,b", "bad name=1", "x=a%0Db"]
)  # fmt: skip
def test_bad_headers_are_a_config_error_without_the_value(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry without "=" (an empty one is skipped), a name that is no HTTP
    token, a value with CR: named by its variable, the values never shown."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"{value},secret=hunter2")
    with pytest.raises(ConfigError) as caught:
        OtlpSink("otlp+http://127.0.0.1:4318")
    assert caught.value.option == "OTEL_EXPORTER_OTLP_HEADERS"
    assert "hunter2" not in str(caught.value)


def test_otlp_https_with_a_private_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """otlp+https: the collector's certificate checked against
    OTEL_EXPORTER_OTLP_CERTIFICATE; without it, an untrusted one is a failure
    that keeps the batch."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    receiver = Receiver(tls=context).start()
    try:
        untrusting = OtlpSink(receiver.url)
        with pytest.raises(CollectorUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.write(Batch([make_request(1)]))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(cert))
        OtlpSink(receiver.url).write(Batch([make_request(1)]))
    finally:
        receiver.stop()
    assert served_count(receiver.taken()) == 1
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError) as caught:
        OtlpSink(receiver.url)
    assert caught.value.option == "OTEL_EXPORTER_OTLP_CERTIFICATE"


def test_events_go_as_logs_when_asked(receiver: Receiver, make_aegis: Callable[..., Aegis]) -> None:
    """With ?logs=true the app's events arrive as OTLP log records (severity,
    body, id, tags, payload, trace id), before the metrics, each once."""
    receiver.start()
    sink = OtlpSink(f"{receiver.url}?logs=true")
    aegis = make_aegis(sink=sink, flush_interval=3600)
    trace = "0af7651916cd43dd8448eb211c80319c"
    assert aegis.event(
        "deployed v2", type="log", level="warning", tags=["region:eu"], event_id="ev-1",
        payload={"version": 2, "ok": True, "big": 2**70, "parts": ["a", None]}, trace_id=trace,
        timestamp=1_700_000_000.5,
    )  # fmt: skip
    assert aegis.event("job done", event_id="ev-2", level="critical", timestamp=1_700_000_001.0)
    aegis.recorder.offer(inbox_item("/p/1", route="/r"))
    assert aegis.force_flush(FLUSH_TIMEOUT)

    assert [a.path for a in receiver.arrivals] == ["/v1/logs", "/v1/metrics"]
    [message] = receiver.taken("logs")
    [resource_logs] = message.resource_logs
    assert attributes(resource_logs.resource.attributes)["service.name"].startswith(
        "unknown_service"
    )
    [scoped] = resource_logs.scope_logs
    assert scoped.scope.name == "aegis_mw"
    first, second = scoped.log_records
    assert (first.body.string_value, first.severity_number, first.severity_text) == (
        "deployed v2", 13, "WARNING",
    )  # fmt: skip
    assert first.time_unix_nano == 1_700_000_000_500_000_000
    assert first.trace_id == bytes.fromhex(trace)
    assert attributes(first.attributes) == {
        "log.record.uid": "ev-1",
        "aegis.event.type": "log",
        "aegis.event.source": "app",
        "aegis.event.tags": ["region:eu"],
        "aegis.event.payload": {"version": 2, "ok": True, "big": str(2**70), "parts": ["a", None]},
    }
    assert (second.body.string_value, second.severity_number) == ("job done", 21)
    assert served_count(receiver.taken()) == 1
    assert otlp_stats(aegis).written == 3


def test_events_sent_are_not_sent_again_when_the_metrics_fail(receiver: Receiver) -> None:
    """Logs taken, metrics not: the retried batch sends only the metrics."""
    receiver.start()
    receiver.decide = lambda path, message: (
        refusal(503, "busy") if path.endswith("/v1/metrics") else Reply()
    )
    sink = OtlpSink(f"{receiver.url}?logs=1")
    from aegis_mw.core.events import build_event

    batch = Batch(
        [make_request(1)],
        events=[build_event("hello", event_id="e1", now=time.time)],
        batch_id="x.1",
    )
    with pytest.raises(CollectorUnavailable):
        sink.write(batch)
    receiver.decide = lambda path, message: Reply()
    sink.write(batch)
    assert len(receiver.taken("logs")) == 1
    assert served_count(receiver.taken()) == 1


def test_without_logs_events_stay_home(receiver: Receiver) -> None:
    receiver.start()
    sink = OtlpSink(receiver.url)
    assert sink.stores_events is False
    from aegis_mw.core.events import build_event

    sink.write(
        Batch([make_request(1)], events=[build_event("hello", event_id="e1", now=time.time)])
    )
    assert receiver.count("logs") == 0


# -- configuration ----------------------------------------------------------------------


def test_urls_and_names() -> None:
    """The URL is the collector's base; its path is a prefix; defaults are
    HTTP's ports, 4 s and no logs."""
    [(name, sink)] = build_sinks(("OTLP+HTTP://collector.internal:4318/",))
    assert isinstance(sink, OtlpSink)
    assert name == "otlp:http://collector.internal:4318"
    settings = sink.settings
    assert (settings.port, settings.prefix, settings.timeout, settings.logs) == (
        4318,
        "",
        4.0,
        False,
    )
    assert sink.remote is True
    secure = OtlpSink("otlp+https://[::1]/a/b?timeout=2.5&logs=false")
    assert secure.name == "otlp:https://[::1]:443/a/b"
    assert secure.settings.path("metrics") == "/a/b/v1/metrics"
    assert secure.settings.timeout == 2.5
    assert OtlpSink("otlp+http://h").settings.port == 80


@pytest.mark.parametrize(
    "url",
    [
        "otlp+http://", "otlp+http://:4318", "otlp+http://h:99999", "otlp+http://h:0", "otlp+http://h:port",
        "otlp+http://user:pw@h:4318", "otlp+http://h:4318?foo=1", "otlp+http://h:4318?timeout=0",
        "otlp+http://h:4318?timeout=many", "otlp+http://h:4318?logs=maybe",
        "otlp+http://h:4318/v1/metrics", "otlp+http://h:4318#x", "otlp+grpc://h:4317",
    ],
)  # fmt: skip
def test_a_bad_url_is_a_config_error_naming_sink(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Aegis(sink=url, environ={})
    assert caught.value.option == "sink"
    assert "'sink'" in str(caught.value)
    assert "pw" not in str(caught.value)


def test_the_package_is_imported_only_by_the_sink() -> None:
    """``import aegis_mw`` (and its other sinks) never imports
    opentelemetry-proto; without the package, the sink's ImportError names
    the extra, while a bad URL is still a ConfigError first."""
    code = """
import sys
import aegis_mw
from aegis_mw.sinks import build_sinks
build_sinks(("memory://",))
assert not [name for name in sys.modules if name.startswith("opentelemetry")], sys.modules
sys.modules["opentelemetry"] = None
try:
    build_sinks(("otlp+http://127.0.0.1:4318?nope=1",))
except aegis_mw.ConfigError:
    pass
try:
    build_sinks(("otlp+http://127.0.0.1:4318",))
except ImportError as exc:
    print(exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'aegis_mw[otel]'" in done.stdout

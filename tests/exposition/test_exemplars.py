"""Exemplars on /metrics: a traced request's trace and span ids on its request
counter series and on the duration bucket it fell in, in OpenMetrics only,
parsed back by prometheus-client's OpenMetrics parser; the latest one wins,
every process's merged, none with the option off."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.core.exemplars import MAX_SERIES, MAX_STATUSES, Exemplars
from aegis_mw.core.record import RequestRecord, WebSocketSession
from aegis_mw.exposition.multiprocess import encode
from aegis_mw.testing import FakeClock, recorded
from tests.harness import call, http_scope

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
TRACES = [f"{index:x}" * 32 for index in range(1, 6)]
SPANS = [f"{index:x}" * 16 for index in range(1, 6)]
ROUTE = "/items/{id}"
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def timed_app(clock: FakeClock) -> Any:
    """Takes as many milliseconds as the path's last part says (``/items/30``)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = ROUTE
        clock.advance(int(scope["path"].rsplit("/", 1)[1]) / 1000)
        status = 500 if scope["path"].startswith("/items/7") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def traceparent(index: int) -> list[tuple[bytes, bytes]]:
    return [(b"traceparent", f"00-{TRACES[index]}-{SPANS[index]}-01".encode())]


async def scrape(middleware: Any, accept: str = OPENMETRICS) -> str:
    exchange = await call(
        middleware, http_scope("/metrics", headers=[(b"accept", accept.encode())])
    )
    assert exchange.status == 200
    return exchange.body.decode()


def exemplars_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], Any]:
    """(sample name, labels) -> its exemplar, for every sample that has one."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.exemplar
        for family in parse_openmetrics(text)
        for sample in family.samples
        if sample.exemplar is not None
    }


def bucket(le: str, method: str = "GET") -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"method": method, "route": ROUTE, "le": le}
    return ("aegis_http_request_duration_seconds_bucket", frozenset(labels.items()))


def counter(status: str, method: str = "GET") -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"method": method, "route": ROUTE, "status": status}
    return ("aegis_http_requests_total", frozenset(labels.items()))


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_the_latest_traced_request_of_each_series_and_bucket_is_its_exemplar(
    make_aegis: Callable[..., Aegis],
) -> None:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600, metrics_registry="none")
    middleware = AegisMiddleware(timed_app(clock), aegis=aegis)
    # 30 ms, traced twice (the second wins); 40 ms in the same bucket, not
    # traced (it does not replace the traced one); 300 ms traced; a 500 traced.
    for path, trace in (("/items/30", 0), ("/items/31", 1), ("/items/40", None),
                        ("/items/300", 2), ("/items/7", 3)):  # fmt: skip
        headers = [] if trace is None else traceparent(trace)
        await call(middleware, http_scope(path, headers=headers))

    waiting = exemplars_of(await scrape(middleware))
    assert waiting == {}  # taken by the flusher, as the records are
    assert len(recorded(aegis)) == 5
    text = await scrape(middleware)
    found = exemplars_of(text)

    assert set(found) == {bucket("0.05"), bucket("0.5"), bucket("0.01"), counter("200"),
                          counter("500")}  # fmt: skip
    wall = clock.wall()
    assert found[bucket("0.05")].labels == {"trace_id": TRACES[1], "span_id": SPANS[1]}
    assert found[bucket("0.05")].value == pytest.approx(0.031)
    assert found[bucket("0.5")].labels["trace_id"] == TRACES[2]
    assert found[bucket("0.5")].value == pytest.approx(0.3)
    assert found[bucket("0.01")].labels["trace_id"] == TRACES[3]  # 7 ms, the 500
    # A counter's exemplar counts one request; each series has its own.
    assert found[counter("200")].labels["trace_id"] == TRACES[2]
    assert found[counter("200")].value == 1
    assert found[counter("500")].labels["trace_id"] == TRACES[3]
    # When the request ended, in wall time (the fake clock's).
    ended = found[counter("500")].timestamp
    assert float(ended.sec) + ended.nsec / 1e9 == pytest.approx(wall, abs=0.001)

    # The 0.0.4 text format is unchanged: no exemplar, and it parses as before.
    plain = await scrape(middleware, accept="text/plain")
    assert " # {" not in plain and "trace_id" not in plain
    assert {family.name for family in parse_text(plain)} >= {"aegis_http_requests"}


@pytest.mark.anyio
@pytest.mark.parametrize("option", [{"metrics_exemplars": False}, {"trace_context": False}])
async def test_no_exemplars_with_the_option_off(
    make_aegis: Callable[..., Aegis], option: dict[str, bool]
) -> None:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600, metrics_registry="none", **option)
    middleware = AegisMiddleware(timed_app(clock), aegis=aegis)
    await call(middleware, http_scope("/items/30", headers=traceparent(0)))
    assert len(recorded(aegis)) == 1
    text = await scrape(middleware)
    assert "aegis_http_requests_total{" in text
    assert exemplars_of(text) == {}


@pytest.mark.anyio
async def test_a_registry_of_the_apps_gets_them_through_the_collector(
    make_aegis: Callable[..., Aegis],
) -> None:
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600, metrics_registry="none")
    middleware = AegisMiddleware(timed_app(clock), aegis=aegis)
    await call(middleware, http_scope("/items/30", headers=traceparent(4)))
    recorded(aegis)
    registry = CollectorRegistry()
    registry.register(aegis.metrics.collector())  # type: ignore[arg-type]
    found = exemplars_of(openmetrics_latest(registry).decode())  # type: ignore[no-untyped-call]
    assert found[counter("200")].labels == {"trace_id": TRACES[4], "span_id": SPANS[4]}
    assert found[bucket("0.05")].value == pytest.approx(0.03)


def record(
    trace: int | None, duration_ms: float, *, status: int = 200, method: str = "GET",
    route: str = ROUTE, span: bool = True, at: float = 1_700_000_000.0,
) -> RequestRecord:  # fmt: skip
    return RequestRecord(
        "id", at, method, route, "/items/1", status, duration_ms, None, 0, 0, None, "",
        None if trace is None else TRACES[trace],
        None if trace is None or not span else SPANS[trace],
    )  # fmt: skip


def test_take_places_each_exemplar_in_its_own_bucket_and_skips_what_it_cannot() -> None:
    exemplars = Exemplars(BOUNDS)
    session = WebSocketSession(
        "s", 1.0, "/ws", "/ws", 5.0, 0, 0, 1000, True, None, "", TRACES[0], SPANS[0]
    )
    exemplars.take([
        record(0, 5.0),  # exactly on a bound: that bucket (le is inclusive)
        record(1, math.nan),  # in no bucket, as in the totals
        record(None, 20.0),
        record(2, 20_000.0, span=False),  # past the last bound: +Inf
        session,  # type: ignore[list-item]
    ])  # fmt: skip
    assert list(exemplars.series) == [("GET", ROUTE)]
    series, statuses = exemplars.series[("GET", ROUTE)]
    assert series[0] == (TRACES[0], SPANS[0], 0.005, 1_700_000_000.005)
    assert series[-1] == (TRACES[2], None, 20.0, 1_700_000_020.0)
    assert sum(exemplar is not None for exemplar in series) == 2
    assert statuses == {200: (TRACES[2], None, 20.0, 1_700_000_020.0)}


def test_the_series_kept_are_bounded_and_known_ones_still_refresh() -> None:
    exemplars = Exemplars(BOUNDS)
    exemplars.take([record(0, 1.0, route=f"/r{index}") for index in range(MAX_SERIES + 5)])
    assert len(exemplars.series) == MAX_SERIES
    later = 1_700_000_002.0  # past the sampling window of the first ones
    exemplars.take([record(1, 1.0, route="/r0", at=later), record(1, 1.0, route="/new", at=later)])
    assert exemplars.series[("GET", "/r0")][1][200][0] == TRACES[1]
    assert ("GET", "/new") not in exemplars.series
    codes = [200, *range(300, 300 + MAX_STATUSES + 5)]  # 200 first: it opens the window
    exemplars.take([record(2, 1.0, route="/r1", status=code, at=later) for code in codes])
    statuses = exemplars.series[("GET", "/r1")][1]
    assert len(statuses) == MAX_STATUSES and statuses[200][0] == TRACES[2]
    assert exemplars.series[("GET", "/r1")][0][0][0] == TRACES[2]  # its bucket still refreshed


def test_merging_keeps_the_later_exemplar_of_each_place() -> None:
    mine, theirs = Exemplars(BOUNDS), Exemplars(BOUNDS)
    mine.take([record(0, 3.0, at=100.0), record(1, 300.0, at=300.0)])
    theirs.take([record(2, 4.0, at=200.0), record(3, 600.0, at=50.0), record(4, 4.0, at=9.0,
                                                                                 route="/b")])  # fmt: skip
    mine.merge(Exemplars.decode(json.loads(json.dumps(theirs.encode())), BOUNDS))
    series, statuses = mine.series[("GET", ROUTE)]
    assert series[0] is not None and series[0][0] == TRACES[2]  # later
    assert series[7] is not None and series[7][0] == TRACES[1]  # 0.3 s: ours is later
    assert series[8] is not None and series[8][0] == TRACES[3]  # 0.6 s: only theirs
    assert statuses[200][0] == TRACES[1]
    assert mine.series[("GET", "/b")][1][200][0] == TRACES[4]
    again = Exemplars.decode(json.loads(json.dumps(mine.encode())), BOUNDS)
    assert again.series == mine.series


@pytest.mark.parametrize(
    "entry",
    [
        ["GET", ROUTE, 0, 'x"}' + "a" * 29, None, 0.001, 5.0],  # not a trace id
        ["GET", ROUTE, 0, TRACES[0], "not-a-span-id!!!", 0.001, 5.0],
        ["GET", ROUTE, 0, TRACES[0], None, math.nan, 5.0],
        ["GET", ROUTE, 0, TRACES[0], None, 0.001, math.inf],
        ["GET", ROUTE, 0, TRACES[0], None, True, 5.0],
        ["GET", ROUTE, 0, TRACES[0], None, "1", 5.0],
        ["GET", ROUTE, "0", TRACES[0], None, 0.001, 5.0],
        ["GET", ROUTE, False, TRACES[0], None, 0.001, 5.0],
        ["GET", 7, 0, TRACES[0], None, 0.001, 5.0],
        ["GET", ROUTE, 0, "0" * 32, None, 0.001, 5.0],
        ["GET", ROUTE, 0, TRACES[0], None, 10**400, 5.0],  # JSON allows it; float() does not
        ["GET", ROUTE, 0, TRACES[0], None, 0.001, -(10**400)],
        ["GET", ROUTE, 0, TRACES[0], None, 9.0, 5.0],  # as a bucket's: outside le="0.005"
        ["GET", ROUTE, 0, TRACES[0], None, 0.001],
        "GET",
    ],
)
def test_a_damaged_entry_in_another_process_file_is_left_out_alone(entry: Any) -> None:
    good = ["GET", "/ok", 200, TRACES[1], SPANS[1], 0.001, 5.0]
    ok = (TRACES[1], SPANS[1], 0.001, 5.0)
    decoded = Exemplars.decode({"buckets": [entry, ["GET", "/ok", 0, *good[3:]]]}, BOUNDS)
    assert decoded.series == {("GET", "/ok"): ([ok] + [None] * 14, {})}
    if entry != ["GET", ROUTE, 0, TRACES[0], None, 9.0, 5.0]:  # a fine counter exemplar
        decoded = Exemplars.decode({"requests": [entry, good]}, BOUNDS)
        assert decoded.series == {("GET", "/ok"): ([None] * 15, {200: ok})}


@pytest.mark.parametrize("index", [-1, len(BOUNDS) + 1, 1.0, "0", None])
def test_a_bucket_index_out_of_range_is_left_out(index: Any) -> None:
    entry = ["GET", ROUTE, index, TRACES[0], None, 0.001, 5.0]
    assert Exemplars.decode({"buckets": [entry]}, BOUNDS).series == {}
    assert Exemplars.decode(None, BOUNDS).series == {}


@pytest.mark.anyio
async def test_every_workers_exemplars_are_on_the_answering_workers_scrape(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    """The other workers' snapshot files carry theirs; for each place the later
    one is shown (a dead worker's, archived, still counts)."""
    for pid, trace, milliseconds in ((living_pid, 0, 30), (dead_pid, 1, 300)):
        clock = FakeClock(wall=1_700_000_000.0 + trace)
        worker = make_aegis(clock=clock, metrics_registry="none", flush_interval=3600)
        middleware = AegisMiddleware(timed_app(clock), aegis=worker)
        await call(middleware, http_scope(f"/items/{milliseconds}", headers=traceparent(trace)))
        recorded(worker)
        data = encode(worker.metrics.read_own(), pid=pid, live=True)
        (tmp_path / f"aegis_{pid}_0a0b0c0d.json").write_text(json.dumps(data))

    clock = FakeClock(wall=1_600_000_000.0)  # older than theirs
    aegis = make_aegis(clock=clock, metrics_registry="none", flush_interval=3600,
                       metrics_multiprocess_dir=str(tmp_path))  # fmt: skip
    middleware = AegisMiddleware(timed_app(clock), aegis=aegis)
    await call(middleware, http_scope("/items/31", headers=traceparent(2)))
    recorded(aegis)
    found = exemplars_of(await scrape(middleware))
    assert found[bucket("0.05")].labels["trace_id"] == TRACES[0]  # the living worker's: later
    assert found[bucket("0.5")].labels["trace_id"] == TRACES[1]  # the dead one's
    assert found[counter("200")].labels["trace_id"] == TRACES[1]  # the latest of all
    aegis.shutdown()  # archives the dead worker's file
    again = make_aegis(clock=clock, metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    assert (
        exemplars_of(await scrape(AegisMiddleware(timed_app(clock), aegis=again)))[
            bucket("0.5")
        ].labels["trace_id"]
        == TRACES[1]
    )


def test_the_field_the_flusher_looks_at_is_empty_on_every_untraced_record() -> None:
    """The flusher picks traced records by one index, for requests and sessions alike."""
    from aegis_mw.core.aggregates import TRACED_FIELD

    untraced = [
        record(None, 1.0),
        WebSocketSession("s", 1.0, "/ws", "/ws", 5.0, 0, 0, 1000, True, None, ""),
    ]
    assert [item[TRACED_FIELD] for item in untraced] == [None, None]
    assert record(0, 1.0)[TRACED_FIELD] == record(0, 1.0, span=False)[TRACED_FIELD] == TRACES[0]


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_the_exemplar_is_on_the_series_its_request_was_counted_in(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Routes the records cut or repair, a method outside the standard ones,
    and the route cap: each exemplar sits on the series whose count has its
    request."""
    long_route = "/" + "r" * 600
    routes = iter([long_route, "/ctl\x01/{id}", "/a", "/b"])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = next(routes)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    aegis = make_aegis(flush_interval=3600, metrics_registry="none", max_routes=3)
    middleware = AegisMiddleware(app, aegis=aegis)
    for index, method in enumerate(["GET", "PURGE", "GET", "GET"]):
        await call(middleware, http_scope("/x", method=method, headers=traceparent(index)))
    records = recorded(aegis)
    text = await scrape(middleware)
    counts = {
        (sample.labels["method"], sample.labels["route"]): (sample.value, sample.exemplar)
        for family in parse_openmetrics(text)
        for sample in family.samples
        if sample.name == "aegis_http_requests_total"
    }
    assert len(counts) == 4
    for index, stored in enumerate(records):
        count, exemplar = counts[(stored.method, stored.route)]
        assert count == 1 and exemplar.labels["trace_id"] == TRACES[index]
    assert [stored.route for stored in records] == [
        long_route[:512], "/ctl%01/{id}", "/a", "<overflow>",
    ]  # fmt: skip
    assert records[1].method == "_OTHER"


@pytest.mark.anyio
@pytest.mark.parametrize("part", ["series", "exemplars"])
async def test_a_number_too_large_for_a_float_in_another_workers_file_fails_no_scrape(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, part: str
) -> None:
    worker = make_aegis(metrics_registry="none")
    data = encode(worker.metrics.read_own(), pid=living_pid, live=True)
    if part == "series":
        data["series"] = [["GET", ROUTE, [10**400] * (6 + 2 * (len(BOUNDS) + 1))]]
    else:
        data["exemplars"] = {"requests": [["GET", ROUTE, 200, TRACES[0], None, 10**400, 5.0]]}
    (tmp_path / f"aegis_{living_pid}_0a0b0c0d.json").write_text(json.dumps(data))
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    text = await scrape(AegisMiddleware(timed_app(FakeClock()), aegis=aegis))
    assert "aegis_http_requests_in_progress" in text and exemplars_of(text) == {}


def test_within_a_window_a_series_takes_only_slower_requests_and_new_statuses() -> None:
    """Sampling: a busy route refreshes once a window; its outliers and the
    first request of each status are kept meanwhile."""
    exemplars = Exemplars(BOUNDS)
    at = 1_700_000_000.0
    exemplars.take([
        record(0, 30.0, at=at),  # the window's first: taken
        record(1, 20.0, at=at + 0.1),  # faster, same status: passed over
        record(2, 400.0, at=at + 0.2),  # the slowest yet: taken
        record(3, 300.0, at=at + 0.3),  # slower than the first, not the slowest: passed over
        record(4, 3.0, status=500, at=at + 0.4),  # a status not seen: taken
    ])  # fmt: skip
    buckets, statuses = exemplars.series[("GET", ROUTE)]
    assert {index: mark[0] for index, mark in enumerate(buckets) if mark} == {
        3: TRACES[0], 7: TRACES[2], 0: TRACES[4],
    }  # fmt: skip
    assert {status: mark[0] for status, mark in statuses.items()} == {
        200: TRACES[2],
        500: TRACES[4],
    }
    exemplars.take([record(1, 20.0, at=at + 1.0)])  # the window is over: taken
    assert exemplars.series[("GET", ROUTE)][1][200][0] == TRACES[1]
    exemplars.take([record(3, 10.0, at=at - 60.0)])  # the wall clock set back: a new window
    assert exemplars.series[("GET", ROUTE)][1][200][0] == TRACES[3]


def test_a_long_request_that_ended_within_the_window_is_in_it() -> None:
    """Records come in the order they finished: one that started before the
    window but ended in it is sampled as the window's, not a new window."""
    exemplars = Exemplars(BOUNDS)
    at = 1_700_000_000.0
    exemplars.take([
        record(0, 3000.0, at=at),  # opens the window [at, at + 1)
        record(1, 2000.0, at=at - 1.5),  # ended at + 0.5: in it, not slower: passed over
        record(2, 50.0, at=at + 0.6),  # in it, not slower: passed over
    ])  # fmt: skip
    buckets, statuses = exemplars.series[("GET", ROUTE)]
    assert [index for index, mark in enumerate(buckets) if mark] == [11]  # 3 s: le="5.0"
    assert statuses[200][0] == TRACES[0]


def test_a_sinks_odd_rejection_counts_are_left_out_of_the_stats(
    make_aegis: Callable[..., Aegis],
) -> None:
    """``rejected_by_store`` of a sink of the app's: only names with counts
    reach ``stats()`` (the workers' files must stay readable to each other)."""

    class Odd:
        name = "odd"

        def __init__(self) -> None:
            self.rejected_by_store = {"points": 2, "bad": "many", 3: 4, "down": -1, "flag": True}

        def write(self, batch: Any) -> None:
            pass

        def close(self) -> None:
            pass

    aegis = make_aegis(sink=Odd())
    [sink] = aegis.stats().sinks
    assert sink.rejected == {"points": 2}

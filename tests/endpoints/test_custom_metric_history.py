"""``{api_path}/custom-metric-history`` over the mounted API, under ASGI (a
Starlette app with ``install``) and under WSGI (a Flask app with the
extension), on each sink that keeps history (memory, a SQLite file, the real
PostgreSQL), with a fake clock so that every forced flush samples the app's
own metrics into a known 5-second bucket: a counter's increase and rate per
point, all label sets added up or one series per value of ``by`` (the
largest first, ``limit`` of them, the rest counted in ``left_out``), found by
its ``_total`` name too; a histogram's count, rate, sum, average and
quantiles (interpolated within the buckets, the +Inf bucket answering the
highest bound); a gauge in each ``multiprocess_mode``; explicit ``from`` and
``to``; zero (counters, histograms) or null (gauges) where nothing was
sampled; every sink answering the same; each bad parameter a 400 naming it;
and a 503 when no sink keeps history."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import anyio.to_thread
import httpx
import pytest

from aegis_mw import Aegis
from aegis_mw.history.custom_series import bucket_quantile
from aegis_mw.testing import FakeClock, MemorySink
from tests import api_apps
from tests.api_apps import API, VIEWER, Served, held, iso, seconds, serving

pytestmark = pytest.mark.anyio

HISTORY = f"{API}/custom-metric-history"
#: An hour boundary some hours ago (inside every retention): a multiple of
#: every step a range can take up to 15 minutes, and of every stored
#: resolution, so that each sample's bucket and point are known.
T0 = float(math.floor((datetime.now(tz=timezone.utc).timestamp() - 6 * 3600) / 3600) * 3600)
#: The figures of each kind's points, as the schema names them.
COUNTER_FIGURES = {"increase", "rate"}
GAUGE_FIGURES = {"value", "low", "high"}
HISTOGRAM_FIGURES = {"count", "rate", "sum", "avg", "p50", "p95", "p99"}
BOUNDS = (0.1, 0.5, 1.0)


def at(offset: float) -> str:
    """A time ``offset`` seconds after T0, as a query gives it."""
    return iso(T0 + offset, zulu=True)


def conforms(value: Any, schema: dict[str, Any], where: str = "data") -> None:
    """``value`` is what ``schema`` (the served OpenAPI document's) describes:
    the types, enums, minimums, required properties and items it names; and,
    stricter than JSON Schema, no property it does not describe."""
    kinds = schema.get("type")
    if kinds is not None:
        allowed = kinds if isinstance(kinds, list) else [kinds]
        assert any(_is(value, kind) for kind in allowed), f"{where}: {value!r} is not {allowed}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "minimum" in schema:
        assert value >= schema["minimum"], where
    if isinstance(value, dict):
        missing = [key for key in schema.get("required", ()) if key not in value]
        assert not missing, f"{where}: {missing} missing"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                conforms(item, properties[key], f"{where}.{key}")
            else:
                assert isinstance(extra, dict), f"{where}.{key} is not described"
                conforms(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            conforms(item, schema["items"], f"{where}[{index}]")


def _is(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    types: dict[str, type | tuple[type, ...]] = {
        "string": str, "integer": int, "number": (int, float), "object": dict, "array": list,
    }  # fmt: skip
    return isinstance(value, types[kind])


class HistoryServed(Served):
    """The app on a fake clock, and calls of ``{api_path}/custom-metric-history``."""

    clock: FakeClock
    _schema: dict[str, Any] | None = None

    async def ask(self, query: str, *, token: str | None = VIEWER) -> httpx.Response:
        return await self.request("GET", f"{HISTORY}?{query}" if query else HISTORY, token=token)

    async def history(self, **params: Any) -> dict[str, Any]:
        """The 200 answer's data for ``params`` (``from_`` for ``from``),
        checked against the endpoint's schema in the served description."""
        query = urlencode({name.rstrip("_"): value for name, value in params.items()})
        response = await self.ask(query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert list(body) == ["data"]
        conforms(body["data"], await self.schema())
        data: dict[str, Any] = body["data"]
        return data

    async def schema(self) -> dict[str, Any]:
        if self._schema is None:
            document = (await self.request("GET", f"{API}/openapi.json", token=VIEWER)).json()
            answer = document["paths"][HISTORY]["get"]["responses"]["200"]
            self._schema = answer["content"]["application/json"]["schema"]["properties"]["data"]
        assert self._schema is not None
        return self._schema

    async def sample_at(self, offset: float) -> None:
        """Move the clock to ``offset`` seconds after T0 and flush: the app's
        metrics are sampled at once, into the 5-second bucket that time is in."""
        moment = T0 + offset
        assert moment >= self.clock.wall(), "the clock only moves on"
        self.clock.advance(moment - self.clock.wall())
        await self.flush()


Serve = Callable[..., Awaitable[HistoryServed]]
serve = serving(HistoryServed)


async def build(serve: Serve, sink: Any, **options: Any) -> HistoryServed:
    """An app on ``sink`` whose clock stands at T0 (its first flush sampled
    nothing: no metric was declared yet)."""
    clock = FakeClock(wall=T0)
    served = await serve(sink=sink, clock=clock, **options)
    served.clock = clock
    return served


async def flush(aegis: Aegis) -> None:
    assert await anyio.to_thread.run_sync(aegis.force_flush, 10.0)


async def another_process(make_aegis: Callable[..., Aegis], sink: Any, clock: FakeClock) -> Aegis:
    """A second pipeline on ``sink`` and ``clock``, as another process of the
    app; its first flush is behind it (at T0, before it declares anything),
    so it samples only when the test flushes it."""
    other = make_aegis(sink=sink, clock=clock, flush_interval=3600, metrics_registry="none")
    held(other)
    await flush(other)
    return other


@pytest.fixture
def shared_sink(history_sink_url: str) -> Any:
    """A sink two pipelines (two processes of one app) can write to: the same
    memory sink object, or the URL of the same SQLite file or PostgreSQL schema."""
    return MemorySink() if history_sink_url == "memory://" else history_sink_url


# -- reading the points ------------------------------------------------------------------


def check_grid(data: dict[str, Any], start: float, end: float, step: int) -> None:
    """The range is ``[start, end)`` in points of ``step`` seconds, each
    series' points stamped one step apart from ``start``."""
    window = data["range"]
    assert (seconds(window["from"]), seconds(window["to"]), window["step_seconds"]) == (
        start, end, step,
    )  # fmt: skip
    count = math.ceil((end - start) / step)
    for series in data["series"]:
        stamps = [seconds(point["timestamp"]) for point in series["points"]]
        assert stamps == [start + index * step for index in range(count)]


def sampled(points: Sequence[dict[str, Any]], figures: set[str]) -> dict[float, dict[str, Any]]:
    """The points with something in them, by their offset from T0; the others
    are checked to hold nothing: zeros and nulls (a counter's and a
    histogram's), or nulls only (a gauge's)."""
    out: dict[float, dict[str, Any]] = {}
    for point in points:
        assert set(point) == {"timestamp", *figures}, point
        figured = {name: point[name] for name in figures}
        if figures == GAUGE_FIGURES:
            empty = dict.fromkeys(GAUGE_FIGURES)
        elif figures == COUNTER_FIGURES:
            empty = {"increase": 0, "rate": 0}
        else:
            empty = {"count": 0, "rate": 0, "sum": 0, "avg": None,
                     "p50": None, "p95": None, "p99": None}  # fmt: skip
        if figured != empty:
            out[seconds(point["timestamp"]) - T0] = figured
    return out


def only_series(data: dict[str, Any]) -> list[dict[str, Any]]:
    [series] = data["series"]
    assert series["labels"] == {}
    assert data["left_out"] == 0
    points: list[dict[str, Any]] = series["points"]
    return points


# -- counters ----------------------------------------------------------------------------


async def record_orders(served: HistoryServed) -> None:
    """A counter of three regions, sampled at T0+5 (eu 3, us 2), T0+20 (eu 4,
    ap 3) and T0+65 (us 6); the clock then stands at T0+120."""
    orders = served.aegis.counter("orders_total", "Orders placed.", ("region",))
    orders.labels("eu").inc(3)
    orders.labels(region="us").inc(2)
    await served.sample_at(5)
    orders.labels("eu").inc(4)
    orders.labels("ap").inc(3)
    await served.sample_at(20)
    orders.labels("us").inc(6)
    await served.sample_at(65)
    served.clock.advance(55)


async def test_a_counters_increase_and_rate_per_point(history_sink_url: str, serve: Serve) -> None:
    """Explicit times 90 s apart: 5-second points, each sample's increase in
    the point of its bucket (all regions added up), its rate per second; zero
    elsewhere."""
    served = await build(serve, history_sink_url)
    await record_orders(served)
    data = await served.history(name="orders", from_=at(0), to=at(90))
    assert {key: data[key] for key in ("name", "kind", "help", "labels", "by", "left_out")} == {
        "name": "orders", "kind": "counter", "help": "Orders placed.", "labels": ["region"],
        "by": [], "left_out": 0,
    }  # fmt: skip
    assert "buckets" not in data and "multiprocess_mode" not in data
    check_grid(data, T0, T0 + 90, 5)
    assert sampled(only_series(data), COUNTER_FIGURES) == {
        5: {"increase": 5, "rate": 1.0},
        20: {"increase": 7, "rate": 1.4},
        65: {"increase": 6, "rate": 1.2},
    }


async def test_by_a_label_one_series_per_value_the_largest_first(
    history_sink_url: str, serve: Serve
) -> None:
    served = await build(serve, history_sink_url)
    await record_orders(served)
    data = await served.history(name="orders", by="region", from_=at(0), to=at(90))
    assert data["by"] == ["region"]
    assert data["left_out"] == 0
    check_grid(data, T0, T0 + 90, 5)
    shown = {
        series["labels"]["region"]: sampled(series["points"], COUNTER_FIGURES)
        for series in data["series"]
    }
    assert list(shown) == ["us", "eu", "ap"]  # increases 8, 7 and 3
    assert shown == {
        "us": {5: {"increase": 2, "rate": 0.4}, 65: {"increase": 6, "rate": 1.2}},
        "eu": {5: {"increase": 3, "rate": 0.6}, 20: {"increase": 4, "rate": 0.8}},
        "ap": {20: {"increase": 3, "rate": 0.6}},
    }
    assert all(list(series["labels"]) == ["region"] for series in data["series"])
    # A label named twice is one series per value all the same.
    again = await served.history(name="orders", by="region,region", from_=at(0), to=at(90))
    assert again["by"] == ["region"]
    assert again["series"] == data["series"]


@pytest.mark.parametrize(
    ("limit", "shown", "left_out"),
    [
        (1, ["us"], 2),
        (2, ["us", "eu"], 1),
        (3, ["us", "eu", "ap"], 0),
        (100, ["us", "eu", "ap"], 0),
    ],
)
async def test_limit_keeps_the_largest_series_and_counts_the_rest(
    history_sink_url: str, serve: Serve, limit: int, shown: list[str], left_out: int
) -> None:
    served = await build(serve, history_sink_url)
    await record_orders(served)
    data = await served.history(name="orders", by="region", limit=limit, range="15m")
    assert [series["labels"]["region"] for series in data["series"]] == shown
    assert data["left_out"] == left_out
    # Without by there is one series, whatever the limit.
    alone = await served.history(name="orders", limit=1, range="15m")
    assert len(alone["series"]) == 1 and alone["left_out"] == 0


async def test_a_counter_is_found_by_its_total_name_too(
    history_sink_url: str, serve: Serve
) -> None:
    served = await build(serve, history_sink_url)
    await record_orders(served)
    plain = await served.history(name="orders", from_=at(0), to=at(90))
    total = await served.history(name="orders_total", from_=at(0), to=at(90))
    assert total == plain
    assert total["name"] == "orders"
    # A gauge's name takes no _total.
    served.aegis.gauge("depth", "Jobs waiting.").set(1)
    response = await served.ask("name=depth_total")
    api_apps.assert_bad_parameter(response, "name")
    assert response.json()["error"]["code"] == "unknown_metric"


async def test_named_ranges_read_their_steps_and_resolutions(
    history_sink_url: str, serve: Serve
) -> None:
    """At T0+120: 15m in 15-second points (the 5-second resolution), 1h in
    minutes (the 1-minute one), 24h in 15 minutes (the 5-minute one, its last
    point from the finer ones); each ends with the bucket now is in."""
    served = await build(serve, history_sink_url)
    await record_orders(served)

    quarter = await served.history(name="orders", range="15m")
    check_grid(quarter, T0 - 780, T0 + 125, 15)
    assert sampled(only_series(quarter), COUNTER_FIGURES) == {
        0: {"increase": 5, "rate": 0.333333},
        15: {"increase": 7, "rate": 0.466667},
        60: {"increase": 6, "rate": 0.4},
    }
    hour = await served.history(name="orders", range="1h")
    check_grid(hour, T0 - 3480, T0 + 125, 60)
    assert sampled(only_series(hour), COUNTER_FIGURES) == {
        0: {"increase": 12, "rate": 0.2},
        60: {"increase": 6, "rate": 0.1},
    }
    day = await served.history(name="orders", range="24h")
    check_grid(day, T0 - 86_400, T0 + 125, 900)
    assert sampled(only_series(day), COUNTER_FIGURES) == {0: {"increase": 18, "rate": 0.02}}
    # Without a range: the last hour.
    assert await served.history(name="orders") == hour


async def test_explicit_times_bound_the_range(history_sink_url: str, serve: Serve) -> None:
    """``from`` is moved back to a whole step, ``to`` is exclusive: a sample
    in the bucket ``to`` starts is left out."""
    served = await build(serve, history_sink_url)
    await record_orders(served)
    before = await served.history(name="orders", from_=at(7), to=at(65))
    check_grid(before, T0 + 5, T0 + 65, 5)
    assert sampled(only_series(before), COUNTER_FIGURES) == {
        5: {"increase": 5, "rate": 1.0},
        20: {"increase": 7, "rate": 1.4},
    }
    # An offset, and a time without one (UTC): the same instants.
    after = await served.history(
        name="orders",
        from_=datetime.fromtimestamp(T0 + 20, tz=timezone.utc).astimezone().isoformat(),
        to=datetime.fromtimestamp(T0 + 70, tz=timezone.utc).replace(tzinfo=None).isoformat(),
    )
    check_grid(after, T0 + 20, T0 + 70, 5)
    assert sampled(only_series(after), COUNTER_FIGURES) == {
        20: {"increase": 7, "rate": 1.4},
        65: {"increase": 6, "rate": 1.2},
    }
    # Before any sample: no series at all. Only from: up to now.
    empty = await served.history(name="orders", from_=at(-600), to=at(0))
    check_grid(empty, T0 - 600, T0, 10)
    assert (empty["series"], empty["left_out"]) == ([], 0)
    since = await served.history(name="orders", from_=at(60))
    check_grid(since, T0 + 60, T0 + 125, 5)
    assert sampled(only_series(since), COUNTER_FIGURES) == {65: {"increase": 6, "rate": 1.2}}


async def test_a_declared_metric_never_sampled_has_no_series(
    history_sink_url: str, serve: Serve
) -> None:
    served = await build(serve, history_sink_url)
    served.aegis.counter("refunds", "Refunds made.", ("region",))
    served.aegis.histogram("job_seconds", "Job time.", buckets=BOUNDS)
    await served.sample_at(5)
    for name in ("refunds", "job_seconds"):
        data = await served.history(name=name, range="15m")
        assert (data["series"], data["left_out"]) == ([], 0)
        check_grid(data, T0 - 900, T0 + 10, 15)


# -- histograms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantile", "bounds", "counts", "expected"),
    [
        # Within a bucket: from the bound below (0 for the first) to its own.
        (0.5, BOUNDS, [2, 5, 2, 1], 0.1 + 0.4 * 3 / 5),
        (0.2, BOUNDS, [2, 5, 2, 1], 0.1 * 2 / 2),
        (0.1, BOUNDS, [2, 5, 2, 1], 0.1 * 1 / 2),
        (0.25, BOUNDS, [2, 5, 2, 1], 0.1 + 0.4 * 0.5 / 5),
        (0.8, BOUNDS, [2, 5, 2, 1], 0.5 + 0.5 * 1 / 2),
        # Empty buckets are stepped over: the one reached interpolates from
        # the bound below it.
        (0.5, BOUNDS, [0, 0, 3, 0], 0.5 + 0.5 * 1.5 / 3),
        (0.5, BOUNDS, [4, 0, 0, 0], 0.1 * 2 / 4),
        # The +Inf bucket answers the highest bound.
        (0.95, BOUNDS, [2, 5, 2, 1], 1.0),
        (0.99, BOUNDS, [2, 5, 2, 1], 1.0),
        (0.5, BOUNDS, [0, 0, 0, 3], 1.0),
        (0.5, (0.25,), [1, 3], 0.25),
        # A first bound at or below zero is answered as it is.
        (0.25, (-1.0, 0.0, 1.0), [2, 0, 2, 0], -1.0),
        (0.75, (-1.0, 0.0, 1.0), [2, 0, 2, 0], 0.0 + 1.0 * 1 / 2),
        # Nothing observed: no quantile.
        (0.5, BOUNDS, [0, 0, 0, 0], None),
        (0.99, BOUNDS, [], None),
    ],
)
def test_bucket_quantile_interpolates_linearly_within_the_buckets(
    quantile: float, bounds: tuple[float, ...], counts: list[int], expected: float | None
) -> None:
    answer = bucket_quantile(quantile, bounds, counts)
    if expected is None:
        assert answer is None
    else:
        assert answer == pytest.approx(expected, abs=1e-9)


async def record_jobs(served: HistoryServed) -> None:
    """A histogram of two queues, sampled at T0+5 (fast: 0.05 twice, 0.3 five
    times; slow: 0.7 twice, 2.0 once) and T0+30 (fast: 0.2 four times)."""
    jobs = served.aegis.histogram("job_seconds", "Job time.", ("queue",), buckets=BOUNDS)
    for value in [0.05] * 2 + [0.3] * 5:
        jobs.labels("fast").observe(value)
    for value in [0.7, 0.7, 2.0]:
        jobs.labels("slow").observe(value)
    await served.sample_at(5)
    for _ in range(4):
        jobs.labels("fast").observe(0.2)
    await served.sample_at(30)
    served.clock.advance(30)


async def test_a_histograms_count_sum_average_and_quantiles_per_point(
    history_sink_url: str, serve: Serve
) -> None:
    served = await build(serve, history_sink_url)
    await record_jobs(served)
    data = await served.history(name="job_seconds", from_=at(0), to=at(60))
    assert (data["kind"], data["buckets"], data["labels"]) == ("histogram", list(BOUNDS), ["queue"])
    check_grid(data, T0, T0 + 60, 5)
    # T0+5: counts per bucket [2, 5, 2, 1]; T0+30: [0, 4, 0, 0].
    assert sampled(only_series(data), HISTOGRAM_FIGURES) == {
        5: {"count": 10, "rate": 2.0, "sum": 5.0, "avg": 0.5,
            "p50": 0.34, "p95": 1.0, "p99": 1.0},
        30: {"count": 4, "rate": 0.8, "sum": 0.8, "avg": 0.2,
             "p50": 0.3, "p95": 0.48, "p99": 0.496},
    }  # fmt: skip
    by_queue = await served.history(name="job_seconds", by="queue", from_=at(0), to=at(60))
    shown = {s["labels"]["queue"]: sampled(s["points"], HISTOGRAM_FIGURES)
             for s in by_queue["series"]}  # fmt: skip
    assert list(shown) == ["fast", "slow"]  # 11 observations, then 3
    assert shown == {
        "fast": {
            5: {"count": 7, "rate": 1.4, "sum": 1.6, "avg": 0.228571,
                "p50": 0.22, "p95": 0.472, "p99": 0.4944},
            30: {"count": 4, "rate": 0.8, "sum": 0.8, "avg": 0.2,
                 "p50": 0.3, "p95": 0.48, "p99": 0.496},
        },
        "slow": {
            5: {"count": 3, "rate": 0.6, "sum": 3.4, "avg": 1.133333,
                "p50": 0.875, "p95": 1.0, "p99": 1.0},
        },
    }  # fmt: skip


async def test_a_histograms_buckets_add_up_at_a_coarser_resolution(
    history_sink_url: str, serve: Serve
) -> None:
    """Over 1h (minutes), both samples are in one point: their bucket counts
    added up ([2, 9, 2, 1]) before the quantiles are taken."""
    served = await build(serve, history_sink_url)
    await record_jobs(served)
    data = await served.history(name="job_seconds", range="1h")
    check_grid(data, T0 - 3540, T0 + 65, 60)
    assert sampled(only_series(data), HISTOGRAM_FIGURES) == {
        0: {"count": 14, "rate": 0.233333, "sum": 5.8, "avg": 0.414286,
            "p50": round(0.1 + 0.4 * 5 / 9, 6), "p95": 1.0, "p99": 1.0},
    }  # fmt: skip


# -- gauges ------------------------------------------------------------------------------

#: (offset, value): three samples in the 15-second point from T0+15, one in
#: the point from T0+60 (the 6 buckets between take 7, the value before).
DEPTHS = ((15, 4.0), (20, 10.0), (25, 7.0), (60, 2.0))
#: Per mode, the first of those points' value: the time average of the
#: samples, the highest, the lowest.
FIRST_POINT = {"sum": 7.0, "max": 10.0, "min": 4.0}


async def record_depths(served: HistoryServed, mode: str) -> None:
    depth = served.aegis.gauge("queue_depth", "Jobs waiting.", multiprocess_mode=mode)
    for offset, value in DEPTHS:
        depth.set(value)
        await served.sample_at(offset)
    served.clock.advance(60)


@pytest.mark.parametrize("mode", ["sum", "max", "min"])
async def test_a_gauges_value_per_point_in_each_mode(
    history_sink_url: str, serve: Serve, mode: str
) -> None:
    served = await build(serve, history_sink_url)
    await record_depths(served, mode)
    data = await served.history(name="queue_depth", from_=at(0), to=at(900))
    assert (data["kind"], data["multiprocess_mode"], data["labels"]) == ("gauge", mode, [])
    assert "buckets" not in data
    check_grid(data, T0, T0 + 900, 15)
    # The flusher did not sample T0+30..T0+55: 7, the value before, is theirs.
    assert sampled(only_series(data), GAUGE_FIGURES) == {
        15: {"value": FIRST_POINT[mode], "low": 4.0, "high": 10.0},
        30: {"value": 7.0, "low": 7.0, "high": 7.0},
        45: {"value": 7.0, "low": 7.0, "high": 7.0},
        60: {"value": 2.0, "low": 2.0, "high": 2.0},
    }


@pytest.mark.parametrize(
    "mode",
    [
        "sum",
        "max",
        "min",
    ],
)
async def test_a_gauge_at_the_minute_resolution_answers_as_at_the_finest(
    history_sink_url: str, serve: Serve, mode: str
) -> None:
    """Explicit times an hour apart: 1-minute points, read from the 1-minute
    resolution. The minute from T0 holds the three samples of DEPTHS'
    first 15 seconds, the next minute its last: their average (sum), highest
    or lowest, as the finest resolution answers, never outside low..high."""
    served = await build(serve, history_sink_url)
    await record_depths(served, mode)
    data = await served.history(name="queue_depth", from_=at(0), to=at(3600))
    check_grid(data, T0, T0 + 3600, 60)
    points = sampled(only_series(data), GAUGE_FIGURES)
    assert {offset: (p["low"], p["high"]) for offset, p in points.items()} == {
        0: (4.0, 10.0),
        60: (2.0, 2.0),
    }
    assert points == {
        0: {"value": FIRST_POINT[mode], "low": 4.0, "high": 10.0},
        60: {"value": 2.0, "low": 2.0, "high": 2.0},
    }


@pytest.mark.parametrize("mode", ["sum", "max", "min"])
async def test_a_gauge_sampled_throughout_a_minute(
    history_sink_url: str, serve: Serve, mode: str
) -> None:
    """Twelve samples, one per 5-second bucket of the minute from T0+60
    (1, 2, ..., 12): over 1h that minute is one point, its value their time
    average (6.5), the highest (12) or the lowest (1); over 15m, four points
    of three samples each."""
    served = await build(serve, history_sink_url)
    depth = served.aegis.gauge("queue_depth", "Jobs waiting.", multiprocess_mode=mode)
    for number in range(1, 13):
        depth.set(number)
        await served.sample_at(55 + 5 * number)
    served.clock.advance(5)
    hour = await served.history(name="queue_depth", range="1h")
    check_grid(hour, T0 - 3480, T0 + 125, 60)
    value = {"sum": 6.5, "max": 12.0, "min": 1.0}[mode]
    assert sampled(only_series(hour), GAUGE_FIGURES) == {
        60: {"value": value, "low": 1.0, "high": 12.0},
    }
    quarter = await served.history(name="queue_depth", range="15m")
    expected = {}
    for index in range(4):
        first = 3 * index + 1
        low, high = float(first), float(first + 2)
        value = {"sum": first + 1.0, "max": high, "min": low}[mode]
        expected[60 + 15 * index] = {"value": value, "low": low, "high": high}
    assert sampled(only_series(quarter), GAUGE_FIGURES) == expected


@pytest.mark.parametrize(("mode", "value"), [("sum", 8.0), ("max", 5.0), ("min", 3.0)])
async def test_a_gauge_of_two_processes_in_each_mode(
    shared_sink: Any,
    serve: Serve,
    make_aegis: Callable[..., Aegis],
    mode: str,
    value: float,
) -> None:
    """Two processes of the app on one store sample the same bucket (3 and
    5): their sum, the higher or the lower; low and high whichever mode."""
    served = await build(serve, shared_sink)
    other = await another_process(make_aegis, shared_sink, served.clock)
    for pipeline, depth in ((served.aegis, 3), (other, 5)):
        pipeline.gauge("workers_busy", "Busy workers.", multiprocess_mode=mode).set(depth)
    served.clock.advance(15)
    await flush(served.aegis)
    await flush(other)
    served.clock.advance(15)
    data = await served.history(name="workers_busy", from_=at(0), to=at(60))
    check_grid(data, T0, T0 + 60, 5)
    assert sampled(only_series(data), GAUGE_FIGURES) == {
        15: {"value": value, "low": 3.0, "high": 5.0}
    }


async def test_a_gauge_by_label_and_a_metric_only_another_process_declared(
    shared_sink: Any, serve: Serve, make_aegis: Callable[..., Aegis]
) -> None:
    """The metric is found in the history's descriptions (help as written)
    when this process did not declare it; one series per pool, ordered by
    the highest sample."""
    served = await build(serve, shared_sink)
    other = await another_process(make_aegis, shared_sink, served.clock)
    helped = 'Connections in use, "per pool" \u2014 caf\u00e9'
    pools = other.gauge("pool_in_use", helped, ("pool",), multiprocess_mode="max")
    pools.labels("db").set(4)
    pools.labels("cache").set(9)
    served.clock.advance(10)
    await flush(other)
    pools.labels("db").set(6)
    served.clock.advance(5)
    await flush(other)
    served.clock.advance(5)
    bad = await served.ask("name=pool_in_use&range=not-a-range")
    api_apps.assert_bad_parameter(bad, "range")  # the range is checked first
    data = await served.history(name="pool_in_use", by="pool", from_=at(0), to=at(60))
    assert (data["help"], data["labels"], data["multiprocess_mode"]) == (
        helped, ["pool"], "max",
    )  # fmt: skip
    shown = {s["labels"]["pool"]: sampled(s["points"], GAUGE_FIGURES) for s in data["series"]}
    assert list(shown) == ["cache", "db"]
    assert shown == {
        "cache": {10: {"value": 9.0, "low": 9.0, "high": 9.0},
                  15: {"value": 9.0, "low": 9.0, "high": 9.0}},
        "db": {10: {"value": 4.0, "low": 4.0, "high": 4.0},
               15: {"value": 6.0, "low": 6.0, "high": 6.0}},
    }  # fmt: skip
    # All pools added up: both samples of a bucket in one point.
    assert sampled(only_series(await served.history(name="pool_in_use", from_=at(0),
                                                    to=at(60))), GAUGE_FIGURES) == {
        10: {"value": 9.0, "low": 4.0, "high": 9.0},
        15: {"value": 9.0, "low": 6.0, "high": 9.0},
    }  # fmt: skip


# -- every sink the same ------------------------------------------------------------------


async def record_everything(served: HistoryServed) -> None:
    orders = served.aegis.counter("orders_total", "Orders placed.", ("region",))
    depth = served.aegis.gauge("queue_depth", "Jobs waiting.", ("pool",))
    jobs = served.aegis.histogram("job_seconds", "Job time.", ("queue",), buckets=BOUNDS)
    for step in range(1, 40):
        orders.labels(("eu", "us", "ap")[step % 3]).inc(step % 7)
        depth.labels(("a", "b")[step % 2]).set(step * 1.5 - 20)
        jobs.labels(("fast", "slow")[step % 2]).observe((step % 11) / 8)
        await served.sample_at(step * 35)
    served.clock.advance(100)


QUERIES: list[dict[str, Any]] = [
    {"name": name, **extra}
    for name in ("orders", "queue_depth", "job_seconds")
    for extra in (
        {"range": "15m"},
        {"range": "1h"},
        {"range": "24h"},
        {"range": "7d"},
        {"from_": at(100), "to": at(1000)},
    )
] + [
    {"name": "orders", "by": "region", "limit": 2, "range": "1h"},
    {"name": "queue_depth", "by": "pool", "range": "15m"},
    {"name": "job_seconds", "by": "queue", "range": "1h"},
]


async def test_every_sink_answers_the_same(postgres_url: str, tmp_path: Path, serve: Serve) -> None:
    """The same metrics sampled alike into memory, a SQLite file and
    PostgreSQL: every answer the same, to the last figure."""
    apps = [await build(serve, sink) for sink in
            ("memory://", f"sqlite:///{tmp_path / 'aegis.db'}", postgres_url)]  # fmt: skip
    for served in apps:
        await record_everything(served)
    for params in QUERIES:
        answers = [await served.history(**params) for served in apps]
        assert answers[0]["series"], params
        assert answers[1] == answers[0], params
        assert answers[2] == answers[0], params


# -- bad input ---------------------------------------------------------------------------

BAD = [
    ("", "name", "invalid_parameter"),
    ("name=", "name", "invalid_parameter"),
    ("name=refunds", "name", "unknown_metric"),
    ("name=orders_total_total", "name", "unknown_metric"),
    ("name=orders&by=color", "by", "invalid_parameter"),
    ("name=orders&by=region,color", "by", "invalid_parameter"),
    ("name=orders&by=le", "by", "invalid_parameter"),
    ("name=orders&range=2h", "range", "invalid_parameter"),
    ("name=orders&range=", "range", "invalid_parameter"),
    (f"name=orders&range=1h&from={at(0)}", "range", "invalid_parameter"),
    (f"name=orders&to={at(0)}", "from", "invalid_parameter"),
    (f"name=orders&from={at(60)}&to={at(0)}", "from", "invalid_parameter"),
    ("name=orders&from=yesterday", "from", "invalid_parameter"),
    (f"name=orders&from={at(0)}&to=soon", "to", "invalid_parameter"),
    ("name=orders&from=1969-12-31T00:00:00Z", "from", "invalid_parameter"),
    ("name=orders&limit=0", "limit", "invalid_parameter"),
    ("name=orders&limit=101", "limit", "invalid_parameter"),
    ("name=orders&limit=ten", "limit", "invalid_parameter"),
    ("name=orders&step=5", "step", "unknown_parameter"),
    ("name=orders&sort=count", "sort", "unknown_parameter"),
    ("name=orders&name=orders", "name", "invalid_parameter"),
    ("name=ord%01ers", "name", "invalid_parameter"),
    ("name=orders%0A", "name", "invalid_parameter"),
    ("name=orders&by=reg%7Fion", "by", "invalid_parameter"),
    ("name=orders&range=1h%00", "range", "invalid_parameter"),
    ("name=orders&by=%C2%85", "by", "invalid_parameter"),
    ("name=%FF", "name", "invalid_parameter"),
    ("name=" + "o" * 1025, "name", "invalid_parameter"),
]


async def test_bad_input_is_a_400_naming_the_parameter(history_sink_url: str, serve: Serve) -> None:
    served = await build(serve, history_sink_url)
    served.aegis.counter("orders_total", "Orders placed.", ("region",)).labels("eu").inc()
    await served.sample_at(5)
    for query, parameter, code in BAD:
        response = await served.ask(query)
        api_apps.assert_bad_parameter(response, parameter)
        assert response.headers["content-type"] == "application/json", query
        error = response.json()["error"]
        assert error["code"] == code, (query, error)
        if code == "unknown_metric":
            assert query.removeprefix("name=") in error["message"], error
        if query in ("name=orders&by=color", "name=orders&by=le"):
            assert "its labels: region" in error["message"], error
    # The well-formed question is answered.
    assert (await served.ask("name=orders&by=region")).status_code == 200


async def test_the_viewer_role_is_needed(serve: Serve) -> None:
    served = await build(serve, "memory://")
    served.aegis.counter("orders_total", "Orders placed.").inc()
    await served.sample_at(5)
    for token in (None, "not-a-token-at-all"):
        answer = await served.ask("name=orders", token=token)
        assert answer.status_code == 401, answer.text
    assert (await served.ask("name=orders")).status_code == 200


async def test_without_a_sink_that_keeps_history_a_declared_metric_is_503(
    tmp_path: Path, serve: Serve
) -> None:
    """A jsonl sink keeps no history: a declared metric's history is
    unavailable (503); bad input is still a 400, an unknown metric too."""
    served = await build(serve, f"jsonl:///{tmp_path / 'records.jsonl'}")
    orders = served.aegis.counter("orders_total", "Orders placed.", ("region",))
    orders.labels("eu").inc(3)
    await served.sample_at(5)
    for query in ("name=orders", "name=orders_total&by=region&range=24h"):
        response = await served.ask(query)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "history_unavailable"
    for query, parameter in (("name=orders&range=2h", "range"), ("name=orders&by=color", "by"),
                             ("name=refunds", "name"), ("", "name")):  # fmt: skip
        api_apps.assert_bad_parameter(await served.ask(query), parameter)
    unknown = await served.ask("name=refunds")
    assert unknown.json()["error"]["code"] == "unknown_metric"

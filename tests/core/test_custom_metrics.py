"""The app's own metrics: declaration rules, recording from many threads, the
label bound, and a forked child starting at zero."""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mw import Aegis
from aegis_mw.core.custom_metrics import OVERFLOW, CustomMetrics, MetricSnapshot

BUCKETS = (0.1, 0.5, 1.0)


def registry() -> CustomMetrics:
    return CustomMetrics("aegis_", BUCKETS)


def only(metrics: CustomMetrics, name: str) -> MetricSnapshot:
    [found] = [metric for metric in metrics.read() if metric.name == name]
    return found


@pytest.mark.parametrize(
    ("kind", "name", "options", "message"),
    [
        ("counter", "9lives", {}, "not a metric name"),
        ("counter", "orders-total", {}, "not a metric name"),
        ("counter", "", {}, "not a metric name"),
        ("counter", 42, {}, "not a metric name"),
        ("counter", "_total", {}, "may not end in"),
        ("gauge", "q" * 201, {}, "at most 200 characters"),
        ("counter", "orders_total_total", {}, "may not end in"),
        ("histogram", "latency_bucket", {}, "may not end in"),
        ("gauge", "queue_count", {}, "may not end in"),
        ("gauge", "queue_sum", {}, "may not end in"),
        ("counter", "aegis_orders_total", {}, "are taken"),
        ("meter", "orders", {}, "kind is one of"),
        ("counter", "orders_total", {"labels": "region"}, "sequence of names"),
        ("counter", "orders_total", {"labels": ("re-gion",)}, "not a label name"),
        ("counter", "orders_total", {"labels": ("__name",)}, "not a label name"),
        ("counter", "orders_total", {"labels": (3,)}, "not a label name"),
        ("counter", "orders_total", {"labels": ("a", "a")}, "named twice"),
        ("histogram", "job_seconds", {"labels": ("le",)}, "histogram's own label"),
        ("counter", "orders_total", {"help_text": " "}, "help must be"),
        ("counter", "orders_total", {"max_series": 0}, "max_series must be"),
        ("counter", "orders_total", {"max_series": True}, "max_series must be"),
        ("histogram", "job_seconds", {"buckets": ()}, "finite numbers"),
        ("histogram", "job_seconds", {"buckets": (1, math.nan)}, "finite numbers"),
        ("histogram", "job_seconds", {"buckets": (1, 1)}, "must increase"),
        ("histogram", "job_seconds", {"buckets": ("a",)}, "must be numbers"),
        ("histogram", "job_seconds", {"buckets": (-1, 1)}, "0 or more"),
        ("gauge", "jobs", {"mode": "average"}, "multiprocess_mode must be one of"),
        ("counter", "orders_total", {"mode": "max"}, "for gauges only"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_problem(
    kind: str, name: object, options: dict[str, object], message: str
) -> None:
    help_text = options.pop("help_text", "Some help.")
    with pytest.raises(ValueError, match=message):
        registry().declare(kind, name, help_text, **options)  # type: ignore[arg-type]


def test_a_name_of_200_characters_is_declared() -> None:
    name = "q" * 200
    assert registry().declare("gauge", name, "Some help.").name == name


def test_declaring_again_alike_gives_the_same_metric_and_otherwise_refuses() -> None:
    metrics = registry()
    first = metrics.declare("counter", "orders_total", "Orders.", ("region",))
    assert metrics.declare("counter", "orders_total", "Orders.", ["region"]) is first
    # The family name is the counter's without _total: "orders" is the same family.
    assert metrics.declare("counter", "orders", "Orders.", ("region",)) is first
    with pytest.raises(ValueError, match="declared already, as a counter"):
        metrics.declare("gauge", "orders", "Orders.", ("region",))
    with pytest.raises(ValueError, match="declared already"):
        metrics.declare("counter", "orders_total", "Orders.", ("country",))
    with pytest.raises(ValueError, match="declared already"):
        metrics.declare("counter", "orders_total", "Other help.", ("region",))
    with pytest.raises(ValueError, match="declared already"):
        metrics.declare("counter", "orders_total", "Orders.", ("region",), max_series=5)


def test_a_counter_adds_finite_amounts_and_refuses_the_rest() -> None:
    counter = registry().declare("counter", "hits_total", "Hits.")
    counter.inc()
    counter.inc(2)
    counter.inc(0.5)
    counter.inc(True)  # an int, as in prometheus-client
    counter.inc(Fraction(1, 2))  # any real number, as a float
    for amount, error in [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                          (10**400, ValueError), ("1", TypeError), (None, TypeError),
                          (Decimal(1), TypeError), (1j, TypeError)]:  # fmt: skip
        with pytest.raises(error):
            counter.inc(amount)
    assert counter.snapshot().series == {(): 5.0}
    with pytest.raises(ValueError, match="beyond a float's range"):
        counter.inc(Fraction(10**400))
    big = registry().declare("counter", "bytes_total", "Bytes.")
    big.inc(2**60)  # past 2**53: a float, so that sums never leave a float's range
    big.inc(0.5)
    assert big.snapshot().series == {(): 2.0**60}
    exact = registry().declare("counter", "exact_total", "Exact.")
    for _ in range(3):
        exact.inc(2**53)  # each exact, the sum past 2**53: read as a float
    [total] = exact.snapshot().series.values()
    assert type(total) is float and total == 3 * 2.0**53


def test_a_gauge_sets_and_moves() -> None:
    gauge = registry().declare("gauge", "jobs", "Jobs.", mode="max")
    gauge.inc(3)
    gauge.dec()
    assert gauge.snapshot().series == {(): 2}
    gauge.set(10)
    gauge.inc(0.5)
    assert gauge.snapshot().series == {(): 10.5}
    gauge.set(-1)
    assert gauge.snapshot().series == {(): -1}
    with pytest.raises(ValueError):
        gauge.inc(math.inf)
    with pytest.raises(TypeError):
        gauge.set("3")
    with pytest.raises(ValueError, match="beyond a float's range"):
        gauge.set(10**400)
    gauge.set(math.nan)  # a gauge may be NaN, as in Prometheus
    assert math.isnan(gauge.snapshot().series[()])
    assert gauge.snapshot().mode == "max"


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = registry().declare("histogram", "job_seconds", "Jobs.")
    assert histogram.bounds == BUCKETS  # the latency's buckets by default
    for value in (0, 0.05, 0.1, 0.2, 1.0, 7, math.inf):
        histogram.observe(value)
    counts = histogram.snapshot().series[()]
    # Buckets are "less than or equal": 0.1 is in the first, 1.0 in the third.
    assert counts[:-1] == [3, 1, 1, 2]
    assert counts[-1] == math.inf
    for value, error in [(math.nan, ValueError), (-3, ValueError), (10**400, ValueError),
                         ("1", TypeError)]:  # fmt: skip
        with pytest.raises(error):
            histogram.observe(value)
    custom = registry().declare("histogram", "size_bytes", "Sizes.", buckets=(10, 100, math.inf))
    assert custom.bounds == (10.0, 100.0)  # +Inf is always there
    custom.observe(50)
    assert custom.snapshot().series[()] == [0, 1, 0, 50]


def test_labels_by_position_or_name_and_their_errors() -> None:
    counter = registry().declare("counter", "orders_total", "Orders.", ("region", "tier"))
    counter.labels("eu", "gold").inc()
    counter.labels(tier="gold", region="eu").inc()
    counter.labels("eu", 1).inc()  # values are made text
    assert counter.labels("eu", "1") is counter.labels("eu", 1)
    assert counter.snapshot().series == {("eu", "gold"): 2, ("eu", "1"): 1}
    with pytest.raises(ValueError, match="2 values, not 1"):
        counter.labels("eu")
    with pytest.raises(ValueError, match="has the labels"):
        counter.labels(region="eu")
    with pytest.raises(TypeError, match="not both"):
        counter.labels("eu", tier="gold")
    with pytest.raises(ValueError, match=r"record through \.labels"):
        counter.inc()
    plain = registry().declare("counter", "hits_total", "Hits.")
    with pytest.raises(ValueError, match="0 values, not 1"):
        plain.labels("x")
    gauge = registry().declare("gauge", "jobs", "Jobs.", ("queue",))
    for method in (gauge.inc, gauge.dec, gauge.set):
        with pytest.raises(ValueError, match=r"record through \.labels"):
            method(1)
    histogram = registry().declare("histogram", "job_seconds", "Jobs.", ("kind",))
    with pytest.raises(ValueError, match=r"record through \.labels"):
        histogram.observe(1)


def test_label_sets_past_the_bound_go_to_one_overflow_series_and_are_counted() -> None:
    counter = registry().declare("counter", "orders_total", "Orders.", ("user",), max_series=3)
    for user in ("a", "b", "c", "d", "e", "a", "e"):
        counter.labels(user=user).inc()
    snapshot = counter.snapshot()
    assert snapshot.series == {("a",): 2, ("b",): 1, ("c",): 1, (OVERFLOW,): 3}
    assert snapshot.overflowed == 2  # d and e: each label set once
    assert counter.labels("e") is counter.labels(OVERFLOW)  # found again without the lock


def test_a_str_subclass_is_labelled_by_its_text_whatever_came_first() -> None:
    class Region(str, enum.Enum):
        EU = "eu"

    counter = registry().declare("counter", "orders_total", "Orders.", ("region",))
    counter.labels(Region.EU).inc()
    counter.labels("eu").inc()
    counter.labels(region=Region.EU).inc()
    assert counter.snapshot().series == {("eu",): 3}
    named = registry().declare("counter", "calls_total", "Calls.", ("self",))
    named.labels(self="x").inc()  # a label may be named self
    assert named.snapshot().series == {("x",): 1}


def test_counts_are_exact_from_many_threads_at_once() -> None:
    metrics = registry()
    counter = metrics.declare("counter", "hits_total", "Hits.", ("shard",))
    gauge = metrics.declare("gauge", "open", "Open.")
    histogram = metrics.declare("histogram", "job_seconds", "Jobs.")
    threads, rounds = 8, 20_000
    start = threading.Barrier(threads)

    def work(number: int) -> None:
        start.wait()
        shared = counter.labels("shared")
        own = counter.labels(f"own{number}")
        for index in range(rounds):
            shared.inc()
            own.inc(2)
            gauge.inc()
            gauge.dec()
            histogram.observe(index % 4 * 0.3)

    workers = [threading.Thread(target=work, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert not worker.is_alive()
    series = only(metrics, "hits").series
    assert series[("shared",)] == threads * rounds
    assert all(series[(f"own{number}",)] == 2 * rounds for number in range(threads))
    assert only(metrics, "open").series == {(): 0}
    counts = only(metrics, "job_seconds").series[()]
    assert counts[:-1] == [threads * rounds // 4 * n for n in (1, 1, 2, 0)]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["inc", "set"]),
            st.integers(-(10**15), 10**15),  # exact sums, whatever cell holds what
            st.integers(0, 2),  # which thread
        ),
        max_size=40,
    )
)
def test_a_gauge_is_what_its_operations_make_it(operations: list[tuple[str, int, int]]) -> None:
    """Whatever thread moved it before, a gauge reads exactly what was last set,
    plus the changes since."""
    gauge = registry().declare("gauge", "level", "Level.")
    since_set: list[list[int]] = [[], [], []]
    base = 0
    for operation, number, thread in operations:
        if operation == "set":
            in_thread(thread, gauge.set, number)
            base, since_set = number, [[], [], []]
        else:
            in_thread(thread, gauge.inc, number)
            since_set[thread].append(number)
    expected = base + sum(sum(changes) for changes in since_set)
    assert gauge.snapshot().series == {(): expected}


def in_thread(number: int, call: Callable[[float], None], value: float) -> None:
    """``call(value)`` in the calling thread (0) or a thread of its own."""
    if number == 0:
        call(value)
        return
    worker = threading.Thread(target=call, args=(value,))
    worker.start()
    worker.join(30)


def test_a_set_is_read_back_exactly_after_float_changes() -> None:
    gauge = registry().declare("gauge", "level", "Level.")
    gauge.inc(1.1)
    gauge.set(0.3)
    assert gauge.snapshot().series == {(): 0.3}
    gauge.inc(1e16)
    gauge.set(1)
    assert gauge.snapshot().series == {(): 1}


def test_names_the_apps_registry_or_the_constant_labels_have_are_refused(
    make_aegis: Callable[..., Aegis],
) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as ClientCounter
    from prometheus_client import Gauge as ClientGauge

    registry = CollectorRegistry()
    ClientCounter("signups_total", "Sign-ups.", registry=registry)
    aegis = make_aegis(metrics_registry=registry, metrics_labels="env=prod")
    with pytest.raises(ValueError, match="registry has a metric of that name"):
        aegis.counter("signups_total", "Sign-ups.")
    with pytest.raises(ValueError, match="registry has a metric of that name"):
        aegis.gauge("signups", "Sign-ups.")
    ClientGauge("lat_sum", "A gauge ending like a histogram's sum.", registry=registry)
    with pytest.raises(ValueError, match="registry has a metric of that name"):
        aegis.histogram("lat", "Would render lat_sum too.")
    with pytest.raises(ValueError, match=r"\['env'\] are labels of every series"):
        aegis.counter("logins_total", "Logins.", ("env", "user"))
    aegis.counter("logins_total", "Logins.", ("user",)).labels("ann").inc()
    unregistered = make_aegis(metrics_registry="none")
    unregistered.counter("signups_total", "Sign-ups.")  # no registry on its /metrics


def test_the_pipeline_declares_them_and_a_reset_starts_them_at_zero(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(metrics_namespace="shop")
    counter = aegis.counter("orders_total", "Orders.", ["region"])
    counter.labels("eu").inc(3)
    gauge = aegis.gauge("jobs", "Jobs.", multiprocess_mode="min")
    gauge.set(4)
    histogram = aegis.histogram("job_seconds", "Jobs.")
    histogram.observe(0.2)
    assert histogram.bounds == aegis.settings.metrics_buckets
    with pytest.raises(ValueError, match="'shop_'"):
        aegis.counter("shop_orders_total", "Orders.")
    aegis.counter("aegis_orders_total", "Orders.")  # another namespace's name is the app's
    for taken in (
        "process_open_fds",
        "python_gc_objects_collected",
    ):  # prometheus-client's own, on /metrics
        with pytest.raises(ValueError, match="are taken"):
            aegis.gauge(taken, "Taken.")

    aegis.custom_metrics.reset_after_fork()  # a real fork: tests/core/test_fork.py
    readings = {metric.name: metric for metric in aegis.custom_metrics.read()}
    assert readings["orders"].series == {("eu",): 0}
    assert readings["jobs"].series == {(): 0}
    assert readings["job_seconds"].series[()] == [0] * (len(histogram.bounds) + 2)
    counter.labels("eu").inc()  # the child records into the same objects
    assert only(aegis.custom_metrics, "orders").series == {("eu",): 1}

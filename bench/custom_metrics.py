"""Recording into custom metrics: aegis's against prometheus-client's, in ns per call.

Both libraries in one process, the same operations side by side:

- a counter's ``.inc()`` without labels; a kept child's ``.inc()`` (the child
  of ``.labels(region="eu")``, looked up once); ``.labels(...).inc()`` looked
  up on every call, by name and by position;
- a gauge's ``.set(value)`` and ``.inc()``;
- a histogram's ``.observe(value)``, the values spread evenly over aegis's
  buckets (``aegis.settings.metrics_buckets``, +Inf included): prometheus-client
  once with its default buckets, once with aegis's (the same bounds unless
  ``--buckets`` changes aegis's; its ``observe`` scans them in order);
- the counter's ``.inc()`` from ``--threads`` threads into one series at once:
  wall and process CPU time of the whole run per call, and the final total
  checked to be exact for both libraries.

aegis's metrics are declared on an ``Aegis`` with a memory sink (its flusher
held back); prometheus-client's live in a private ``CollectorRegistry``. Each
operation runs as a compiled loop of ``--count`` calls (the statement inlined
in a ``for`` over a list of values, as ``timeit`` does), timed with
``time.perf_counter_ns`` after a GC pass (the collector stays on: what a call
allocates is charged to it). Every round runs every loop once, in rotating
order, plus the same loop with an empty body; the table gives the median over
rounds of each loop's ns per call minus the empty loop's in the same round,
and the ratio of the two medians (below 1: aegis is cheaper).

    python bench/custom_metrics.py                        # about 40 seconds
    python bench/custom_metrics.py --rounds 5 --count 50000 --thread-rounds 3   # quick look
    python bench/custom_metrics.py --buckets 0.01,0.1,1   # aegis's histograms on other bounds
    python bench/custom_metrics.py --json                 # the figures as JSON too
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

#: (key, operation, aegis's statement, prometheus-client's statement). The
#: statements run inside the timed loop, ``value`` being the loop's variable.
OPERATIONS: tuple[tuple[str, str, str, str], ...] = (
    ("counter_inc", "counter .inc(), no labels", "plain.inc()", "plain.inc()"),
    ("child_inc", "counter, kept child .inc()", "child.inc()", "child.inc()"),
    (
        "labels_named_inc",
        'counter .labels(region="eu").inc()',
        'counter.labels(region="eu").inc()',
        'counter.labels(region="eu").inc()',
    ),
    (
        "labels_positional_inc",
        'counter .labels("eu").inc()',
        'counter.labels("eu").inc()',
        'counter.labels("eu").inc()',
    ),
    ("gauge_set", "gauge .set(value)", "gauge.set(value)", "gauge.set(value)"),
    ("gauge_inc", "gauge .inc()", "gauge.inc()", "gauge.inc()"),
    (
        "histogram_observe",
        "histogram .observe(value), prom default buckets",
        "histogram.observe(value)",
        "histogram.observe(value)",
    ),
    (
        "histogram_observe_same_buckets",
        "histogram .observe(value), same buckets",
        "histogram.observe(value)",
        "histogram_same.observe(value)",
    ),
)
LIBRARIES = ("aegis", "prometheus_client")
#: The names a loop's statement may use, passed to it as arguments.
OBJECT_NAMES = ("plain", "child", "counter", "gauge", "histogram", "histogram_same")
EMPTY = "empty"

Loop = Callable[..., int]


def compile_loop(statement: str) -> Loop:
    """A function running ``statement`` once per value, returning the ns it took.

    The objects are its arguments (fast locals, the same for both libraries)."""
    source = (
        f"def loop(values, {', '.join(OBJECT_NAMES)}):\n"
        "    started = perf_counter_ns()\n"
        "    for value in values:\n"
        f"        {statement}\n"
        "    return perf_counter_ns() - started\n"
    )
    namespace: dict[str, Any] = {"perf_counter_ns": time.perf_counter_ns}
    exec(compile(source, f"<loop: {statement}>", "exec"), namespace)
    loop: Loop = namespace["loop"]
    return loop


def spread_values(bounds: Sequence[float], count: int) -> list[float]:
    """``count`` values hitting every bucket of ``bounds`` (and +Inf) as often, shuffled."""
    edges = [0.0, *bounds]
    inside = [(low + high) / 2 for low, high in itertools.pairwise(edges)]
    picks = [*inside, bounds[-1] * 1.5]
    values = [picks[index % len(picks)] for index in range(count)]
    random.Random(0).shuffle(values)
    return values


def build_aegis(buckets: str | None) -> tuple[Any, dict[str, Any]]:
    from aegis_mw import Aegis

    options: dict[str, Any] = {}
    if buckets is not None:
        options["metrics_buckets"] = buckets
    aegis = Aegis(
        sink="memory://",
        flush_interval=3600,
        batch_size=1_000_000,
        metrics_registry="none",
        environ={},
        **options,
    )
    counter = aegis.counter("bench_orders_total", "Orders.", labels=("region",))
    objects = {
        "plain": aegis.counter("bench_hits_total", "Hits."),
        "child": counter.labels(region="eu"),
        "counter": counter,
        "gauge": aegis.gauge("bench_jobs", "Jobs."),
        "histogram": aegis.histogram("bench_job_seconds", "Job time."),
        "histogram_same": None,
    }
    return aegis, objects


def build_prometheus(bounds: Sequence[float]) -> tuple[Any, dict[str, Any]]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    counter = Counter("bench_orders_total", "Orders.", ("region",), registry=registry)
    objects = {
        "plain": Counter("bench_hits_total", "Hits.", registry=registry),
        "child": counter.labels(region="eu"),
        "counter": counter,
        "gauge": Gauge("bench_jobs", "Jobs.", registry=registry),
        "histogram": Histogram("bench_job_seconds", "Job time.", registry=registry),
        "histogram_same": Histogram(
            "bench_job_same_seconds", "Job time.", buckets=tuple(bounds), registry=registry
        ),
    }
    return registry, objects


def timed(loop: Loop, values: list[float], objects: dict[str, Any]) -> float:
    """ns per call of one run of ``loop``."""
    gc.collect()
    return loop(values, **objects) / len(values)


def run_threads(
    loop: Loop, values: list[float], objects: dict[str, Any], threads: int
) -> tuple[float, float]:
    """Wall and process CPU ns per call of ``threads`` threads running ``loop`` at once."""
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        loop(values, **objects)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    gc.collect()
    cpu_started = time.process_time_ns()
    started = time.perf_counter_ns()
    barrier.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter_ns() - started
    cpu = time.process_time_ns() - cpu_started
    calls = threads * len(values)
    return elapsed / calls, cpu / calls


def check(what: str, got: float, expected: int) -> None:
    if got != expected:
        raise AssertionError(f"{what}: total {got!r}, expected {expected}")


def measure_threads(
    aegis: Any, rounds: int, count: int, threads: int
) -> dict[str, dict[str, list[float]]]:
    """The counter's ``.inc()`` from ``threads`` threads at once into one series,
    a fresh counter per round and library; totals checked exact."""
    from prometheus_client import CollectorRegistry, Counter

    inc, empty = compile_loop("plain.inc()"), compile_loop("pass")
    values = [0.0] * count
    results: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": []} for name in (*LIBRARIES, EMPTY)
    }
    nothing: dict[str, Any] = dict.fromkeys(OBJECT_NAMES)
    for round_number in range(rounds):
        order = [*LIBRARIES, EMPTY]
        shift = round_number % len(order)
        for name in order[shift:] + order[:shift]:
            objects = dict(nothing)
            if name == "aegis":
                objects["plain"] = aegis.counter(f"bench_threads_{round_number}_total", "Hits.")
                wall, cpu = run_threads(inc, values, objects, threads)
                total = objects["plain"].snapshot().series[()]
            elif name == "prometheus_client":
                registry = CollectorRegistry()
                objects["plain"] = Counter("bench_threads_total", "Hits.", registry=registry)
                wall, cpu = run_threads(inc, values, objects, threads)
                total = registry.get_sample_value("bench_threads_total")
            else:
                wall, cpu = run_threads(empty, values, objects, threads)
                total = threads * count
            check(f"{name}, {threads} threads, round {round_number}", total, threads * count)
            results[name]["wall"].append(wall)
            results[name]["cpu"].append(cpu)
    return results


def measure(args: argparse.Namespace) -> dict[str, Any]:
    aegis, ours = build_aegis(args.buckets)
    bounds = tuple(aegis.settings.metrics_buckets)
    registry, theirs = build_prometheus(bounds)
    objects = {"aegis": ours, "prometheus_client": theirs}
    values = spread_values(bounds, args.count)
    empty = compile_loop("pass")
    tasks: list[tuple[str, str, Loop]] = [(EMPTY, EMPTY, empty)]
    for key, _, aegis_statement, prometheus_statement in OPERATIONS:
        tasks.append((key, "aegis", compile_loop(aegis_statement)))
        tasks.append((key, "prometheus_client", compile_loop(prometheus_statement)))
    raw: dict[tuple[str, str], list[float]] = {(key, library): [] for key, library, _ in tasks}
    nothing: dict[str, Any] = dict.fromkeys(OBJECT_NAMES)
    for _, library, loop in tasks:  # warm up: series made, caches filled
        timed(loop, values, objects.get(library, nothing))
    for round_number in range(args.rounds):
        shift = round_number % len(tasks)
        for key, library, loop in tasks[shift:] + tasks[:shift]:
            raw[key, library].append(timed(loop, values, objects.get(library, nothing)))

    # Every call counted, in both libraries (warm-up included).
    calls = (args.rounds + 1) * args.count
    check("aegis counter", ours["plain"].snapshot().series[()], calls)
    check("aegis counter{region=eu}", ours["counter"].snapshot().series["eu",], 3 * calls)
    check("aegis histogram", sum(ours["histogram"].snapshot().series[()][:-1]), 2 * calls)
    check("prometheus-client counter", registry.get_sample_value("bench_hits_total"), calls)
    check(
        "prometheus-client counter{region=eu}",
        registry.get_sample_value("bench_orders_total", {"region": "eu"}),
        3 * calls,
    )
    for name in ("bench_job_seconds", "bench_job_same_seconds"):
        check(f"prometheus-client {name}", registry.get_sample_value(f"{name}_count"), calls)

    threaded = measure_threads(aegis, args.thread_rounds, args.count, args.threads)
    aegis.shutdown()

    empties = raw[EMPTY, EMPTY]
    rows: list[dict[str, Any]] = []
    for key, label, _, _ in OPERATIONS:
        row: dict[str, Any] = {"operation": key, "label": label}
        for library in LIBRARIES:
            row[f"{library}_ns"] = statistics.median(
                run - base for run, base in zip(raw[key, library], empties, strict=True)
            )
        rows.append(row)
    for clock in ("wall", "cpu"):
        row = {
            "operation": f"counter_inc_{args.threads}_threads_{clock}",
            "label": f"counter .inc(), {args.threads} threads, {'wall' if clock == 'wall' else 'CPU'}",
        }
        for library in LIBRARIES:
            row[f"{library}_ns"] = statistics.median(
                run - base
                for run, base in zip(threaded[library][clock], threaded[EMPTY][clock], strict=True)
            )
        rows.append(row)
    for row in rows:
        row["ratio"] = row["aegis_ns"] / row["prometheus_client_ns"]
    return {
        "count": args.count,
        "rounds": args.rounds,
        "threads": args.threads,
        "thread_rounds": args.thread_rounds,
        "buckets": list(bounds),
        "empty_loop_ns": statistics.median(empties),
        "empty_threads_wall_ns": statistics.median(threaded[EMPTY]["wall"]),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--count", type=int, default=200_000, help="calls per loop (per thread)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--thread-rounds", type=int, default=7)
    parser.add_argument(
        "--buckets", default=None, help="aegis's metrics_buckets, such as '0.01,0.1,1'"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.rounds < 1 or args.count < 1 or args.threads < 1 or args.thread_rounds < 1:
        parser.error("--rounds, --count, --threads and --thread-rounds must be at least 1")

    started = time.perf_counter()
    report = measure(args)
    print(
        f"\nCustom metrics, {args.rounds} rounds x {args.count:,} calls per operation "
        f"({args.thread_rounds} rounds x {args.threads} threads x {args.count:,} for the "
        f"threaded rows); medians of ns per call minus an empty loop's "
        f"({report['empty_loop_ns']:.1f} ns; {report['empty_threads_wall_ns']:.1f} ns wall "
        f"with {args.threads} threads); buckets {report['buckets']}\n"
    )
    header = f"{'operation':48} {'aegis ns':>9} {'prom ns':>9} {'aegis/prom':>10}"
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        print(
            f"{row['label']:48} {row['aegis_ns']:>9.1f} {row['prometheus_client_ns']:>9.1f}"
            f" {row['ratio']:>10.2f}"
        )
    print(
        f"\n{args.threads}-thread totals exact for both libraries in every round "
        f"({args.threads * args.count:,} each); run took {time.perf_counter() - started:.1f} s"
    )
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

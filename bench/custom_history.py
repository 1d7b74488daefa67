"""The app's own metrics in the stored history: what it costs the background
pipeline, and a chart's read.

Once per 5-second bucket the flusher samples every series of the app's custom
metrics and writes what changed to the history store, at the four stored
resolutions (see ``aegis_mw/core/custom_history.py``). Measured here, for
``--series`` label sets of a counter, a histogram (the request latency's 14
buckets) and a gauge each, every series changed in every bucket (the worst
case: a series that did not change costs the sample only):

- ``sample``: the sampler's ``take`` (reading every series, the differences),
  CPU time;
- ``write``: the store's transaction of those changes (SQLite file, and the
  real PostgreSQL with ``--postgres URL``), through the sink's own ``write``:
  the writing thread's CPU time (SQLite's own work included; PostgreSQL's is
  the server's), and its wall time, paced by the pipeline's pauses between
  slices of work (``aegis_mw/core/gil_slices.py``), so longer;
- per second: (sample + write CPU) / 5, the share of a core;
- ``read``: ``GET custom-metric-history`` of the counter over 24h, ``by`` its
  label, once a day of buckets is stored (``--days`` of 5-s buckets written
  first, 1 by default).

Medians of ``--rounds`` rounds; each round samples and writes one bucket.

    python bench/custom_history.py                       # about 30 seconds
    python bench/custom_history.py --series 10,100,1000 --postgres postgresql://...

With ``--postgres``, it writes into a schema of its own in that database
(``aegis_bench_custom_history``, dropped after each size), never the tables
an app keeps there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aegis_mw import Aegis
from aegis_mw.core.custom_history import CustomSampler
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import RollupDelta
from aegis_mw.history.custom_series import custom_history
from aegis_mw.history.ranges import resolve
from aegis_mw.sinks import build_sink

BUCKET = 5
START = 1_800_000_000  # a fixed time, whole hours


def declare(aegis: Aegis, series: int) -> list[Any]:
    """A counter, a histogram and a gauge of ``series`` label sets each."""
    counter = aegis.counter("bench_orders_total", "Orders.", labels=("shop",), max_series=series)
    seconds = aegis.histogram("bench_seconds", "Time.", labels=("shop",), max_series=series)
    gauge = aegis.gauge("bench_jobs", "Jobs.", labels=("shop",), max_series=series)
    shops = [f"shop-{n}" for n in range(series)]
    return [(counter.labels(shop), seconds.labels(shop), gauge.labels(shop)) for shop in shops]


def record(children: list[Any], round_: int) -> None:
    for number, (count, seconds, jobs) in enumerate(children):
        count.inc(1 + number % 3)
        seconds.observe(0.001 * (1 + (number + round_) % 200))
        jobs.set(number + round_)


def one_bucket(
    sampler: CustomSampler, sink: Any, bucket: int, sequence: int
) -> tuple[float, float, float, int]:
    """Sample and write one bucket: the sample's CPU seconds, the write's CPU
    seconds (this thread's, SQLite's work included) and wall seconds (paced:
    the writer pauses between slices, see aegis_mw/core/gil_slices.py), and
    the cells."""
    started = time.thread_time()
    cells, metrics = sampler.take(bucket + 0.5, forced=True)
    sampled = time.thread_time()
    delta = RollupDelta()
    delta.custom, delta.metrics = cells, metrics
    delta.delta_id = f"bench-{bucket}-{sequence}"
    wall = time.perf_counter()
    sink.write(Batch(rollups=delta, batch_id=f"b{sequence}"))
    wall = time.perf_counter() - wall
    return sampled - started, time.thread_time() - sampled, wall, len(cells)


def measure(url: str, series: int, rounds: int, days: float) -> dict[str, Any]:
    aegis = Aegis(sink="memory://", metrics_registry="none")  # its flusher never started
    children = declare(aegis, series)
    sampler = CustomSampler(aegis.custom_metrics)
    sink = build_sink(url)
    try:
        samples, writes, walls = [], [], []
        cells = 0
        for round_ in range(rounds):
            record(children, round_)
            took, wrote, wall, cells = one_bucket(sampler, sink, START + round_ * BUCKET, round_)
            samples.append(took)
            writes.append(wrote)
            walls.append(wall)
        # A day of buckets for the read (fewer series: what one chart reads).
        buckets = int(days * 86_400 / BUCKET)
        reader = Aegis(sink="memory://", metrics_registry="none")
        few = declare(reader, min(series, 20))
        filler = CustomSampler(reader.custom_metrics)
        end = START + 86_400 * 2
        delta = RollupDelta()
        for number in range(buckets):
            record(few, number)
            changed, metrics = filler.take(end - (buckets - number) * BUCKET + 0.5, forced=True)
            delta.custom.update(changed)
            delta.metrics.update(metrics)
            if len(delta.custom) >= 20_000 or number == buckets - 1:  # a write per 20,000 cells
                delta.delta_id = f"fill-{number}"
                sink.write(Batch(rollups=delta, batch_id=f"f{number}"))
                delta = RollupDelta()
        [metric] = [m for m in reader.custom_metrics.read() if m.name == "bench_orders"]
        window = resolve("24h", None, None, now=end - 1)
        reads = []
        for _ in range(max(rounds // 3, 3)):
            started = time.perf_counter()
            answer = custom_history(sink.read_custom_rollups, window, metric, ("shop",), 100)
            reads.append(time.perf_counter() - started)
        assert answer["series"], "nothing read back"
    finally:
        sink.close()
    sample = statistics.median(samples)
    write = statistics.median(writes)
    return {
        "store": url.split(":", 1)[0],
        "series": series,
        "cells": cells,
        "sample_ms": round(sample * 1000, 3),
        "write_ms": round(write * 1000, 3),
        "write_wall_ms": round(statistics.median(walls) * 1000, 3),
        "per_cell_us": round((sample + write) / cells * 1e6, 2),
        "core_share_percent": round((sample + write) / BUCKET * 100, 3),
        "read_24h_ms": round(statistics.median(reads) * 1000, 2),
        "read_buckets": buckets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", default="10,100,1000", help="label sets per metric")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--days", type=float, default=1.0, help="stored for the read")
    parser.add_argument("--postgres", help="also into this PostgreSQL (a schema of its own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for number, series in enumerate(int(n) for n in args.series.split(",")):
            urls = [f"sqlite:///{Path(folder) / f'bench-{number}.db'}"]
            if args.postgres:
                urls.append(_schema_of_its_own(args.postgres, create=True))
            for url in urls:
                try:
                    results.append(measure(url, series, args.rounds, args.days))
                finally:
                    if url.startswith("postgresql"):
                        _schema_of_its_own(args.postgres, create=False)
    print(
        f"{'store':<10} {'series':>7} {'cells':>6} {'sample ms':>10} {'write ms':>9} "
        f"{'wall ms':>8} {'µs/cell':>8} {'% of a core':>12} {'read 24h ms':>12}"
    )
    for row in results:
        print(
            f"{row['store']:<10} {row['series']:>7} {row['cells']:>6} {row['sample_ms']:>10} "
            f"{row['write_ms']:>9} {row['write_wall_ms']:>8} {row['per_cell_us']:>8} "
            f"{row['core_share_percent']:>12} {row['read_24h_ms']:>12}"
        )
    if args.json:
        print(json.dumps(results, indent=2))


#: The benchmark's own schema in the given database: it never touches the
#: tables an app keeps there.
SCHEMA = "aegis_bench_custom_history"


def _schema_of_its_own(url: str, *, create: bool) -> str:
    """Create (or drop) the benchmark's schema; the URL that writes into it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        if create:
            connection.execute(f"CREATE SCHEMA {SCHEMA}")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{SCHEMA}"


if __name__ == "__main__":
    main()

"""History storage: ingest throughput of the SQLite and PostgreSQL sinks, and
history query latency over a day of traffic.

Traffic: 20 route templates (GET/POST/PUT), statuses mostly 200 (201 for
POST) with some 404, 429 and 500 (half of the 500s with an exception text),
log-normal durations around a per-route median. Records are built from a
pool of 65,536 pre-drawn request shapes plus a unique id and a timestamp, so
generating them costs little and is never timed.

1. Ingest, in the shape the flusher writes under sustained load. A round is
   5 seconds (``ROLLUP_SECONDS``, the flusher's rollup interval) of traffic
   at ``--rate`` (300,000) requests/s: 1,500,000 RequestRecords in batches
   of ``--batch-size`` (5,000), the last batch also carrying the round's
   RollupDelta (folded with ``RollupDelta.add`` from the round's records, as
   the finalizer does, with a unique ``delta_id``). A rollup write costs by
   routes and buckets, not by requests, so one per 5 seconds is what a sink
   pays at any rate. Written with ``sink.write(Batch(...))`` into a fresh
   database (a temporary SQLite file; a fresh PostgreSQL schema, selected
   with ``options=-csearch_path``); one untimed batch first opens the
   connection and creates the tables. Sinks run one after the other, each
   for ``--rounds`` rounds. Reported per sink, as the median over rounds:
   records/s of write alone, the fold cost (µs per record) and records/s
   of fold + write. Optionally (``--pipeline``) records/s through a whole
   ``Aegis`` object: ``--pipeline-records`` items offered to the recorder,
   then ``force_flush`` (finalize, fold, write in batches of 5,000, rollups
   with the last one), timed from the first offer to the end of the flush.
   Beside each rate, the CPU it took per record: this process's (all its
   threads), and the PostgreSQL server's (every ``postgres`` process of
   this machine, read from /proc: the backend and its background writers),
   which shares the machine's cores with it; "-" where /proc does not show
   the server (another host).

2. Queries at scale. A fresh database per sink receives ``--requests``
   (10,000,000) requests spread evenly over the 24 hours before a fixed
   instant, in time order, through the sinks' own ``write`` in batches of
   50,000 records, each with the RollupDelta folded from exactly those
   records. The request rows and the rollup rows are therefore what the
   flusher would store; the only difference from 1-second flushes is how
   float sums (duration_sum) are grouped, which can change their last bits.
   Both sinks receive the same batches, generated and folded once. Then
   ``HistoryQueries(sink, clock=<that instant>)`` answers ``overview`` and
   ``latency`` for "1h", "24h" and "7d"; after one untimed call each,
   ``--calls`` (20) calls are timed and the median (and worst) reported. The
   24h and 7d totals are checked against the number of requests stored, and
   the SQLite and PostgreSQL answers against each other.
   The 10M build takes about 3.5 minutes on a 2-CPU machine (SQLite ~75 s
   of writes, PostgreSQL ~100 s, generating and folding ~30 s); the build's
   time grows linearly with ``--requests``, which scales it down. Nothing is cached: the databases are
   created for the run and deleted (file removed, schemas dropped) at the end.

    python bench/history.py                      # everything, about 4 minutes
    python bench/history.py --quick              # a quick look, about a minute
    python bench/history.py --requests 1000000   # a smaller history
    python bench/history.py --profile            # plus cProfile of one write round per sink

PostgreSQL is at ``--postgres`` (default postgresql://postgres@127.0.0.1:5432/test);
``--postgres ''`` or an unreachable server leaves it out.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import os
import pstats
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from aegis_mw.core.record import Batch, RequestRecord
from aegis_mw.core.rollup import RollupDelta

#: (method, route template, relative weight, median duration in ms)
ROUTES = (
    ("GET", "/api/v1/users", 8, 12.0),
    ("POST", "/api/v1/users", 2, 35.0),
    ("GET", "/api/v1/users/{user_id}", 12, 6.0),
    ("PUT", "/api/v1/users/{user_id}", 2, 25.0),
    ("GET", "/api/v1/users/{user_id}/orders", 6, 30.0),
    ("GET", "/api/v1/orders", 5, 40.0),
    ("POST", "/api/v1/orders", 4, 80.0),
    ("GET", "/api/v1/orders/{order_id}", 9, 9.0),
    ("PUT", "/api/v1/orders/{order_id}", 2, 45.0),
    ("GET", "/api/v1/products", 10, 15.0),
    ("GET", "/api/v1/products/{product_id}", 14, 4.0),
    ("PUT", "/api/v1/products/{product_id}", 1, 20.0),
    ("GET", "/api/v1/search", 6, 120.0),
    ("POST", "/api/v1/cart/items", 3, 18.0),
    ("GET", "/api/v1/cart", 5, 7.0),
    ("POST", "/api/v1/checkout", 1, 350.0),
    ("GET", "/api/v1/inventory/{sku}", 4, 11.0),
    ("POST", "/api/v1/events", 5, 3.0),
    ("GET", "/health", 3, 0.8),
    ("GET", "/static/{path}", 6, 1.5),
)
POOL_BITS = 16
POOL_MASK = (1 << POOL_BITS) - 1
#: An odd multiplier: ``sequence * STRIDE & POOL_MASK`` walks the whole pool.
STRIDE = 40_503
#: The instant the history ends ("now" for the queries): 2026-01-01T00:00:00Z.
HISTORY_END = 1_767_225_600
HISTORY_CHUNK = 50_000
#: The flusher writes rollups every 5 seconds (sink_runner.ROLLUP_INTERVAL).
ROLLUP_SECONDS = 5
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
INGEST_TARGETS = {"SQLite": 200_000.0, "PostgreSQL": 300_000.0}
QUERY_TARGET_MS = 50.0
QUERY_RANGES = ("1h", "24h", "7d")


# -- traffic -----------------------------------------------------------------------
def request_shapes(seed: int = 1) -> list[tuple[Any, ...]]:
    """Pre-drawn (method, route, path, status, duration, ttfb, request bytes,
    response bytes, client ip, error, trace id, span id): a RequestRecord
    without id and timestamp. Records are made with ``tuple.__new__``, which
    fills no defaults, so every field is here (untraced: no trace or span)."""
    rng = random.Random(seed)
    weights = [weight for _, _, weight, _ in ROUTES]
    shapes = []
    for _ in range(1 << POOL_BITS):
        method, route, _, median = rng.choices(ROUTES, weights)[0]
        path = route
        while "{" in path:
            head, _, rest = path.partition("{")
            path = f"{head}{rng.randrange(1, 100_000)}{rest.partition('}')[2]}"
        roll = rng.random()
        status = 201 if method == "POST" else 200
        error = ""
        if roll > 0.985:
            status = 500
            error = "RuntimeError: upstream timeout" if rng.random() < 0.5 else ""
        elif roll > 0.965:
            status = 429
        elif roll > 0.92:
            status = 404
        duration = rng.lognormvariate(math.log(median), 0.7)
        if status == 404 or status == 429:
            duration = min(duration, rng.lognormvariate(math.log(2.0), 0.5))
        shapes.append(
            (method, route, path, status, duration, duration * rng.uniform(0.5, 0.98),
             0 if method == "GET" else rng.randrange(100, 4000), rng.randrange(50, 20_000),
             f"10.0.{rng.randrange(256)}.{rng.randrange(256)}", error, None, None)
        )  # fmt: skip
    return shapes


class Traffic:
    """Records with unique ids, made from the pool of shapes."""

    def __init__(self) -> None:
        self.shapes = request_shapes()
        self.prefix = uuid.uuid4().hex[:8]
        self.sequence = 0
        self.items_end = -math.inf

    def records(self, count: int, start: float, span: float) -> list[RequestRecord]:
        """``count`` records evenly spread over ``[start, start + span)``."""
        shapes, prefix, first = self.shapes, self.prefix, self.sequence
        make = tuple.__new__
        step = span / count
        out = [
            make(RequestRecord, (f"{prefix}{first + i:016x}", start + i * step,
                                 *shapes[(first + i) * STRIDE & POOL_MASK]))
            for i in range(count)
        ]  # fmt: skip
        self.sequence += count
        return out

    def items(self, count: int, start: float) -> list[list[Any]]:
        """Recorder inbox items (monotonic times) for the whole pipeline, 0.1 ms
        apart: from ``start``, or from where the last call's items ended when
        that is later, so times only go forward from one round to the next as
        a server's do (items offered faster than they are spaced would
        otherwise land in the middle of the last round's times, and the
        timestamp index would take them as out-of-order inserts)."""
        start = max(start, self.items_end)
        self.items_end = start + count * 1e-4
        shapes, first = self.shapes, self.sequence
        out = []
        for i in range(count):
            method, route, path, status, duration, ttfb, rq, rs, ip, error, _, _ = shapes[
                (first + i) * STRIDE & POOL_MASK
            ]
            begin = start + i * 1e-4
            out.append([method, route, path, status, begin, begin + ttfb / 1000,
                        begin + duration / 1000, rq, rs, (ip, 40000), None, error, False, None])  # fmt: skip
        self.sequence += count
        return out


def fold(records: list[RequestRecord], delta_id: str) -> RollupDelta:
    """The rollups of ``records``, as the finalizer folds them."""
    delta = RollupDelta()
    add = delta.add
    for _, timestamp, method, route, _, status, duration, _, rq, rs, _, error, *_ in records:
        add(timestamp, route, method, status, duration, status >= 500 or bool(error), rq, rs)
    delta.delta_id = delta_id
    return delta


# -- databases -------------------------------------------------------------------------
class Databases:
    """Fresh databases for one run: SQLite files in a temporary directory and
    PostgreSQL schemas, all removed by :meth:`cleanup`."""

    def __init__(self, postgres_url: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="aegis-bench-history-")
        self.postgres_url = postgres_url
        self.schemas: list[str] = []
        self.sinks: list[Any] = []
        self.postgres_skipped = ""
        if postgres_url:
            try:
                import psycopg

                with psycopg.connect(postgres_url, autocommit=True, connect_timeout=3):
                    pass
            except Exception as exc:  # ImportError or an unreachable server
                self.postgres_skipped = f"{type(exc).__name__}: {exc}".splitlines()[0]
        else:
            self.postgres_skipped = "no --postgres URL"

    def postgres_spec(self, purpose: str) -> str:
        import psycopg

        schema = f"aegis_bench_{purpose}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.postgres_url, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
        self.schemas.append(schema)
        joiner = "&" if "?" in self.postgres_url else "?"
        return f"{self.postgres_url}{joiner}options=-csearch_path%3D{schema}"

    def sqlite_spec(self, purpose: str) -> str:
        return f"sqlite:///{os.path.join(self.directory, purpose + '.db')}"

    def open(self, purpose: str) -> dict[str, Any]:
        """One fresh sink per backend, by label, set up as ``Aegis`` sets it up
        where the pipeline is behind: offered the compiled module (the
        SQLite rows bound, the PostgreSQL COPY rows formatted in C where it
        was built), and paced as when its backlog is full, so its pauses
        are the short ones (a pipeline that keeps up takes at most a fifth of
        a core on purpose, see core.gil_slices; what it can sustain is
        its speed when behind)."""
        from aegis_mw import speedups
        from aegis_mw.sinks.sqlite import SQLiteSink

        sinks: dict[str, Any] = {
            "SQLite": SQLiteSink(os.path.join(self.directory, f"{purpose}.db"))
        }
        if not self.postgres_skipped:
            from aegis_mw.sinks.postgres import PostgresSink

            sinks["PostgreSQL"] = PostgresSink(self.postgres_spec(purpose))
        compiled = speedups.load()
        for sink in sinks.values():
            if hasattr(sink, "use_compiled"):  # an older tree's PostgresSink has none
                sink.use_compiled(compiled)
            sink.pace_by(lambda: 1.0)
        self.sinks.extend(sinks.values())
        return sinks

    def cleanup(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                print(f"closing {sink.name}: {exc}")
        if self.schemas:
            import psycopg

            with psycopg.connect(self.postgres_url, autocommit=True) as connection:
                for schema in self.schemas:
                    connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(self.directory, ignore_errors=True)


# -- 1. ingest -------------------------------------------------------------------------
def server_cpu_seconds() -> float | None:
    """CPU seconds (user + system) of every ``postgres`` process this
    machine's /proc shows, None when it shows none (a server elsewhere)."""
    total, seen = 0.0, False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        if name == "postgres" or name.startswith("postgres:"):
            fields = text[text.rfind(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            seen = True
    return total if seen else None


class CpuMeter:
    """CPU µs per record of this process and of the PostgreSQL server,
    over the stretches between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.own: list[float] = []
        self.server: list[float] = []
        self._began: tuple[float, float | None] = (0.0, None)

    def start(self) -> None:
        self._began = (time.process_time(), server_cpu_seconds())

    def stop(self, records: int) -> None:
        own, server = time.process_time(), server_cpu_seconds()
        self.own.append((own - self._began[0]) / records * 1e6)
        if server is not None and self._began[1] is not None:
            self.server.append((server - self._began[1]) / records * 1e6)

    def figures(self) -> tuple[float, float | None]:
        """Medians: this process's µs per record, the server's (None: unseen)."""
        server = statistics.median(self.server) if self.server else None
        return statistics.median(self.own), server


def ingest(
    databases: Databases, traffic: Traffic, rounds: int, rate: int, size: int, profile: bool
) -> dict[str, dict[str, float]]:
    """Each round is ``ROLLUP_SECONDS`` of traffic at ``rate`` requests/s, in
    batches of ``size``; the round's rollup delta rides with its last batch."""
    sinks = databases.open("ingest")
    clock = [HISTORY_END + 0.0]
    batches = max(1, rate * ROLLUP_SECONDS // size)

    def next_round() -> tuple[list[list[RequestRecord]], list[RollupDelta | None]]:
        work = []
        for _ in range(batches):
            work.append(traffic.records(size, clock[0], size / rate))
            clock[0] += size / rate
        return work, [None] * (batches - 1) + [RollupDelta()]

    def fold_round(work: list[list[RequestRecord]], name: str) -> list[RollupDelta | None]:
        delta = fold([record for records in work for record in records], name)
        return [None] * (len(work) - 1) + [delta]

    for label, sink in sinks.items():  # connect, create tables: untimed
        warm = traffic.records(size, clock[0] - 10.0, 1.0)
        sink.write(Batch(requests=warm, rollups=fold(warm, f"warm-{label}")))
    writes: dict[str, list[float]] = {label: [] for label in sinks}
    meters = {label: CpuMeter() for label in sinks}
    folds: list[float] = []
    profiles = {label: cProfile.Profile() for label in sinks} if profile else {}
    # One sink at a time: the database server shares the machine's cores,
    # and its background work after a round (autovacuum, checkpoints) is
    # its own sink's cost, not the other's.
    for label, sink in sinks.items():
        for round_index in range(rounds):
            work, _ = next_round()
            gc.collect()
            started = time.perf_counter()
            deltas = fold_round(work, f"{label}-r{round_index}")
            folds.append(time.perf_counter() - started)
            gc.collect()
            meters[label].start()
            started = time.perf_counter()
            for records, delta in zip(work, deltas, strict=True):
                sink.write(Batch(requests=records, rollups=delta))
            writes[label].append(time.perf_counter() - started)
            meters[label].stop(batches * size)
            del work, deltas
    for label, profiler in profiles.items():
        work, _ = next_round()
        deltas = fold_round(work, f"p-{label}")
        profiler.enable()
        for records, delta in zip(work, deltas, strict=True):
            sinks[label].write(Batch(requests=records, rollups=delta))
        profiler.disable()
    count = batches * size
    results = {}
    for label in sinks:
        own, server = meters[label].figures()
        results[label] = {
            "write": statistics.median(count / s for s in writes[label]),
            "write_cpu_us": own,
            "write_server_cpu_us": math.nan if server is None else server,
            "fold_us": statistics.median(s / count * 1e6 for s in folds),
            "fold_write": count / (statistics.median(writes[label]) + statistics.median(folds)),
        }
    for label, profiler in profiles.items():
        print(f"\n-- cProfile: one round of {batches} writes of {size:,} records to {label} --")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(14)
    return results


def pipeline(
    databases: Databases, traffic: Traffic, rounds: int, count: int
) -> dict[str, tuple[float, float, float]]:
    """Records/s from the recorder's inbox into each sink, through ``Aegis``,
    with the CPU µs per record of this process and of the PostgreSQL server
    (NaN where it is not seen). The items are the compiled request paths'
    own where the extension was built (what the flusher gets from them),
    lists otherwise."""
    from aegis_mw import Aegis, speedups

    compiled = speedups.load()

    def inbox_items(how_many: int) -> list[Any]:
        items = traffic.items(how_many, time.monotonic())
        return items if compiled is None else [compiled.item_from_fields(i) for i in items]

    specs = {"SQLite": databases.sqlite_spec("pipeline")}
    if not databases.postgres_skipped:
        specs["PostgreSQL"] = databases.postgres_spec("pipeline")
    results = {}
    for label, spec in specs.items():
        aegis = Aegis(
            sink=spec, flush_interval=3600, batch_size=5000, max_buffer=count + 1,
            sink_timeout=60, metrics_registry="none", environ={},
        )  # fmt: skip
        offer = aegis.recorder.offer
        try:
            for item in inbox_items(5000):  # connect, create tables
                offer(item)
            if not aegis.force_flush(120):
                raise SystemExit(f"pipeline flush failed: {aegis.stats()}")
            rates = []
            meter = CpuMeter()
            for _ in range(rounds):
                items = inbox_items(count)
                gc.collect()
                meter.start()
                started = time.perf_counter()
                for item in items:
                    offer(item)
                if not aegis.force_flush(120):
                    raise SystemExit(f"pipeline flush failed: {aegis.stats()}")
                rates.append(count / (time.perf_counter() - started))
                meter.stop(count)
            own, server = meter.figures()
            results[label] = (statistics.median(rates), own, math.nan if server is None else server)
        finally:
            aegis.shutdown()
    return results


# -- 2. queries ------------------------------------------------------------------------
def build_history(
    sinks: dict[str, Any], traffic: Traffic, requests: int
) -> tuple[dict[str, float], float]:
    """Seconds each sink spent writing, and the whole build's wall time."""
    spent = dict.fromkeys(sinks, 0.0)
    started = time.perf_counter()
    first = HISTORY_END - 86_400.0
    done = 0
    chunk_index = 0
    last_report = started
    while done < requests:
        count = min(HISTORY_CHUNK, requests - done)
        span = 86_400.0 * count / requests
        records = traffic.records(count, first + 86_400.0 * done / requests, span)
        delta = fold(records, f"history-{chunk_index}")
        for label, sink in sinks.items():
            began = time.perf_counter()
            sink.write(Batch(requests=records, rollups=delta))
            spent[label] += time.perf_counter() - began
        done += count
        chunk_index += 1
        if time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            print(f"  ... {done:,} of {requests:,} requests stored ({last_report - started:.0f} s)")
    return spent, time.perf_counter() - started


def query_latency(
    sinks: dict[str, Any], calls: int, requests: int
) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(query, range, sink) -> (median ms, worst ms)."""
    from aegis_mw.history.queries import HistoryQueries

    queries = {
        label: HistoryQueries(sink, clock=lambda: HISTORY_END) for label, sink in sinks.items()
    }
    names = ("overview", "latency")
    answers: dict[tuple[str, str, str], Any] = {}
    for label, history in queries.items():  # one untimed call each: pools, caches
        for name in names:
            for range_name in QUERY_RANGES:
                answers[name, range_name, label] = getattr(history, name)(range_name)
    for range_name in ("24h", "7d"):
        for label in queries:
            total = answers["overview", range_name, label]["total"]
            if total != requests:
                print(
                    f"CHECK FAILED: {label} overview({range_name!r}) total {total:,} != {requests:,}"
                )
    labels = list(queries)
    for key in [k for k in answers if k[2] == labels[0]]:
        for other in labels[1:]:
            if answers[key] != answers[(*key[:2], other)]:
                print(f"note: {labels[0]} and {other} answer {key[0]}({key[1]!r}) differently")
    times: dict[tuple[str, str, str], list[float]] = {key: [] for key in answers}
    for _ in range(calls):
        for label, history in queries.items():
            for name in names:
                method: Callable[[str], Any] = getattr(history, name)
                for range_name in QUERY_RANGES:
                    started = time.perf_counter()
                    method(range_name)
                    times[name, range_name, label].append((time.perf_counter() - started) * 1000)
    return {key: (statistics.median(v), max(v)) for key, v in times.items()}


#: Request-log reads timed beside the rollup queries (no target: the
#: troubleshooting view), by label.
LOG_QUERIES: dict[str, dict[str, Any]] = {
    "newest 100": {},
    "route, 0.9% of traffic": {"route": "/api/v1/products/{product_id}", "method": "PUT"},
    "route absent, last hour": {"route": "/absent", "since": HISTORY_END - 3600.0},
    "5xx over 1 s, last hour": {"status_from": 500, "min_duration_ms": 1000.0,
                                "since": HISTORY_END - 3600.0},
}  # fmt: skip


def log_latency(sinks: dict[str, Any], calls: int) -> dict[tuple[str, str], float]:
    """(log query, sink) -> median ms of ``HistoryQueries.requests`` (limit 100)."""
    from aegis_mw.history.queries import HistoryQueries

    out = {}
    for label, sink in sinks.items():
        history = HistoryQueries(sink, clock=lambda: HISTORY_END)
        for name, filters in LOG_QUERIES.items():
            history.requests(**filters)  # untimed
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                history.requests(**filters)
                times.append((time.perf_counter() - started) * 1000)
            out[name, label] = statistics.median(times)
    return out


# -- report ----------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    yield "  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))
    yield "  ".join("-" * width for width in widths)
    for row in rows:
        yield "  ".join(cell.rjust(width) if i else cell.ljust(width)
                        for i, (cell, width) in enumerate(zip(row, widths, strict=True)))  # fmt: skip


def cpu_pair(own: float, server: float, label: str) -> str:
    """``own + server`` µs per record; the server's part only for PostgreSQL."""
    if label != "PostgreSQL":
        return f"{own:.2f}"
    return f"{own:.2f} + " + ("-" if math.isnan(server) else f"{server:.2f}")


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds (median)")
    parser.add_argument("--rate", type=int, default=300_000,
                        help="requests/s of the traffic an ingest round stands for")  # fmt: skip
    parser.add_argument("--pipeline-records", type=int, default=500_000,
                        help="records per round through the whole Aegis pipeline")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=10_000_000, help="history size")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per query")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="'' to leave it out")
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the whole Aegis pipeline")  # fmt: skip
    parser.add_argument("--only", choices=("ingest", "queries"), help="run one part")
    parser.add_argument("--profile", action="store_true", help="cProfile one write round per sink")
    parser.add_argument("--quick", action="store_true",
                        help="1 ingest round, 200,000 requests, 10 calls")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.pipeline_records, args.requests, args.calls = 1, 100_000, 200_000, 10
    databases = Databases(args.postgres)
    if databases.postgres_skipped:
        print(f"PostgreSQL left out ({databases.postgres_skipped})")
    traffic = Traffic()
    lines: list[str] = []
    try:
        if args.only != "queries":
            results = ingest(databases, traffic, args.rounds, args.rate, args.batch_size,
                             args.profile)  # fmt: skip
            piped = (
                pipeline(databases, traffic, args.rounds, args.pipeline_records)
                if args.pipeline
                else {}
            )
            count = args.rate * ROLLUP_SECONDS
            lines.append(
                f"\nIngest: {ROLLUP_SECONDS} s of traffic at {args.rate:,} requests/s per round "
                f"({count:,} records) in batches of {args.batch_size:,}, the round's RollupDelta "
                f"with the last; median of {args.rounds} rounds. Pipeline: "
                f"{args.pipeline_records:,} records per round."
            )
            rows = []
            for label, figures in results.items():
                target = INGEST_TARGETS[label]
                rows.append([
                    label, f"{figures['write']:,.0f}",
                    cpu_pair(figures["write_cpu_us"], figures["write_server_cpu_us"], label),
                    f"{figures['fold_us']:.2f}", f"{figures['fold_write']:,.0f}",
                    f"{piped[label][0]:,.0f}" if label in piped else "-",
                    cpu_pair(*piped[label][1:], label) if label in piped else "-",
                    f">= {target:,.0f}", verdict(figures["write"] >= target),
                ])  # fmt: skip
            # The target is the database's: what all processes writing one
            # history can store. Folding is each process's own flusher work.
            header = ["sink", "write rec/s", "CPU us/rec (ours + server)", "fold us/rec",
                      "fold+write rec/s", "Aegis pipeline rec/s", "CPU us/rec (ours + server)",
                      "write target", "verdict"]  # fmt: skip
            lines.extend(table(header, rows))
        if args.only != "ingest":
            sinks = databases.open("history")
            print(f"building the history: {args.requests:,} requests over 24 h ...")
            spent, wall = build_history(sinks, traffic, args.requests)
            latency = query_latency(sinks, args.calls, args.requests)
            built = ", ".join(f"{label} writes {seconds:.0f} s" for label, seconds in spent.items())
            lines.append(
                f"\nQueries over {args.requests:,} requests in 24 h (built in {wall:.0f} s: "
                f"{built}); median (worst) of {args.calls} calls, ms"
            )
            rows = []
            for name in ("overview", "latency"):
                for range_name in QUERY_RANGES:
                    cells = [f"{name}({range_name!r})"]
                    ok = True
                    for label in sinks:
                        median, worst = latency[name, range_name, label]
                        cells.append(f"{median:.2f} ({worst:.1f})")
                        ok = ok and median < QUERY_TARGET_MS
                    rows.append([*cells, f"< {QUERY_TARGET_MS:.0f}", verdict(ok)])
            lines.extend(table(["query", *sinks, "target", "verdict"], rows))
            logs = log_latency(sinks, args.calls)
            lines.append(
                f"\nRequest log, HistoryQueries.requests(limit=100): median of {args.calls} calls, ms"
            )
            lines.extend(table(["filters", *sinks], [
                [name, *(f"{logs[name, label]:.2f}" for label in sinks)] for name in LOG_QUERIES
            ]))  # fmt: skip
    finally:
        databases.cleanup()
    print("\n".join(lines))


if __name__ == "__main__":
    main()

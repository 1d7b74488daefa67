"""Where the background pipeline's time goes, per record, and how long it
keeps the GIL from the threads that serve requests.

1. **Stages.** Items shaped like the middleware's (20 routes, a 2 % error
   rate, durations of a few milliseconds) go through each step the flusher
   and the SQLite sink take, timed one step at a time over the same items:
   drain, the realtime ring, the per-label totals (``/metrics``), finalize
   with the rollup folding, expanding the rollups to every level, and the
   SQLite statement and commit. Reported in CPU µs per record (this thread's
   CPU time, so the pauses between GIL slices do not count), the median over
   rounds. The items are compiled ``HttpItem`` objects where the extension
   was built, as the compiled request paths queue them; the ring and the
   per-label totals are then folded by one compiled loop, and finalize with
   the rollups by another, and the SQLite sink binds its rows in C. The
   Python code's figures for the same items (and the same rows bound by the
   sqlite3 module) are shown beside them in parentheses (not in the total).

2. **GIL waits.** A probe thread stands in for an event loop: it sleeps 1 ms
   at a time and records how late it wakes (the time it waited for the
   GIL, plus the timer's own slack). A producer thread offers items to a real
   ``Aegis`` (default settings, SQLite sink) at ``--rate`` per second in
   chunks of 50. Run once with the pipeline and once with a baseline whose
   items are thrown away, so the timer's slack, the producer's own share and
   the garbage collector's passes over what the producer allocates show up
   in the baseline. Reported: the lateness percentiles and a
   histogram of the longest waits; and each wake 0.5 ms late or more by
   what went on meanwhile: a flush under way (a pipeline thread out of its
   wait between flushes, with the longest such wake), a garbage collection
   (any thread's), or neither (the producer, the timer, the machine).

Records/s through the whole pipeline, into SQLite and PostgreSQL, are
``bench/history.py``'s (its ``--pipeline`` part).

    python bench/pipeline.py            # about a minute
    python bench/pipeline.py --quick    # a quick look
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aegis_mw import Aegis, speedups
from aegis_mw.core.aggregates import RealtimeAggregates, _fold
from aegis_mw.core.finalize import Finalizer
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import RollupDelta, encode_histogram, expand, parameter_rows
from aegis_mw.sinks import SQLiteSink

ROUTES = [f"/api/v1/resource{index}/{{item_id}}" for index in range(20)]
LATENESS_BOUNDS_MS = (0.25, 0.5, 1, 2, 5, 10, 20, 50)


def make_items(count: int, seed: int = 1) -> list[Any]:
    """Inbox items as the middleware queues them (see aegis_mw.core.items):
    compiled ``HttpItem`` objects where the extension was built."""
    compiled = speedups.load()
    chance = random.Random(seed)
    now = time.monotonic()
    items = []
    for index in range(count):
        start = now - 1.0 + index * 1e-6
        duration = chance.lognormvariate(-5.5, 0.6)
        status = 500 if chance.random() < 0.02 else 200
        route = index % len(ROUTES)
        items.append([
            "GET", ROUTES[route], f"/api/v1/resource{route}/{index}", status, start,
            start + duration / 2, start + duration, 0, 512, ("127.0.0.1", 40000 + route),
            None, "", False, None,
        ])  # fmt: skip
    return items if compiled is None else [compiled.item_from_fields(item) for item in items]


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds of this thread (the pauses between GIL slices are not work)."""
    began = time.thread_time()
    result = function()
    return time.thread_time() - began, result


class NoRollups:
    """Stands in for the finalizer's RollupDelta: finalize without the folding."""

    def add(self, *args: Any) -> None:
        return None


def python_twins(aegis: Aegis) -> tuple[RealtimeAggregates, Finalizer] | None:
    """Aggregates and a finalizer like the pipeline's without the compiled
    loops, for the Python code's figures beside theirs (None where they are
    not compiled). The finalizer shares the route cap and resolver, so it
    knows the same routes and clients clean once it has seen them."""
    finalizer = aegis.finalizer
    if finalizer._compiled is None:
        return None
    aggregates = RealtimeAggregates(finalizer.routes.copy(), aegis.aggregates.labeled.bounds)
    python = Finalizer(
        clock=finalizer.clock,
        resolver=finalizer.resolver,
        routes=finalizer.routes,
        max_path_length=finalizer.max_path_length,
        sample_rate=finalizer.sample_rate,
        slow_threshold_ms=finalizer.slow_threshold_ms,
        max_error_length=finalizer.max_error_length,
    )
    return aggregates, python


def python_stages(
    twins: tuple[RealtimeAggregates, Finalizer], items: list[Any]
) -> dict[str, float]:
    """The Python code's figures for the steps the compiled loops fuse."""
    aggregates, finalizer = twins
    seconds: dict[str, float] = {}
    good: list[Any] = []
    seconds["(Python: realtime ring)"] = timed(
        lambda: _fold(aggregates.ring, aggregates.totals, items, good)
    )[0]
    seconds["(Python: per-label totals)"] = timed(
        lambda: aggregates.labeled.fold(good, aggregates.routes.label)
    )[0]
    finalizer.rollups = NoRollups()  # type: ignore[assignment]
    seconds["(Python: finalize)"] = timed(lambda: finalizer.finalize(good))[0]
    finalizer.rollups = RollupDelta()
    with_rollups = timed(lambda: finalizer.finalize(good))[0]
    seconds["(Python: rollup folding)"] = with_rollups - seconds["(Python: finalize)"]
    return seconds


def stage_round(
    aegis: Aegis,
    twins: tuple[RealtimeAggregates, Finalizer] | None,
    records: int,
    round_index: int,
    twin_sink: SQLiteSink | None = None,
) -> dict[str, float]:
    """CPU seconds of each step over one round's records."""
    recorder, finalizer = aegis.recorder, aegis.finalizer
    aggregates = recorder.aggregates
    sink = aegis.flusher.runners[0].sink
    connection = sink._connect()  # the sink's own connection, in this thread
    seconds: dict[str, float] = {}
    recorder.inbox.extend(make_items(records, seed=round_index))
    seconds["drain"], items = timed(lambda: recorder.drain(records))

    # The compiled loops fuse the ring with the per-label totals and
    # finalize with the rollup folding; the Python code's steps come after.
    def fold() -> tuple[list[Any], int]:
        folded = aggregates.fold_drained(lambda: items)
        # The sums the compiled fold left pending, as a reader would (versions
        # before the pending sums have none).
        getattr(aggregates, "settle", lambda: None)()
        return folded

    seconds["ring + per-label totals"], (good, _) = timed(fold)

    def finalize() -> list[Any]:
        stored = finalizer.finalize(good)
        finalizer.rollups  # noqa: B018 (reading them writes their pending sums)
        return stored

    seconds["finalize + rollups"], stored = timed(finalize)
    if twins is not None:
        seconds.update(python_stages(twins, items))
    delta = finalizer.take_rollups()
    # As the sink encodes them (compiled where it was offered the module).
    encode = getattr(sink, "_histograms", (encode_histogram,))[0]
    seconds["rollups to rows"] = timed(
        lambda: [list(parameter_rows(part, encode)) for part in expand(delta)]
    )[0]

    def insert() -> None:
        connection.execute("BEGIN IMMEDIATE")
        if hasattr(sink, "_insert_requests"):
            sink._insert_requests(connection, stored)
        else:  # versions before the 64-row statements, for comparisons
            from aegis_mw.sinks.sqlite_schema import INSERT_REQUEST

            connection.executemany(INSERT_REQUEST, stored)

    seconds["SQLite inserts"] = timed(insert)[0]
    seconds["SQLite commit"] = timed(lambda: connection.execute("COMMIT"))[0]
    if twin_sink is not None:
        # The same rows bound by the sqlite3 module, into a twin file that
        # holds the same rows as the sink's, as without the compiled module.
        twin = twin_sink._connect()
        twin.execute("BEGIN IMMEDIATE")
        seconds["(sqlite3 module: inserts)"] = timed(
            lambda: twin_sink._insert_requests(twin, stored)
        )[0]
        twin.execute("COMMIT")
    delta.delta_id = f"bench-{round_index}"
    seconds["SQLite rollup upserts"] = timed(lambda: sink.write(Batch(rollups=delta)))[0]
    return seconds


def stages(workdir: Path, records: int, rounds: int) -> dict[str, float]:
    aegis = Aegis(
        sink=f"sqlite:///{workdir}/stages.db", flush_interval=3600, batch_size=1_000_000, environ={}
    )
    aegis.start()
    twins = python_twins(aegis)
    twin_sink = None
    if getattr(aegis.flusher.runners[0].sink, "_compiled", None) is not None:
        twin_sink = SQLiteSink(str(workdir / "twin.db"))
        twin_sink.use_compiled(None)
    figures: dict[str, list[float]] = {}
    for round_index in range(rounds):
        for name, seconds in stage_round(aegis, twins, records, round_index, twin_sink).items():
            figures.setdefault(name, []).append(seconds / records * 1e6)
    aegis.shutdown()
    if twin_sink is not None:
        twin_sink.close()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\nstages, CPU µs per record (median of {rounds} rounds of {records:,} records)")
    for name, value in medians.items():
        print(f"  {name:28s} {value:6.2f}")
    total = sum(value for name, value in medians.items() if not name.startswith("("))
    print(f"  {'total':28s} {total:6.2f}")
    return medians


#: A wake at least this late is attributed (see :class:`Attribution`).
ATTRIBUTED_MS = 0.5
#: Where the pipeline's threads wait between flushes: the flusher for a wake,
#: a sink's thread for its next call (``core.flusher._worker``,
#: ``core.sink_runner._serve``). Any other innermost frame of such a thread
#: means a flush was under way.
IDLE_FRAMES = {("flusher.py", "_worker"), ("sink_runner.py", "_serve")}


def pipeline_at_work() -> bool:
    """Whether any of the pipeline's threads (named ``aegis-...``) is in a
    flush: not in its wait between flushes."""
    frames = sys._current_frames()
    for thread in threading.enumerate():
        frame = frames.get(thread.ident) if thread.name.startswith("aegis-") else None
        if frame is not None:
            where = (Path(frame.f_code.co_filename).name, frame.f_code.co_name)
            if where not in IDLE_FRAMES:
                return True
    return False


class Attribution:
    """What was going on around each late wake of the probe, since the
    baseline's late wakes (the producer's own work, the garbage collector,
    the machine's timer slack and steal) happen with the pipeline too: a
    wake counts against the pipeline when a flush was under way as the probe
    woke, or a collection overlapped it (collections are counted apart: any
    thread's allocations trigger them)."""

    def __init__(self) -> None:
        self.collections: list[tuple[float, float]] = []
        self.late: list[tuple[float, float, bool]] = []  # (woke, lateness ms, at work)
        self._started = 0.0

    def watch(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections.append((self._started, time.perf_counter()))

    def note(self, woke: float, lateness_ms: float) -> None:
        self.late.append((woke, lateness_ms, pipeline_at_work()))

    def summary(self) -> dict[str, Any]:
        """Late wakes by cause, and the longest while a flush was under way."""
        counts = {"flush": 0, "collection": 0, "other": 0}
        longest_in_flush = 0.0
        for woke, lateness_ms, at_work in self.late:
            began = woke - lateness_ms / 1000.0
            collected = any(end > began and start < woke for start, end in self.collections)
            cause = "collection" if collected else "flush" if at_work else "other"
            counts[cause] += 1
            if cause == "flush":
                longest_in_flush = max(longest_in_flush, lateness_ms)
        return {**counts, "longest_in_flush_ms": longest_in_flush}


def probe_lateness(
    stop: threading.Event,
    out: list[float],
    period: float = 0.001,
    attribution: Attribution | None = None,
) -> None:
    clock = time.perf_counter
    while not stop.is_set():
        began = clock()
        time.sleep(period)
        woke = clock()
        lateness = (woke - began - period) * 1000.0
        out.append(lateness)
        if attribution is not None and lateness >= ATTRIBUTED_MS:
            attribution.note(woke, lateness)


def gil_waits(workdir: Path, rate: int, seconds: float) -> dict[str, dict[str, float]]:
    chunk = 50
    total = int(rate * seconds)
    report = {}
    for variant in ("baseline", "pipeline"):
        aegis = None
        if variant == "pipeline":
            aegis = Aegis(sink=f"sqlite:///{workdir}/gil.db", environ={})
            aegis.start()
            offer = aegis.recorder.offer
        else:
            # Held about as long as the pipeline holds them, then let go.
            offer = deque(maxlen=5000).append
        lateness: list[float] = []
        stop = threading.Event()
        attribution = Attribution()
        gc.callbacks.append(attribution.watch)
        probe = threading.Thread(target=probe_lateness, args=(stop, lateness, 0.001, attribution))
        probe.start()
        began = time.perf_counter()
        for first in range(0, total, chunk):
            due = began + first / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            # Made as they are offered: the heap holds what an app's would
            # (a pre-built list of every item would make each full garbage
            # collection walk all of them).
            for item in make_items(chunk, seed=first):
                offer(item)
        if aegis is not None:
            aegis.shutdown()
        stop.set()
        probe.join()
        gc.callbacks.remove(attribution.watch)
        lateness.sort()
        count = len(lateness)
        figures = {
            "p50_ms": lateness[count // 2],
            "p99_ms": lateness[int(count * 0.99)],
            "p999_ms": lateness[int(count * 0.999)],
            "max_ms": lateness[-1],
        }
        histogram = {}
        for bound in LATENESS_BOUNDS_MS:
            histogram[f"> {bound:g} ms"] = sum(1 for value in lateness if value > bound)
        report[variant] = {**figures, **histogram, "wakes": count, **attribution.summary()}
    print(f"\nGIL waits of a 1 ms sleeper while {rate:,} records/s flow ({seconds:g} s)")
    print(f"  {'':10s} {'p50':>7s} {'p99':>7s} {'p99.9':>7s} {'max':>7s}  wakes later than")
    for variant, row in report.items():
        late = "  ".join(f"{key[2:]}: {row[key]}" for key in row if key.startswith(">"))
        print(
            f"  {variant:10s} {row['p50_ms']:7.3f} {row['p99_ms']:7.3f} {row['p999_ms']:7.3f} "
            f"{row['max_ms']:7.2f}  ({row['wakes']} wakes) {late}"
        )
    print(
        f"  wakes {ATTRIBUTED_MS:g} ms late or more, by what went on meanwhile: a flush under way"
        " (the longest), a garbage collection, neither (the producer, the timer, the machine)"
    )
    for variant, row in report.items():
        print(
            f"  {variant:10s} flush {row['flush']} ({row['longest_in_flush_ms']:.2f} ms)"
            f"  collection {row['collection']}  neither {row['other']}"
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=20_000, help="GIL waits: records/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="GIL waits: duration")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.records, args.rounds, args.seconds = 20_000, 3, 3.0
    with tempfile.TemporaryDirectory(prefix="aegis-pipeline-") as directory:
        workdir = Path(directory)
        stages(workdir, args.records, args.rounds)
        gil_waits(workdir, args.rate, args.seconds)


if __name__ == "__main__":
    main()

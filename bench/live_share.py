"""Live figures across the workers of a host: what publishing costs a worker, what
reading every worker costs the one that answers, and how late the merged view is.

1. Publishing. One pipeline with a metrics directory holds a minute of
   traffic at ``--rate`` (5,000) requests/s over 20 routes (its realtime ring
   full, every route's fine latency histogram in use). Its flusher publishes
   once per cycle (``flush_interval``, 1 s): what it writes is timed
   (``MetricsService.publish``, forced ``--calls`` times: the ``/metrics``
   snapshot and the live file), whole and for the live figures alone
   (``RealtimeAggregates.publication`` and ``route_figures``). CPU share of a core
   = the median publish time at one publish a second.
2. Fan-in. ``--workers`` (16) files like that one in the directory; the
   answering worker reads and adds them up (``MetricsService._others``) and
   reads the overview with them (``Aegis.realtime``), once a second when a
   stream or a dashboard watches.
3. Lag. Two pipelines on one directory with the default ``flush_interval``
   (1 s): a request offered to one, timed until the other's overview counts
   it, ``--lags`` times.

Medians. Usage: ``python bench/live_share.py``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aegis_mw import Aegis
from aegis_mw.core.live_share import route_figures
from aegis_mw.realtime import protocol, sections

ROUTES: list[str] = []


def item(route: str, end: float, duration: float, status: int) -> list[Any]:
    start = end - duration
    return ["GET", route, route, status, start, start + duration / 2, end, 0, 100,
            ("127.0.0.1", 1), None, "", False, None]  # fmt: skip


def minute_of_traffic(aegis: Aegis, rate: int) -> None:
    now = time.perf_counter()
    count = rate * 60
    for number in range(count):
        end = now - 60 + number / rate
        aegis.recorder.offer(item(ROUTES[number % len(ROUTES)], end, 0.001 + (number % 97) / 10_000,
                                  500 if number % 50 == 0 else 200))  # fmt: skip
        if number % 50_000 == 0:
            aegis.force_flush(timeout=60)
    aegis.force_flush(timeout=60)


def timed(call: Any, calls: int, clock: Any = time.process_time) -> float:
    """Median CPU seconds of ``call`` by ``clock``."""
    times = []
    for _ in range(calls):
        started = clock()
        call()
        times.append(clock() - started)
    return statistics.median(times)


def lag_seconds(sender: Aegis, receiver: Aegis, count: int) -> list[float]:
    """Seconds from a request offered to ``sender`` until ``receiver``'s
    overview counts it, ``count`` times, at several phases of a second."""
    lags = []
    for number in range(count):
        before = receiver.realtime().total_requests
        offered = time.perf_counter()
        sender.recorder.offer(item(ROUTES[0], offered, 0.001, 200))
        deadline = offered + 30
        while receiver.realtime().total_requests == before:
            if time.perf_counter() > deadline:
                sys.exit("the merged view never showed the request")
            time.sleep(0.005)
        lags.append(time.perf_counter() - offered)
        time.sleep(0.1 * (number % 10))
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--lags", type=int, default=10)
    parser.add_argument("--routes", type=int, default=20)
    args = parser.parse_args()
    ROUTES[:] = [f"/r{number}/{{id}}" for number in range(args.routes)]
    directory = Path(tempfile.mkdtemp(prefix="aegis-bench-live-"))
    try:
        options: dict[str, Any] = {"sink": "memory://", "environ": {}, "metrics_registry": "none",
                                   "metrics_multiprocess_dir": str(directory)}  # fmt: skip
        worker = Aegis(**options, flush_interval=3600)
        minute_of_traffic(worker, args.rate)
        service = worker.metrics

        def publish() -> None:
            service._published = ()  # as after a cycle with new traffic
            service.publish()

        whole = timed(publish, args.calls)
        pending = worker.recorder.pending

        def live_part() -> None:
            worker.aggregates.publication(int(time.perf_counter()), pending)
            route_figures(worker.aggregates.labeled_snapshot(pending))

        live = timed(live_part, args.calls)
        [own] = directory.glob("aegis_*_*.json")
        [own_live] = directory.glob("aegis-live_*_*.json")
        size = own_live.stat().st_size
        print(f"publishing ({args.rate:,} requests/s, a minute in the ring, {args.routes} routes): "
              f"{whole * 1e3:.2f} ms CPU a publish, of which the live part {live * 1e3:.2f} ms; "
              f"{size / 1024:.0f} KiB a live file; at one publish a second, "
              f"{whole * 100:.2f}% of a core")  # fmt: skip

        # Fan-in: other workers' files (pid 1: a process that lives).
        for number in range(args.workers):
            shutil.copy(own, directory / f"aegis_1_{number:08x}.json")
            shutil.copy(own_live, directory / f"aegis-live_1_{number:08x}.json")
        reader = Aegis(**options, flush_interval=3600)

        def fan_in() -> None:
            reader.metrics._others_read = ((), None)  # the files changed
            reader.realtime()

        def frame() -> None:  # every section of the stream, as the hub builds a tick
            reader.metrics._others_read = ((), None)  # the files changed
            sections.build(reader, protocol.SECTIONS)

        merged = reader.realtime().total_requests
        assert merged == (args.workers + 1) * args.rate * 60, merged
        cost = timed(fan_in, args.calls)
        whole_frame = timed(frame, args.calls)
        scrape = timed(reader.metrics.read, args.calls)
        print(f"fan-in: {args.workers + 1} workers' files read and added up, and the overview "
              f"read with them: {cost * 1e3:.1f} ms CPU; a frame of every section "
              f"{whole_frame * 1e3:.1f} ms, once a second while someone watches "
              f"({whole_frame * 100:.1f}% of a core); a /metrics scrape of them all "
              f"{scrape * 1e3:.1f} ms")  # fmt: skip
        worker.shutdown()
        reader.shutdown()

        for path in directory.iterdir():
            path.unlink()
        sender, receiver = Aegis(**options), Aegis(**options)
        lags = lag_seconds(sender, receiver, args.lags)
        print(f"lag, request to merged view (flush_interval 1 s): median "
              f"{statistics.median(lags) * 1e3:.0f} ms, longest {max(lags) * 1e3:.0f} ms "
              f"of {args.lags}")  # fmt: skip
        sender.shutdown()
        receiver.shutdown()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

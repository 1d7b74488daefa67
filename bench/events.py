"""The app's events: what ``aegis.event(...)`` costs the caller, and how fast the
pipeline stores them.

Three measurements, in one process:

- **the call**: ns per ``aegis.event(...)`` (checking every field and queueing
  it), for a bare message and for one with tags and a payload, the flusher
  held back so that only the call is timed; the queue is emptied between
  rounds. For scale, the standard library's non-blocking log call: a
  ``logger.info(...)`` through ``logging.handlers.QueueHandler``. Median over ``--rounds`` of ``--count`` calls each, minus an empty
  loop's time in the same round.
- **stored**: ``--events`` events sent, then ``force_flush()``: the wall time
  until they are all in a fresh SQLite file (the default sink) and the
  process CPU time it took, per event, median over ``--store-rounds``; every
  event is checked to be stored exactly once.
- **posted**: µs per answer to ``POST {api_path}/events`` (the body checked,
  the post audited, its events queued), called as the API's thread calls it,
  for bodies of 1 and of 100 events, with the audit in a SQLite file (the
  default: on the connections it keeps between writes) and without a store for it (the ``aegis_mw.audit`` logger, off);
  median over ``--post-rounds`` of ``--posts`` posts, the queue emptied
  between rounds.

    python bench/events.py                 # about 30 seconds
    python bench/events.py --rounds 5 --count 20000 --store-rounds 2   # quick look
    python bench/events.py --json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import logging.handlers
import queue
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CALLS = {
    "bare": "aegis.event('cache warmed')",
    "tagged": (
        "aegis.event('order placed', level='info', tags=('shop', 'region:eu'), "
        "payload={'order': 1234, 'total': 99.5})"
    ),
    # The standard library's way not to block the caller, for scale: a log
    # record put on a queue by logging.handlers.QueueHandler.
    "logging_queue": "log.info('cache warmed')",
    "logging_queue_extra": (
        "log.info('order placed', extra={'tags': ('shop', 'region:eu'), "
        "'payload': {'order': 1234, 'total': 99.5}})"
    ),
}


def compile_loop(statement: str) -> Any:
    source = (
        "def loop(count, aegis, log):\n"
        "    started = perf_counter_ns()\n"
        "    for _ in range(count):\n"
        f"        {statement}\n"
        "    return perf_counter_ns() - started\n"
    )
    namespace: dict[str, Any] = {"perf_counter_ns": time.perf_counter_ns}
    exec(compile(source, f"<loop: {statement}>", "exec"), namespace)
    return namespace["loop"]


def measure_calls(rounds: int, count: int) -> dict[str, float]:
    from aegis_mw import Aegis

    aegis = Aegis(
        sink="memory://", flush_interval=3600, max_buffer=count * 10 + 10,
        metrics_registry="none", environ={},
    )  # fmt: skip
    # Only the call is timed: no flusher woken, and room for every round.
    aegis.recorder.events.wake_at = 2**62
    aegis.recorder.events.max_bytes = 2**62
    loops = {name: compile_loop(statement) for name, statement in CALLS.items()}
    empty = compile_loop("pass")
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    log = logging.getLogger("bench.events")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(logging.handlers.QueueHandler(records))
    raw: dict[str, list[float]] = {name: [] for name in loops}
    for round_number in range(rounds + 1):  # the first round warms up
        order = list(loops)
        shift = round_number % len(order)
        for name in order[shift:] + order[:shift]:
            aegis.recorder.events.take()
            while not records.empty():
                records.get_nowait()
            gc.collect()
            spent = loops[name](count, aegis, log)
            gc.collect()
            base = empty(count, aegis, log)
            if round_number:
                raw[name].append((spent - base) / count)
            queued = records.qsize() if name.startswith("logging") else len(aegis.recorder.events)
            if queued != count:
                raise AssertionError(f"{name}: {queued} queued of {count}")
    aegis.shutdown()
    return {name: statistics.median(values) for name, values in raw.items()}


def measure_store(rounds: int, events: int) -> dict[str, float]:
    from aegis_mw import Aegis
    from aegis_mw.core.events import EventQuery

    walls, cpus = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "aegis.db"
            aegis = Aegis(
                sink=f"sqlite:///{path}", flush_interval=3600, max_buffer=events * 10 + 10,
                metrics_registry="none", environ={},
            )  # fmt: skip
            aegis.recorder.events.max_bytes = 2**62  # the flusher keeps up, or it is counted
            aegis.flusher.start()
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            for number in range(events):
                aegis.event(
                    "job done", tags=("jobs",), payload={"n": number}, event_id=f"e{number}"
                )
            if not aegis.force_flush(120):
                raise AssertionError("the events were not stored in time")
            walls.append((time.perf_counter() - wall) / events * 1e6)
            cpus.append((time.process_time() - cpu) / events * 1e6)
            sink = aegis.sinks[0]
            stored = sink.read_events(EventQuery(limit=1000, offset=0))
            if len(stored) != min(events, 1000) or aegis.stats().events_accepted != events:
                raise AssertionError("not every event was stored")
            aegis.shutdown()
    return {"wall_us": statistics.median(walls), "cpu_us": statistics.median(cpus)}


def measure_posts(rounds: int, posts: int) -> dict[str, float]:
    from aegis_mw import Aegis
    from aegis_mw.endpoints.events import post_events

    bodies = {
        size: json.dumps(
            [{"message": "job done", "tags": ["jobs"], "payload": {"n": n}} for n in range(size)]
        ).encode()
        for size in (1, 100)
    }
    raw: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        aegis = Aegis(
            sink=f"sqlite:///{Path(directory) / 'aegis.db'}", flush_interval=3600,
            max_buffer=posts * 100 + 10, metrics_registry="none", environ={},
        )  # fmt: skip
        aegis.recorder.events.wake_at = 2**62
        aegis.recorder.events.max_bytes = 2**62
        aegis.recorder.events.max_events = posts * 100  # room for a round's events
        # The flusher's connection open, as in an app that has served a
        # request: the file stays in WAL mode between the audit's connections.
        if not aegis.force_flush(30):
            raise AssertionError("the first flush did not end")
        audit = aegis.audit_log
        for round_number in range(rounds + 1):  # the first round warms up
            for audited in (True, False):
                aegis.audit_log = audit if audited else None
                for size, body in bodies.items():
                    aegis.recorder.events.take()
                    gc.collect()
                    started = time.perf_counter()
                    for _ in range(posts):
                        answer = post_events(aegis, body, "bench via api from 127.0.0.1")
                        if answer.status != 202:
                            raise AssertionError(answer.body)
                    spent = (time.perf_counter() - started) / posts * 1e6
                    if round_number:
                        key = f"{size}_{'audited' if audited else 'logger'}"
                        raw.setdefault(key, []).append(spent)
        aegis.audit_log = audit
        if audit is None or len(audit.latest(10)) != 10:
            raise AssertionError("the posts were not audited")
        aegis.recorder.events.take()  # not to be stored: only the answers were measured
        aegis.shutdown()
    return {key: statistics.median(values) for key, values in raw.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--store-rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--post-rounds", type=int, default=5)
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls = measure_calls(args.rounds, args.count)
    store = measure_store(args.store_rounds, args.events)
    posted = measure_posts(args.post_rounds, args.posts)
    print(f"aegis.event(...), ns per call (median of {args.rounds} rounds of {args.count}):")
    for name, statement in CALLS.items():
        print(f"  {calls[name]:8.0f}  {name}: {statement}")
    print(
        f"stored in SQLite ({args.events} events, median of {args.store_rounds}): "
        f"{store['wall_us']:.1f} µs wall and {store['cpu_us']:.1f} µs CPU per event, "
        f"{1e6 / store['wall_us']:,.0f} events/s"
    )
    print(
        f"POST {{api_path}}/events, µs per answer (median of {args.post_rounds} rounds of {args.posts}):"
    )
    for size in (1, 100):
        audited, logged = posted[f"{size}_audited"], posted[f"{size}_logger"]
        print(
            f"  {size:3d} event(s): {audited:8.1f} audited in SQLite, {logged:8.1f} without "
            f"a store for the audit (+{audited - logged:.1f} for the audit)"
        )
    if args.json:
        print(json.dumps({"calls_ns": calls, "store": store, "posted_us": posted}))


if __name__ == "__main__":
    main()

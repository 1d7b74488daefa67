"""The spool of a remote store: what an outage costs, and how fast it catches up.

Batches of ``--batch-size`` (5,000) request records with their rollup delta,
made by ``bench/history.py``'s traffic (20 routes, real-looking statuses and
durations, unique ids), go through the parts of ``aegis_mw.core.spooling``:

1. the codec alone: µs per record to encode and to decode, bytes per record
   spooled, and the longest single step between two slice checks (the most
   the GIL is held in one go by it; the garbage collector off meanwhile, so
   that a collection of the bench's own records does not count);
2. spooling, as during an outage: ``Spooled`` over a real spool file in a
   temporary directory and a store that fails every write at once (a
   refused connection), paced as when the pipeline is behind (its short
   pauses, as ``bench/history.py`` paces the sinks): records/s into the
   spool, and this process's CPU per record;
3. replay, as when the store returns: the same ``Spooled``, the store now a
   fresh PostgreSQL schema (``--postgres``), driven as the flusher drives it
   (empty writes while batches wait) until the spool is empty: records/s
   from the spool into the store, beside records/s of writing the same
   batches straight into another fresh schema, in the same run.

Each part runs ``--rounds`` (5) rounds of ``--batches`` (20) batches; the
medians are printed. Usage::

    python bench/spool.py [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from history import DEFAULT_POSTGRES, Databases, Traffic, fold

from aegis_mw import speedups
from aegis_mw.core import spool_codec
from aegis_mw.core.record import Batch
from aegis_mw.core.spooling import Spooled
from aegis_mw.sinks.spool_file import FILE_NAME, SpoolFile


def batches(traffic: Traffic, count: int, size: int, tag: str) -> list[Batch]:
    out = []
    start = time.time() - 3600
    for number in range(count):
        records = traffic.records(size, start + number, 1.0)
        out.append(
            Batch(records, rollups=fold(records, f"{tag}-{number}"), batch_id=f"{tag}-{number}")
        )
    return out


def codec(work: list[Batch]) -> dict[str, float]:
    records = sum(len(batch) for batch in work)
    # The steps' own length: not a collection of the bench's 100,000 records
    # that happens to fall in one (the app's collections are the app's).
    gc.collect()
    gc.disable()
    try:
        return _codec(work, records)
    finally:
        gc.enable()


def _codec(work: list[Batch], records: int) -> dict[str, float]:
    longest = 0.0
    last = time.perf_counter()

    def check() -> None:
        nonlocal last, longest
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now

    started = time.perf_counter()
    payloads = []
    for batch in work:
        last = time.perf_counter()
        payloads.append(spool_codec.encode(batch, check))
    encoded = time.perf_counter() - started
    started = time.perf_counter()
    for payload in payloads:
        last = time.perf_counter()
        spool_codec.decode(payload, check)
    decoded = time.perf_counter() - started
    return {
        "encode": encoded / records * 1e6,
        "decode": decoded / records * 1e6,
        "bytes": sum(map(len, payloads)) / records,
        "step_ms": longest * 1e3,
    }


class Refused(ConnectionError):
    pass


def refuse(batch: Batch) -> None:
    raise Refused("connection refused")


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def spooling(
    work: list[Batch], directory: str, url: str, direct: Callable[[Batch], None]
) -> dict[str, float]:
    from aegis_mw.sinks.postgres import PostgresSink

    records = sum(len(batch) for batch in work)
    path = os.path.join(directory, FILE_NAME)
    if os.path.exists(path):
        os.remove(path)
    store = SpoolFile(path, "bench", limit_bytes=1 << 40, lease_seconds=60.0)
    through = Spooled(refuse, store, sink_timeout=5.0, backoff_initial=3600, backoff_max=3600)
    through.pace_by(lambda: 1.0)  # as when the pipeline is behind: its short pauses
    cpu0, wall0 = cpu(), time.perf_counter()
    for batch in work:
        through(batch)
    spool_wall, spool_cpu = time.perf_counter() - wall0, cpu() - cpu0
    assert through.view.records == records, through.view

    sink = PostgresSink(url)  # set up as Databases.open sets up the direct one
    sink.use_compiled(speedups.load())
    sink.pace_by(lambda: 1.0)
    sink.write(Batch())  # connect and create the tables, untimed
    through.write = sink.write
    through.retry_at = 0.0
    wall0 = time.perf_counter()
    while through.view.batches:
        through(Batch())
    replay_wall = time.perf_counter() - wall0
    assert through.replayed == records
    sink.close()
    store.close()

    wall0 = time.perf_counter()
    for batch in work:
        direct(batch)
    direct_wall = time.perf_counter() - wall0
    return {
        "spool_rate": records / spool_wall,
        "spool_cpu_us": spool_cpu / records * 1e6,
        "replay_rate": records / replay_wall,
        "direct_rate": records / direct_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    databases = Databases(args.postgres)
    if databases.postgres_skipped:
        sys.exit(f"PostgreSQL is needed: {databases.postgres_skipped}")
    traffic = Traffic()
    directory = tempfile.mkdtemp(prefix="aegis-bench-spool-")
    results: list[dict[str, Any]] = []
    try:
        for round_number in range(args.rounds):
            work = batches(traffic, args.batches, args.batch_size, f"r{round_number}")
            direct_sink = databases.open(f"direct{round_number}")["PostgreSQL"]
            direct_sink.write(Batch())
            replay_url = databases.postgres_spec(f"replay{round_number}")
            figures = codec(work)
            figures.update(spooling(work, directory, replay_url, direct_sink.write))
            results.append(figures)
            print(f"round {round_number + 1}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()),
                  flush=True)  # fmt: skip
    finally:
        databases.cleanup()
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))
        os.rmdir(directory)

    def median(key: str) -> float:
        return statistics.median(result[key] for result in results)

    records = args.batches * args.batch_size
    print()
    print(
        f"medians of {args.rounds} rounds, {records:,} records a round in batches of {args.batch_size:,}"
    )
    print(f"codec: encode {median('encode'):.2f} µs/record, decode {median('decode'):.2f} µs/record, "
          f"{median('bytes'):.1f} bytes/record spooled, longest step between slice checks "
          f"{median('step_ms'):.2f} ms")  # fmt: skip
    print(f"outage: {median('spool_rate'):,.0f} records/s into the spool, "
          f"{median('spool_cpu_us'):.2f} µs CPU/record")  # fmt: skip
    print(f"return: {median('replay_rate'):,.0f} records/s replayed into PostgreSQL; "
          f"{median('direct_rate'):,.0f} records/s written straight (same batches, same run)")  # fmt: skip


if __name__ == "__main__":
    main()

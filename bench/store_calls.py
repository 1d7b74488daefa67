"""What one call of the alert store, the incidents and the audit costs on SQLite.

The alert threads call the alert store a few times a second (the lease, the
instances, silences, the outbox), the API calls the incidents and the audit
per request. Each call borrows a connection to the app's SQLite file; this
times calls one after another in one thread, per call: CPU and wall time,
medians of ``--rounds`` rounds of ``--calls`` calls each.

    python bench/store_calls.py
    python bench/store_calls.py --rounds 9 --calls 500
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aegis_mw import Aegis


def timed(call: Callable[[int], object], calls: int, rounds: int) -> tuple[float, float]:
    """Median CPU and wall microseconds per call over ``rounds`` rounds."""
    cpu, wall = [], []
    for round_ in range(rounds):
        started_cpu, started = time.process_time(), time.perf_counter()
        for index in range(calls):
            call(round_ * calls + index)
        cpu.append((time.process_time() - started_cpu) / calls * 1e6)
        wall.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        aegis = Aegis(sink=f"sqlite:///{Path(directory) / 'aegis.db'}", metrics_registry="none")
        try:
            sink = aegis.sinks[0]
            alerts, audit = sink.alert_store(), sink.audit_log()
            incidents = aegis.incidents
            cases: list[tuple[str, Callable[[int], object]]] = [
                ("alert store: instances", lambda _: alerts.load()),
                ("alert store: silences", lambda _: alerts.silences(0.0)),
                ("incidents: counts", lambda _: incidents.store.counts(0.0)),
                (
                    "incidents: open one",
                    lambda n: incidents.open({"title": f"t{n}", "severity": "low"}, "bench"),
                ),
                ("audit: add one", lambda n: audit.add(float(n), "bench", "POST", "events", {})),
            ]
            print(f"\nSQLite, one thread, medians of {args.rounds} rounds of {args.calls} calls\n")
            print(f"{'call':28} {'CPU µs':>9} {'wall µs':>9}")
            print("-" * 48)
            for label, call in cases:
                call(-1)  # the connection opened, the statements prepared
                cpu, wall = timed(call, args.calls, args.rounds)
                print(f"{label:28} {cpu:9.1f} {wall:9.1f}")
        finally:
            aegis.shutdown()


if __name__ == "__main__":
    main()

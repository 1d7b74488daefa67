"""What alert evaluation costs the process that evaluates.

200 rules over an app of 50 routes, as a user might write them: error
ratios, p95/p99 latencies, request and 429 rates, over 5-minute, 15-minute
and 1-hour windows, a quarter of them one alert per route (``group_by``).
An hour of traffic (every route, every 5 seconds, a few status classes) is
stored first through the sink, as the flusher stores it. Then an
``AlertService`` ticks as its thread would every ``alert_interval``: claim
the lease, read every rule's window (one query per distinct window), evaluate,
commit the changed instances and the transitions; write this process's
health report and read the others'.

Reported per sink: the CPU time of one tick (this process; the database
server's own work for PostgreSQL is not in it) and its wall time, medians
over ``--ticks``, and the share of one core that is at an evaluation every
10 seconds (the default ``alert_interval``).

Then the time from a transition to its receiver: an alert service with its
own threads, a webhook channel to an HTTP receiver on 127.0.0.1, traffic
that breaches a rule; from the evaluation that fires (the transition's time)
to the receiver's answer, for ``--episodes`` rules in turn, on SQLite.

    python bench/alerts.py                  # SQLite and PostgreSQL (if reachable)
    python bench/alerts.py --ticks 5        # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.service import AlertService
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import RollupDelta

ROUTES = [f"/api/v1/resource{n}/{{id}}" for n in range(50)]
INPUTS = ("error_ratio", "latency_p95_ms", "latency_p99_ms", "request_rate", "rate_limited_ratio")
THRESHOLDS = {
    "error_ratio": 0.05, "latency_p95_ms": 500.0, "latency_p99_ms": 1500.0,
    "request_rate": 1000.0, "rate_limited_ratio": 0.1,
}  # fmt: skip
WINDOWS = ("5m", "15m", "1h")


def rules(count: int = 200) -> list[AlertRule]:
    """``count`` rules: per route, per route grouped, and app-wide."""
    out = []
    shapes = itertools.cycle(itertools.product(INPUTS, WINDOWS))
    for n in range(count):
        name, window = next(shapes)
        options: dict[str, Any] = {}
        if n % 4 == 0:
            options["group_by"] = ("route",)
        elif n % 4 in (1, 2):
            options["route"] = ROUTES[n % len(ROUTES)]
        rule = AlertRule(
            name=f"rule_{n}", input=name, operator=">", threshold=THRESHOLDS[name],
            window=window, for_="1m", **options,
        )  # fmt: skip
        out.append(rule)
    return out


def fill(sink: Any, now: float, seconds: int = 3600) -> int:
    """An hour of rollups: every route every 5 seconds, 200s, some 500s and 429s."""
    written = 0
    for start in range(int(now) - seconds, int(now), 300):
        delta = RollupDelta()
        for bucket in range(start, start + 300, 5):
            for index, route in enumerate(ROUTES):
                for status, count in ((200, 8), (500, index % 3), (429, index % 2)):
                    for _ in range(count):
                        delta.add(bucket + 1.0, route, "GET", status, 20.0 + index, status >= 500,
                                  0, 512)  # fmt: skip
                        written += 1
        delta.delta_id = uuid.uuid4().hex
        sink.write(Batch(rollups=delta))
    return written


def measure(label: str, sink: Any, ticks: int) -> tuple[float, float]:
    now = time.time()
    fill(sink, now)
    # With this process's health report, as an app's service writes one
    # every tick and reads the others' (the error and latency rules make
    # the failing readiness inhibit them).
    report = {"checks": {"database": {"failing": False, "critical": True, "age": 1.0}},
              "dropped": 0, "sinks": {"sqlite": False}}  # fmt: skip
    service = AlertService(
        rules(), sink.alert_store(), sink, interval=10.0, wall=time.time, reporter=lambda: report
    )
    service.tick()  # the first: every instance is new
    cpu, wall = [], []
    for _ in range(ticks):
        started_cpu, started = time.thread_time(), time.perf_counter()
        service.tick()
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    if service.failures or service.token is None:
        raise SystemExit(f"{label}: the evaluation failed ({service.failures} failures)")
    instances = len(service._instances)
    cpu_ms, wall_ms = statistics.median(cpu) * 1000, statistics.median(wall) * 1000
    print(
        f"{label:<11} {instances:>9} {cpu_ms:>12.1f} {wall_ms:>12.1f} "
        f"{cpu_ms / 10_000 * 100:>17.2f} %"
    )
    changed, rebuilt = rule_change(service)
    print(
        f"{'':<11} the tick after a rule written through the API: {changed:.1f} ms CPU "
        f"(the running sums of the other windows kept); {rebuilt:.1f} ms with every "
        "window read again"
    )
    return cpu_ms, wall_ms


def rule_change(service: AlertService, times: int = 3) -> tuple[float, float]:
    """CPU ms (medians of ``times``) of the tick that follows a rule written
    through the API (a new 5-minute error ratio on one route), and of a tick
    whose running sums start over (what every rule change cost before the
    sums were carried over)."""
    from aegis_mw.alerts.sliding import SlidingFigures
    from aegis_mw.alerts.store import RULE

    changed, rebuilt = [], []
    for index in range(times):
        rule = AlertRule(
            name=f"api_rule_{index}", input="error_ratio", operator=">", threshold=0.5,
            window="5m", route=ROUTES[index],
        )  # fmt: skip
        service.store.put_item(RULE, rule.name, rule.to_mapping(), "bench", time.time(), 1000)
        started = time.thread_time()
        service.tick()
        changed.append(time.thread_time() - started)
        service._figures = SlidingFigures(service.reader, service.rules, service.settle)
        started = time.thread_time()
        service.tick()
        rebuilt.append(time.thread_time() - started)
    return statistics.median(changed) * 1000, statistics.median(rebuilt) * 1000


def delivery_latency(episodes: int) -> list[float]:
    """Seconds from each firing's evaluation to the receiver getting it."""
    import http.server
    import json
    import threading

    from aegis_mw.alerts.channels import channels_from_config
    from aegis_mw.sinks import SQLiteSink

    arrivals: dict[str, float] = {}
    got = threading.Condition()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.end_headers()
            with got:
                arrivals[body["groupLabels"]["alertname"]] = time.time() - body["aegis"]["at"]
                got.notify_all()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    channels = channels_from_config(
        # A firing is the first notice of its group: sent at once, without
        # the group_wait that waits for the rest of a group to arrive.
        {"hook": {"type": "webhook", "url": url, "allow_private": True, "group_wait": "0s"}}
    )
    out = []
    with tempfile.TemporaryDirectory() as directory:
        sink = SQLiteSink(os.path.join(directory, "aegis.db"))
        now = time.time()
        delta = RollupDelta()
        for second in range(15, 60, 5):
            for n in range(20):
                delta.add(now - second, ROUTES[0], "GET", 500 if n < 10 else 200, 5.0, n < 10, 0, 1)
        delta.delta_id = uuid.uuid4().hex
        sink.write(Batch(rollups=delta))
        for episode in range(episodes):
            name = f"latency_{episode}"
            rule = AlertRule(name=name, input="error_ratio", operator=">", threshold=0.1,
                             window="1m")  # fmt: skip
            service = AlertService(
                [rule], sink.alert_store(), sink, interval=10.0, wall=time.time,
                channels=channels,
            )  # fmt: skip
            service.start()  # its first tick evaluates at once, and fires
            with got:
                got.wait_for(lambda name=name: name in arrivals, timeout=30)
            service.stop(10)
            out.append(arrivals.get(name, float("inf")))
        sink.close()
    server.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=21)
    parser.add_argument("--episodes", type=int, default=11)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("AEGIS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test"),
    )
    args = parser.parse_args()
    print(f"200 rules over {len(ROUTES)} routes, an hour stored; medians of {args.ticks} ticks")
    print(f"{'sink':<11} {'instances':>9} {'CPU ms/tick':>12} {'wall ms/tick':>12} "
          f"{'core at 10 s':>19}")  # fmt: skip
    from aegis_mw.sinks import SQLiteSink

    with tempfile.TemporaryDirectory() as directory:
        sink = SQLiteSink(os.path.join(directory, "aegis.db"))
        try:
            measure("SQLite", sink, args.ticks)
        finally:
            sink.close()
    logging.getLogger("aegis_mw.alerts").setLevel(logging.ERROR)  # its notices, not ours
    latencies = delivery_latency(args.episodes)
    print(
        f"transition to receiver, SQLite, {len(latencies)} firings: median "
        f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    try:
        import psycopg

        schema = f"aegis_bench_alerts_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # no driver or no server: SQLite only
        print(f"PostgreSQL   skipped: {type(exc).__name__}: {exc}".splitlines()[0])
        return
    from aegis_mw.sinks.postgres import PostgresSink

    joiner = "&" if "?" in args.postgres else "?"
    sink = PostgresSink(f"{args.postgres}{joiner}options=-csearch_path%3D{schema}")
    try:
        measure("PostgreSQL", sink, args.ticks)
    finally:
        sink.close()
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()

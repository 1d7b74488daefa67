"""Per-request overhead of AegisMiddleware and its peers over a bare FastAPI app.

All variants live in one process (one process per route count, pinned to one
CPU) and are driven in-process at the ASGI level: no server, no sockets, so
the figure is what the middleware itself costs. Each round runs one chunk of
requests per variant, in rotating order, after a GC pass; the report gives,
per variant, the median over rounds of its per-request cost minus the bare
app's in the same round.

Two clocks: process CPU time (every thread of the process, so Aegis's flusher
and sink threads are charged to Aegis, and not disturbed by other programs
taking the CPU) and wall time (what a request waits; noisier on a busy host).

Aegis appears four times:
- "request path": what a request pays, on the compiled path (the default
  where it was built). The flusher is held back (long interval, large batch)
  and flushed untimed between chunks.
- "pure-Python request path": the same with ``speedups=False``, the path
  taken where the C extension could not be built.
- "all-in": the same plus all the background work its records cause
  (folding, finalizing and writing every record to SQLite): flushed once
  ``ALL_IN_BATCH`` (5,000, the default ``batch_size``) requests wait, each
  flush timed on its own, and its time per request added to every round's
  figure; and again with ``sample_rate=0.1`` (the request log keeps
  one in ten requests, plus every error and slow one; the figures and rollups
  still count all).
- "alerts": the request path again with bench/alerts.py's 200 alert rules
  evaluated every 10 s by the alert service's thread (it reads the stored
  rollups, not the requests: the request path should cost the same).

``--flush-every N`` flushes the all-in variants once N requests wait instead:
the flusher writes every ``flush_interval`` (1 s) whatever it holds, so at
1,000 requests a second a flush holds 1,000, and its fixed costs (the
transaction, its commit, the rollup rows) are shared by that many.

    python bench/overhead.py                          # full run, about three minutes
    python bench/overhead.py --rounds 9 --chunk 300   # quick look
    python bench/overhead.py --routes 1 --flush-every 1000 --variants aegis_all_in
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

LABELS = {
    "bare": "bare FastAPI",
    "perf_counter": "perf_counter-and-counter middleware",
    "aegis": "AegisMiddleware, request path",
    "aegis_python": "AegisMiddleware, pure-Python request path",
    "aegis_no_trace": "AegisMiddleware, trace_context off",
    "aegis_traced": "AegisMiddleware, traceparent sent",
    "aegis_all_in": "AegisMiddleware, all-in (SQLite writes)",
    "aegis_all_in_sampled": "AegisMiddleware, all-in, sample_rate=0.1",
    "aegis_all_in_sampled_counted": "AegisMiddleware, sampled, counting sink",
    "aegis_all_in_traced": "AegisMiddleware, all-in, traceparent sent",
    "aegis_all_in_traced_plain": "AegisMiddleware, all-in, traceparent sent, no exemplars",
    "otel": "OpenTelemetry ASGI (SDK, spans dropped)",
    "otel_aegis": "OpenTelemetry ASGI around AegisMiddleware",
    "aegis_tracing": "AegisMiddleware, tracing=True (spans made, not exported)",
    "aegis_alerts": "AegisMiddleware, request path, 200 alert rules evaluated every 10 s",
    "starlette_exporter": "starlette_exporter",
    "instrumentator": "prometheus-fastapi-instrumentator",
}
Results = dict[str, dict[str, list[float]]]


class Timing:
    """The cheapest useful middleware: a clock read and two additions."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self.total = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        await self.app(scope, receive, send)
        self.count += 1
        self.total += time.perf_counter() - start


AEGIS_VARIANTS = (
    "aegis", "aegis_python", "aegis_no_trace", "aegis_traced", "aegis_all_in",
    "aegis_all_in_sampled", "aegis_all_in_sampled_counted", "aegis_all_in_traced", "aegis_all_in_traced_plain", "aegis_alerts",
    "otel_aegis", "aegis_tracing",
)  # fmt: skip
#: Variants whose requests carry a W3C traceparent header (a caller's trace).
TRACED = ("aegis_traced", "aegis_all_in_traced", "aegis_all_in_traced_plain")
TRACEPARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


class CountingSink:
    """Takes every request's record and keeps none (``counts_records``)."""

    name = "counting"
    counts_records = True

    def write(self, batch: Any) -> None:
        pass

    def close(self) -> None:
        pass


def alert_rules() -> list[Any]:
    """bench/alerts.py's 200 rules over 50 routes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_alerts", os.path.join(os.path.dirname(os.path.abspath(__file__)), "alerts.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.rules())


def build_app(variant: str, routes: int, workdir: str) -> tuple[Any, Callable[[], None]]:
    """The app, and what to run after each chunk (the Aegis flush)."""
    from fastapi import FastAPI
    from starlette.responses import PlainTextResponse

    app = FastAPI()
    for index in range(routes):

        async def endpoint(item_id: int) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app.add_api_route(f"/r{index}/{{item_id}}", endpoint, methods=["GET"])

    def nothing() -> None:
        return None

    after_chunk: Callable[[], None] = nothing
    if variant == "perf_counter":
        app.add_middleware(Timing)
    elif variant in AEGIS_VARIANTS:
        from aegis_mw import Aegis, AegisMiddleware

        # The alert service evaluates in a thread of its own over the stored
        # rollups: the request path is the same, and its ticks land in a few
        # chunks only (the median leaves them out; see bench/alerts.py for
        # what a tick costs).
        alerts = alert_rules() if variant == "aegis_alerts" else ()
        if variant == "aegis_tracing":
            # Its own SDK provider with no exporter: as the "otel" variant's, spans
            # made and dropped (the export's cost is the exporter's, not ours).
            os.environ["OTEL_TRACES_EXPORTER"] = "none"
        sinks: list[Any] = [f"sqlite:///{workdir}/{variant}-{routes}.db"]
        if variant == "aegis_all_in_sampled_counted":
            # Beside the log, a sink that counts every request, as the OTLP
            # sink does: what building the sampled-out records costs (its
            # own work, encoding and sending, is left out).
            sinks.append(CountingSink())
        aegis = Aegis(
            sink=sinks,
            flush_interval=3600,
            batch_size=1_000_000,
            speedups=variant != "aegis_python",
            sample_rate=0.1 if variant.startswith("aegis_all_in_sampled") else 1.0,
            trace_context=variant != "aegis_no_trace",
            metrics_exemplars=variant != "aegis_all_in_traced_plain",
            tracing=variant == "aegis_tracing",
            alert_rules=alerts,
            alert_interval=10,
            environ={},
        )
        app.add_middleware(AegisMiddleware, aegis=aegis)

        def flush() -> None:
            if not aegis.force_flush(60):
                raise SystemExit(f"aegis flush failed: {aegis.stats()}")

        after_chunk = flush
    if variant in ("otel", "otel_aegis"):
        # Outermost, as FastAPIInstrumentor puts it: its span is current
        # when ours runs. No span processor: spans are made, then dropped.
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.trace import TracerProvider

        app.add_middleware(OpenTelemetryMiddleware, tracer_provider=TracerProvider())
    elif variant == "starlette_exporter":
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware)
    elif variant == "instrumentator":
        from prometheus_client import CollectorRegistry
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator(registry=CollectorRegistry()).instrument(app)
    elif variant not in LABELS:
        raise SystemExit(f"unknown variant {variant}")
    return app, after_chunk


def make_scopes(routes: int, traced: bool = False) -> list[dict[str, Any]]:
    extra = [TRACEPARENT] if traced else []
    return [
        {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/r{index}/42",
            "raw_path": f"/r{index}/42".encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench"), (b"user-agent", b"bench"), *extra],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        for index in range(routes)
    ]


async def run_chunk(app: Any, scopes: list[dict[str, Any]], count: int, offset: int) -> int:
    request = {"type": "http.request", "body": b"", "more_body": False}
    ok = 0

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        nonlocal ok
        if message["type"] == "http.response.start" and message["status"] == 200:
            ok += 1

    routes = len(scopes)
    for index in range(offset, offset + count):
        # A fresh scope per request, as a server gives: routers write into it.
        await app(dict(scopes[index % routes]), receive, send)
    return ok


#: The all-in variants flush once this many requests wait, as the flusher
#: does by default (``batch_size``): a flush per round would charge every
#: 100 requests a transaction, a commit and a rollup write.
ALL_IN_BATCH = 5000


async def measure(
    variants: list[str], routes: int, rounds: int, chunk: int, flush_every: int = ALL_IN_BATCH
) -> Results:
    workdir = tempfile.mkdtemp(prefix="aegis-bench-")
    apps = {variant: build_app(variant, routes, workdir) for variant in variants}
    scopes = {variant: make_scopes(routes, variant in TRACED) for variant in variants}
    for variant, (app, after_chunk) in apps.items():  # warm up: build stacks, fill caches
        await run_chunk(app, scopes[variant], max(chunk, 1000), 0)
        after_chunk()
    results: Results = {variant: {"cpu": [], "wall": []} for variant in variants}
    # All-in: the flushes' own clocks and the requests they covered.
    flushed = {variant: {"cpu": 0.0, "wall": 0.0, "requests": 0.0} for variant in variants}
    waiting = dict.fromkeys(variants, 0)
    for round_number in range(rounds):
        shift = round_number % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            app, after_chunk = apps[variant]
            gc.collect()
            cpu_started = time.process_time()
            started = time.perf_counter()
            ok = await run_chunk(app, scopes[variant], chunk, round_number * chunk)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            if ok != chunk:
                raise SystemExit(f"{variant}: {ok} of {chunk} requests answered 200")
            results[variant]["cpu"].append(cpu / chunk * 1e6)
            results[variant]["wall"].append(elapsed / chunk * 1e6)
            waiting[variant] += chunk
            all_in = variant.startswith("aegis_all_in")
            if all_in and (waiting[variant] >= flush_every or round_number == rounds - 1):
                cpu_started = time.process_time()
                started = time.perf_counter()
                after_chunk()
                flushed[variant]["wall"] += time.perf_counter() - started
                flushed[variant]["cpu"] += time.process_time() - cpu_started
                flushed[variant]["requests"] += waiting[variant]
                waiting[variant] = 0
            elif not all_in:
                after_chunk()
                waiting[variant] = 0
    for variant, spent in flushed.items():
        if spent["requests"]:
            # The pipeline's share per request, added to every round's figure.
            for clock in ("cpu", "wall"):
                share = spent[clock] / spent["requests"] * 1e6
                results[variant][clock] = [value + share for value in results[variant][clock]]
                results[variant][f"pipeline_{clock}"] = [share]
    return results


def summarize(results: Results) -> list[dict[str, Any]]:
    rows = []
    for variant, clocks in results.items():
        row: dict[str, Any] = {"variant": variant}
        for clock in ("pipeline_cpu", "pipeline_wall"):
            if clock in clocks:
                row[f"{clock}_us"] = clocks[clock][0]
        for clock in ("cpu", "wall"):
            runs = clocks[clock]
            bare = results["bare"][clock]
            row[f"{clock}_us"] = statistics.median(runs)
            row[f"{clock}_overhead_us"] = statistics.median(
                run - base for run, base in zip(runs, bare, strict=True)
            )
            row[f"{clock}_ratio"] = statistics.median(
                run / base for run, base in zip(runs, bare, strict=True)
            )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=301)
    parser.add_argument("--chunk", type=int, default=100, help="requests per variant per round")
    parser.add_argument("--routes", type=int, nargs="*", default=[1, 50])
    parser.add_argument("--variants", nargs="*", default=list(LABELS))
    parser.add_argument(
        "--flush-every", type=int, default=ALL_IN_BATCH,
        help="all-in variants: requests per flush (default %(default)s, the batch_size)",
    )  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")
    if args.worker:
        if hasattr(os, "sched_setaffinity"):
            # One CPU: the flusher's work is serialized with the requests it
            # follows (charged, not hidden on the other core), and less noise.
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
        results = asyncio.run(
            measure(args.variants, args.routes[0], args.rounds, args.chunk, args.flush_every)
        )
        print(json.dumps(summarize(results)))
        return

    table: list[dict[str, Any]] = []
    for routes in args.routes:
        # One process per route count: the peers register global metrics.
        command = [
            sys.executable, __file__, "--worker", "--routes", str(routes),
            "--rounds", str(args.rounds), "--chunk", str(args.chunk),
            "--flush-every", str(args.flush_every), "--variants", *args.variants,
        ]  # fmt: skip
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        for row in json.loads(output.strip().splitlines()[-1]):
            table.append({"routes": routes, **row})

    print(
        f"\nFastAPI in-process, {args.rounds} rounds x {args.chunk} requests per variant; medians "
        "of per-round figures (overhead and ratio against bare FastAPI in the same round)\n"
    )
    header = (
        f"{'variant':42} {'routes':>6} {'CPU us':>8} {'overhead':>9} {'ratio':>6}"
        f" {'wall us':>8} {'overhead':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in table:
        print(
            f"{LABELS[row['variant']]:42} {row['routes']:>6} {row['cpu_us']:>8.2f}"
            f" {row['cpu_overhead_us']:>+9.2f} {row['cpu_ratio']:>6.3f}"
            f" {row['wall_us']:>8.2f} {row['wall_overhead_us']:>+9.2f}"
        )
    for row in table:
        if "pipeline_cpu_us" in row:
            print(
                f"  {LABELS[row['variant']]}: the pipeline's share, {row['pipeline_cpu_us']:.2f} "
                f"CPU µs a request (flushes of {args.flush_every:,}, {row['pipeline_wall_us']:.2f} µs "
                "of wall time with the pauses between GIL slices)"
            )
    rows = {(row["variant"], row["routes"]): row for row in table}
    for routes in args.routes:
        if ("otel", routes) in rows and ("otel_aegis", routes) in rows:
            alone, both = rows["otel", routes], rows["otel_aegis", routes]
            print(
                f"  with OpenTelemetry's span current ({routes} routes): AegisMiddleware adds "
                f"{both['cpu_overhead_us'] - alone['cpu_overhead_us']:+.2f} CPU µs a request "
                "(otel_aegis less otel, each against bare)"
            )
    if args.json:
        print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()

"""Per-request overhead of the WSGI middleware and its peer over a bare Flask app.

Target: at most 3 us per request over bare Flask, side by side with
prometheus_flask_exporter.

Every variant lives in one process, pinned to one CPU, and is called
in-process through its WSGI callable, as a WSGI server calls it: a fresh copy
of a prepared environ per request, ``start_response`` collecting the status,
the response iterable consumed and ``close()`` called. No server, no sockets:
the figure is what the framework and the middleware cost. Requests alternate
between two routes, ``/items/<int:item_id>`` (short text) and
``/health-like`` (short JSON), the same for every Flask app.

Variants (each compared with its own bare baseline):

- bare Flask;
- Flask + ``aegis_mw.contrib.flask.Aegis(app, sink="memory://")`` (the
  compiled request path, the default on CPython);
- the same with a sink that drops every batch (``sink=lambda batch: None``);
- the same (``memory://``) on the pure-Python request path (``speedups=False``);
- the same (``memory://``) "all-in": with the flusher's work charged;
- Flask + prometheus_flask_exporter (``PrometheusMetrics``, its own registry);
- Flask in OpenTelemetry's own WSGI middleware (an SDK provider with no
  exporter: spans made and dropped), and Flask + aegis_mw with ``tracing=True``
  (``OTEL_TRACES_EXPORTER=none``: the same), its request path: what the
  option costs beside what OpenTelemetry's middleware costs;
- a plain WSGI callable (no framework), bare and wrapped in
  ``AegisWSGIMiddleware`` with a dropping sink, compiled and pure-Python: the
  middleware alone.

The aegis pipelines use ``metrics_registry="none"`` and ignore ``AEGIS_*``
environment variables (``environ={}``). The flusher's background work is
excluded from the "request path" rows, as in ``overhead.py``: the flusher is
held back (one-hour interval, batches of 1,000,000) and flushed untimed after
each chunk, so a row is what a request pays on its own thread (including what
the waiting items cost the garbage collector). The "all-in" row flushes inside
the timed chunk: with the process pinned to one CPU and process CPU time
counting every thread, it is charged all the background work (folding the
realtime aggregates, building records, rollups, the memory sink's writes).

Each round runs one chunk of ``--requests`` requests per variant, in an order
rotating from round to round, each after a ``gc.collect()``. Two clocks:
process CPU time (``time.process_time``, every thread; the main figure) and
wall time (``time.perf_counter``). Per variant the report gives the median
over rounds of the per-request cost, and the median over rounds of its cost
minus its baseline's in the same round. Everything is warmed up first.

    python bench/wsgi.py                          # about a minute
    python bench/wsgi.py --quick                  # about 10 seconds
    python bench/wsgi.py --rounds 51 --requests 20000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import wsgi_common
from wsgi_common import drop_batch, make_environ, run_chunk, version

TARGET_US = 3.0
ITEM_PATH = "/items/42"
HEALTH_PATH = "/health-like"
ITEM_BODY = b"item 42"
HEALTH_BODY = b'{"status":"ok"}\n'

#: key: (label, baseline key)
VARIANTS: dict[str, tuple[str, str]] = {
    "flask": ("bare Flask", "flask"),
    "flask_aegis": ("Flask + aegis_mw (memory://), request path", "flask"),
    "flask_aegis_drop": ("Flask + aegis_mw (dropping sink), request path", "flask"),
    "flask_aegis_python": ("Flask + aegis_mw (memory://), pure-Python path", "flask"),
    "flask_aegis_all_in": ("Flask + aegis_mw (memory://), all-in", "flask"),
    "flask_prometheus": ("Flask + prometheus_flask_exporter", "flask"),
    "flask_otel": ("Flask + OpenTelemetry WSGI (SDK, spans dropped)", "flask"),
    "flask_aegis_tracing": ("Flask + aegis_mw, tracing=True (spans dropped)", "flask"),
    "wsgi": ("plain WSGI callable", "wsgi"),
    "wsgi_aegis": ("plain WSGI + AegisWSGIMiddleware (dropping)", "wsgi"),
    "wsgi_aegis_python": ("plain WSGI + AegisWSGIMiddleware (dropping), pure-Python", "wsgi"),
}
#: The rows the target applies to.
TARGET_ROWS = ("flask_aegis", "flask_aegis_drop")
#: Request-path options: the flusher waits for the untimed flush after a chunk.
HELD_BACK = {"flush_interval": 3600, "batch_size": 1_000_000, "environ": {}}


def flask_app() -> Any:
    from flask import Flask

    app = Flask("bench_wsgi")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    @app.get(HEALTH_PATH)
    def health_like() -> dict[str, str]:
        return {"status": "ok"}

    return app


def plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Two routes and nothing else; names its route as the Flask integration does."""
    if environ["PATH_INFO"] == HEALTH_PATH:
        environ["aegis.route"] = HEALTH_PATH
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "16")])
        return [HEALTH_BODY]
    environ["aegis.route"] = "/items/{item_id}"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [ITEM_BODY]


class Variant:
    """A WSGI callable, its pipeline (if any), and what to do after a chunk."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.pipeline: Any = None
        self.memory: Any = None
        if key.startswith("flask"):
            app = flask_app()
            if key.startswith("flask_aegis"):
                from aegis_mw.contrib.flask import Aegis

                sink: Any = drop_batch if key == "flask_aegis_drop" else "memory://"
                speedups = key != "flask_aegis_python"
                tracing = key == "flask_aegis_tracing"
                if tracing:  # its own SDK provider, exporting nowhere
                    os.environ["OTEL_TRACES_EXPORTER"] = "none"
                self.pipeline = Aegis(
                    app, sink=sink, metrics_registry="none", speedups=speedups,
                    tracing=tracing, **HELD_BACK,
                ).pipeline  # fmt: skip
            elif key == "flask_prometheus":
                from prometheus_client import CollectorRegistry
                from prometheus_flask_exporter import PrometheusMetrics

                PrometheusMetrics(app, registry=CollectorRegistry())
            self.app: Callable[..., Any] = app
            if key == "flask_otel":
                from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
                from opentelemetry.sdk.trace import TracerProvider

                self.app = OpenTelemetryMiddleware(app, tracer_provider=TracerProvider())
        elif key.startswith("wsgi_aegis"):
            from aegis_mw.wsgi.middleware import AegisWSGIMiddleware

            middleware = AegisWSGIMiddleware(
                plain_app, sink=drop_batch, metrics_registry="none",
                speedups=key == "wsgi_aegis", **HELD_BACK,
            )  # fmt: skip
            self.pipeline = middleware.aegis
            self.app = middleware
        else:
            self.app = plain_app
        if self.pipeline is not None and self.pipeline.sinks[0].name == "memory":
            self.memory = self.pipeline.sinks[0]
        self.all_in = key.endswith("all_in")
        self.recorded = 0

    def flush(self) -> None:
        """Write what the chunk recorded (timed only for the all-in row)."""
        if self.pipeline is not None and not self.pipeline.force_flush(60):
            raise SystemExit(f"{self.key}: aegis flush failed: {self.pipeline.stats()}")

    def empty_sink(self) -> None:
        """Count and drop what the memory sink holds (never timed)."""
        if self.memory is not None:
            self.recorded += len(self.memory.requests)
            self.memory.clear()


def check_records(variant: Variant, environs: list[dict[str, Any]]) -> None:
    """The memory sink holds one record per request, with the route templates."""
    if variant.memory is None:
        return
    variant.flush()
    variant.memory.clear()
    run_chunk(variant.app, environs, 2)
    variant.flush()
    routes = sorted(record.route for record in variant.memory.requests)
    if routes != [HEALTH_PATH, "/items/{item_id}"]:
        raise SystemExit(f"{variant.key}: unexpected records {routes}")
    variant.memory.clear()


def measure(keys: list[str], rounds: int, requests: int) -> dict[str, dict[str, list[float]]]:
    variants = {key: Variant(key) for key in keys}
    environs = [make_environ(ITEM_PATH), make_environ(HEALTH_PATH)]
    for variant in variants.values():  # warm up: build stacks, fill caches, start flushers
        if run_chunk(variant.app, environs, max(requests, 2000)) != max(requests, 2000):
            raise SystemExit(f"{variant.key}: not every request answered 200")
        check_records(variant, environs)
        variant.flush()
        variant.empty_sink()
        variant.recorded = 0
    results = {key: {"cpu": [], "wall": []} for key in keys}
    try:
        for round_number in range(rounds):
            shift = round_number % len(keys)
            for key in keys[shift:] + keys[:shift]:
                variant = variants[key]
                gc.collect()
                cpu_started = time.process_time()
                started = time.perf_counter()
                ok = run_chunk(variant.app, environs, requests)
                if variant.all_in:
                    variant.flush()
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                if not variant.all_in:
                    variant.flush()
                variant.empty_sink()
                if ok != requests:
                    raise SystemExit(f"{key}: {ok} of {requests} requests answered 200")
                results[key]["cpu"].append(cpu / requests * 1e6)
                results[key]["wall"].append(elapsed / requests * 1e6)
        for variant in variants.values():
            if variant.memory is not None and variant.recorded != rounds * requests:
                raise SystemExit(f"{variant.key}: {variant.recorded} records stored")
            if variant.pipeline is not None:
                stats = variant.pipeline.stats()
                lost = sum(stats.dropped.values()) + sum(
                    sum(sink.dropped.values()) + sink.errors for sink in stats.sinks
                )
                if lost or stats.flusher_errors:
                    raise SystemExit(f"{variant.key}: records lost: {stats}")
    finally:
        for variant in variants.values():
            if variant.pipeline is not None:
                variant.pipeline.shutdown(10)
    return results


def report(results: dict[str, dict[str, list[float]]], rounds: int, requests: int) -> None:
    wsgi_common.report(
        results, VARIANTS,
        title=f"WSGI in-process, {rounds} rounds x {requests} requests per variant; medians of "
        "per-round figures (overhead against the baseline in the same round)",
        target_rows=TARGET_ROWS, target_us=TARGET_US, bare="bare Flask",
        peer=("flask_prometheus", "prometheus_flask_exporter"),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 31 (--quick: 9)")
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="per variant per round; default 6000 (--quick: 3000)",
    )
    parser.add_argument("--quick", action="store_true", help="a quick look, about 10 seconds")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (9 if args.quick else 31)
    requests = args.requests if args.requests is not None else (3000 if args.quick else 6000)
    if rounds < 1 or requests < 1:
        parser.error("--rounds and --requests must be at least 1")
    keys = list(args.variants)
    for key in list(keys):  # every row needs its baseline
        baseline = VARIANTS[key][1]
        if baseline not in keys:
            keys.insert(0, baseline)

    print("command:", shlex.join(["python", *sys.argv]))
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}; Flask {version('flask')}, "
        f"Werkzeug {version('werkzeug')}, prometheus_flask_exporter "
        f"{version('prometheus-flask-exporter')}, prometheus_client "
        f"{version('prometheus-client')}, aegis_mw {version('aegis_mw')}"
    )
    if hasattr(os, "sched_setaffinity"):
        # One CPU, set before any thread starts: the flusher's work is serialized
        # with the requests (charged, not hidden on another core), and less noise.
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
        print(f"pinned to CPU {cpu}")
    results = measure(keys, rounds, requests)
    report(results, rounds, requests)


if __name__ == "__main__":
    main()

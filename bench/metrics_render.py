"""A /metrics scrape of 50 routes x 5 methods x 6 statuses: our renderer against
prometheus-client's ``generate_latest`` for the same series, in one process.

Both sides hold the same figures: ``aegis_http_requests_total`` over the 1,500
(method, route, status) label sets, and for the 250 (method, route) pairs the
latency and time-to-first-byte histograms (15 buckets) and the two size
summaries. prometheus-client's side is built from its own Counter, Histogram
and Summary objects; ours is a whole scrape (reading the aggregates, building
the families, rendering). The output is checked with prometheus-client's parser
and, when installed, ``promtool check metrics``.

    python bench/metrics_render.py            # 31 rounds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from typing import Any

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
STATUSES = (200, 201, 400, 404, 500, 503)
ROUTES = tuple(f"/api/v1/resource{index}/{{item_id}}" for index in range(50))


def build_aegis() -> Any:
    from aegis_mw import Aegis

    aegis = Aegis(sink="memory://", flush_interval=3600, metrics_registry="none", environ={})
    offer = aegis.recorder.offer
    for method in METHODS:
        for route in ROUTES:
            for status in STATUSES:
                offer([method, route, "/x", status, 1.0, 1.01, 1.05, 10, 200, None, None, "",
                       False, None])  # fmt: skip
    assert aegis.force_flush(60)
    return aegis


def build_registry() -> Any:
    from prometheus_client import CollectorRegistry, Counter, Histogram, Summary

    registry = CollectorRegistry()
    requests = Counter("aegis_http_requests", "Requests.", ["method", "route", "status"],
                       registry=registry)  # fmt: skip
    duration = Histogram("aegis_http_request_duration_seconds", "Latency.", ["method", "route"],
                         registry=registry)  # fmt: skip
    ttfb = Histogram("aegis_http_time_to_first_byte_seconds", "TTFB.", ["method", "route"],
                     registry=registry)  # fmt: skip
    request_size = Summary("aegis_http_request_size_bytes", "In.", ["method", "route"],
                           registry=registry)  # fmt: skip
    response_size = Summary("aegis_http_response_size_bytes", "Out.", ["method", "route"],
                            registry=registry)  # fmt: skip
    for method in METHODS:
        for route in ROUTES:
            for status in STATUSES:
                requests.labels(method, route, str(status)).inc()
                duration.labels(method, route).observe(0.05)
                ttfb.labels(method, route).observe(0.01)
                request_size.labels(method, route).observe(10)
                response_size.labels(method, route).observe(200)
    return registry


def timed(function: Any, rounds: int) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(rounds):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=31)
    args = parser.parse_args()
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    aegis = build_aegis()
    registry = build_registry()
    endpoint = aegis.metrics.endpoint
    ours_ms, response = timed(lambda: endpoint.respond("", ""), args.rounds)
    theirs_ms, theirs = timed(lambda: generate_latest(registry), args.rounds)
    ours_text = response.body.decode()
    ours_series = sum(len(family.samples) for family in text_string_to_metric_families(ours_text))
    theirs_series = sum(
        len(family.samples) for family in text_string_to_metric_families(theirs.decode())
    )
    verdict = "promtool not installed"
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=ours_text, capture_output=True, text=True
        )
        verdict = "promtool: clean" if checked.returncode == 0 else f"promtool: {checked.stdout}"
    aegis.shutdown()
    our_lines, their_lines = ours_text.count("\n"), theirs.count(b"\n")
    print(
        f"1,500 label sets: ours {ours_ms:.2f} ms ({our_lines} lines, "
        f"{ours_series} samples, whole scrape); prometheus-client generate_latest "
        f"{theirs_ms:.2f} ms ({their_lines} lines, {theirs_series} samples); "
        f"ratio {ours_ms / theirs_ms:.3f} (median of {args.rounds}); {verdict}"
    )


if __name__ == "__main__":
    main()

"""A deterministic traffic history, written straight into a sink, and the
exact answers computed from it record by record."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

from aegis_mw.core.record import Batch, RequestRecord
from aegis_mw.core.rollup import RollupDelta

#: "Now" for every query of the shared suite (a fixed instant, 5-second aligned + 3.4 s).
NOW = 1_790_000_123.4
ROUTES = ("/", "/items/{id}", "/users/{id}", "/search", "/upload", "<unmatched>")
STATUSES = (200,) * 12 + (201, 204, 302, 304, 400, 404, 404, 429, 500, 503)


def open_sink(kind: str, request: Any, tmp_path: Any) -> Any:
    """A fresh history sink of ``kind`` (memory, sqlite or postgres; the last
    through the ``postgres_url`` fixture, which fails without a server in CI)."""
    from aegis_mw.sinks import MemorySink, SQLiteSink, build_sink

    if kind == "memory":
        return MemorySink()
    if kind == "sqlite":
        return SQLiteSink(str(tmp_path / "aegis.db"))
    return build_sink(request.getfixturevalue("postgres_url"))


def trace_of(number: int) -> str | None:
    """The trace id of ``make_records``' request ``number``: every fifth is in
    one of 64 traces (about ten requests each in the 3000), the rest in none."""
    return None if number % 5 else f"{number // 5 % 64 + 1:032x}"


def make_records(count: int = 3000, seed: int = 7, span: float = 7200.0) -> list[RequestRecord]:
    """``count`` requests spread over the ``span`` seconds before NOW (the
    traced ones: see :func:`trace_of`, which draws nothing from the random
    stream, so every other value is as it was before requests had traces)."""
    chance = random.Random(seed)
    records = []
    for number in range(count):
        status = chance.choice(STATUSES)
        # A few requests whose app raised after the response started.
        error = "RuntimeError: boom" if status == 200 and chance.random() < 0.03 else ""
        records.append(
            RequestRecord(
                request_id=f"{seed:04x}{number:012x}",
                timestamp=NOW - chance.random() * span,
                method=chance.choice(("GET", "GET", "GET", "POST", "DELETE")),
                route=chance.choice(ROUTES),
                path="/p",
                status=status,
                duration_ms=chance.lognormvariate(3.0, 1.2),
                ttfb_ms=None,
                request_bytes=chance.randrange(0, 2000),
                response_bytes=chance.randrange(0, 50_000),
                client_ip="127.0.0.1",
                error=error,
                trace_id=trace_of(number),
                span_id=None if number % 5 else f"{number + 1:016x}",
            )
        )
    return records


def batches(records: list[RequestRecord], size: int = 500, tag: str = "d") -> Iterable[Batch]:
    """Batches as the flusher would hand them over, each with its rollup delta."""
    for first in range(0, len(records), size):
        chunk = records[first : first + size]
        delta = RollupDelta()
        for r in chunk:
            delta.add(
                r.timestamp, r.route, r.method, r.status, r.duration_ms,
                r.status >= 500 or bool(r.error), r.request_bytes, r.response_bytes,
            )  # fmt: skip
        delta.delta_id = f"{tag}-{first}"
        yield Batch(requests=chunk, rollups=delta)


def exact_percentile(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(quantile * len(ordered))) - 1]


def expected_overview(records: list[RequestRecord]) -> dict[str, Any]:
    failed = [r for r in records if r.status >= 500 or r.error]
    return {
        "total": len(records),
        "failed": len(failed),
        "successful": sum(1 for r in records if r.status < 400 and not r.error),
        "client_errors": sum(1 for r in records if 400 <= r.status < 500),
        "rate_limited": sum(1 for r in records if r.status == 429),
        "request_bytes": sum(r.request_bytes for r in records),
        "response_bytes": sum(r.response_bytes for r in records),
        "status": {f"{n}xx": sum(1 for r in records if r.status // 100 == n) for n in range(1, 6)},
    }


def write_share(
    url: str, records: list[RequestRecord], index: int, barrier: Any, results: Any
) -> None:
    """In a spawned process: wait for the others, then write this share of the
    history through a sink built from ``url`` (tags keep delta ids distinct)."""
    from aegis_mw.sinks import build_sink

    try:
        sink = build_sink(url)
        barrier.wait(timeout=60)
        for batch in batches(records, size=200, tag=f"p{index}"):
            sink.write(batch)
        sink.close()
    except BaseException as exc:  # reported to the test, which fails on it
        results.put((index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, "ok"))

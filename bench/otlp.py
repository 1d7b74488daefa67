"""The OTLP sink's cost per record: encoding a batch, and sending it.

Batches of ``--batch-size`` (5,000) request records over 20 label sets
(method, route template, status; a few 5xx with an exception type), with
log-normal durations, go through ``aegis_mw.sinks.otlp``:

1. encode: the histogram points folded from the records and the protobuf
   request serialized (``otlp_encode.metrics_request``), then gzipped as
   the sink sends it: µs of CPU per record, and the bytes sent per batch;
2. write: ``OtlpSink.write`` whole, POSTing to a receiver on 127.0.0.1 in
   this process (a ``ThreadingHTTPServer`` that reads the body and answers
   an empty ``ExportMetricsServiceResponse``): µs of the writing thread's
   CPU per record (the receiver's threads are not counted), and ms of wall
   time per batch.

Each part runs ``--rounds`` (7) rounds of ``--batches`` (5) batches; the
medians are printed. Usage::

    python bench/otlp.py [--rounds 7] [--batches 5] [--batch-size 5000]
"""

from __future__ import annotations

import argparse
import gzip
import math
import random
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aegis_mw.core.record import Batch, RequestRecord
from aegis_mw.sinks import otlp_encode
from aegis_mw.sinks.otlp import OtlpSink

#: (method, route, status, median ms): 20 label sets.
LABELS = [
    *((("GET", f"/api/v1/things{i}/{{id}}", 200, 8.0 + i)) for i in range(12)),
    ("GET", "/api/v1/search", 200, 45.0),
    ("POST", "/api/v1/orders", 201, 30.0),
    ("PUT", "/api/v1/orders/{id}", 200, 25.0),
    ("DELETE", "/api/v1/orders/{id}", 204, 12.0),
    ("GET", "<unmatched>", 404, 1.0),
    ("GET", "/api/v1/search", 429, 0.5),
    ("GET", "/api/v1/things0/{id}", 500, 80.0),
    ("POST", "/api/v1/orders", 503, 2000.0),
]


def make_batches(count: int, size: int, rng: random.Random) -> list[Batch]:
    out = []
    prefix = uuid.uuid4().hex[:16]
    start = time.time() - 60
    for number in range(count):
        records = []
        for i in range(size):
            method, route, status, median = LABELS[rng.randrange(len(LABELS))]
            error = "RuntimeError: upstream timeout" if status == 500 else ""
            path = route.replace("{id}", str(rng.randrange(100_000)))
            duration = rng.lognormvariate(math.log(median), 0.7)
            record = (f"{prefix}{number:04x}{i:012x}", start + i / size, method, route, path)
            records.append(
                RequestRecord(*record, status, duration, None, 0, 512, "10.0.0.1", error)
            )
        out.append(Batch(records, batch_id=f"{prefix}.{number}"))
    return out


class _Handler(BaseHTTPRequestHandler):
    answer = otlp_encode.ExportMetricsServiceResponse().SerializeToString()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def encode_round(batches: list[Batch], where: otlp_encode.Where) -> tuple[float, float]:
    """CPU µs per record, and gzipped bytes per batch."""
    sizes = []
    records = sum(len(batch) for batch in batches)
    begin = time.thread_time_ns()
    for batch in batches:
        payload = otlp_encode.metrics_request(batch.requests, [], where, 1, 2).SerializeToString()
        sizes.append(len(gzip.compress(payload, compresslevel=6, mtime=0)))
    return (time.thread_time_ns() - begin) / 1000 / records, statistics.mean(sizes)


def write_round(batches: list[Batch], sink: OtlpSink) -> tuple[float, float]:
    """Writing thread's CPU µs per record, and wall ms per batch."""
    records = sum(len(batch) for batch in batches)
    begin, wall = time.thread_time_ns(), time.perf_counter()
    for batch in batches:
        sink.write(batch)
    elapsed = time.perf_counter() - wall
    return (time.thread_time_ns() - begin) / 1000 / records, elapsed * 1000 / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=5000)
    options = parser.parse_args()
    rng = random.Random(1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        sink = OtlpSink(f"otlp+http://127.0.0.1:{server.server_address[1]}", environ={})
        where = sink._identity()
        encoded, written = [], []
        for _ in range(options.rounds):
            batches = make_batches(options.batches, options.batch_size, rng)
            encoded.append(encode_round(batches, where))
            written.append(write_round(batches, sink))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    points = len(otlp_encode.request_cells(batches[0].requests))
    print(
        f"OTLP sink, {options.batch_size} requests a batch over {points} label sets, "
        f"median of {options.rounds} rounds of {options.batches} batches"
    )
    print(
        f"  encode (fold + protobuf + gzip): {statistics.median(e[0] for e in encoded):.3f} µs "
        f"CPU/record; {statistics.median(e[1] for e in encoded):.0f} bytes gzipped a batch"
    )
    print(
        f"  write (encode + POST, 127.0.0.1): {statistics.median(w[0] for w in written):.3f} µs "
        f"CPU/record of the writing thread; {statistics.median(w[1] for w in written):.2f} ms "
        "wall a batch"
    )


if __name__ == "__main__":
    main()

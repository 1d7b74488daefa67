"""Live figures across hosts (``live_transport``): what sending its frame costs
a process, what taking every other process's frames costs the one that
answers, and how late the merged view is, over Redis and over PostgreSQL.

1. Sending. One pipeline holds a minute of traffic at ``--rate`` (5,000)
   requests/s over ``--routes`` (20) routes. Its link thread builds a frame
   (``LiveLink.frame``: the live publication, JSON) and sends it
   (``transport.send``) once a second: each timed ``--calls`` times in this
   thread's CPU time. CPU share of a core = their sum at one frame a second.
2. Fan-in. ``--senders`` (16) such frames, sent by other processes through
   the transport: received (``transport.receive``) and taken
   (``Board.offer``: their headers), as the link thread does each second;
   then the overview read with them (``Aegis.realtime``: their publications
   parsed, added up and merged) and a stream frame of every section, once a
   second while someone watches.
3. Lag. Two pipelines on the transport, default ``flush_interval`` (1 s): a
   request offered to one, timed until the other's overview counts it,
   ``--lags`` times.

Medians. Usage: ``python bench/live_transport.py [--redis URL] [--postgres URL]``
(both on this host's servers by default; ``--only redis`` for one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aegis_mw import Aegis
from aegis_mw.core.live_board import Board
from aegis_mw.realtime import protocol, sections
from aegis_mw.transports import transport_factory
from bench.live_share import ROUTES, lag_seconds, minute_of_traffic
from bench.live_share import timed as shared_timed


def timed(call: Any, calls: int) -> float:
    """Median CPU seconds of this thread (the link thread runs beside it)."""
    return shared_timed(call, calls, time.thread_time)


def measure(kind: str, url: str, args: argparse.Namespace) -> None:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    options: dict[str, Any] = {"sink": "memory://", "environ": {}, "metrics_registry": "none",
                               "live_transport": url, "live_group": group}  # fmt: skip
    worker = Aegis(**options, flush_interval=3600)
    minute_of_traffic(worker, args.rate)
    link = worker.metrics.link
    assert link is not None
    link.stop()  # its frames are built here; its thread's would mix with the bench's
    connect, _ = transport_factory(url, group)
    out, into = connect(), connect()
    frame = link.frame()
    build = timed(link.frame, args.calls)
    send = timed(lambda: out.send(link.sender, frame), args.calls)
    print(f"{kind}: sending ({args.rate:,} requests/s, a minute in the ring, {args.routes} "
          f"routes): frame built {build * 1e3:.2f} ms, sent {send * 1e3:.2f} ms CPU; "
          f"{len(frame) / 1024:.0f} KiB a frame; at one a second "
          f"{(build + send) * 100:.2f}% of a core")  # fmt: skip

    # Fan-in: the frames of --senders processes, as they arrive each second.
    reader = Aegis(**{**options, "live_group": group + "-reader"}, flush_interval=3600)
    names = [f"bench:{n}:x" for n in range(args.senders)]
    frames = [frame.replace(link.sender.encode(), name.encode(), 1) for name in names]
    into.receive(0.2)  # what the link's own frames left waiting
    receive_times, offer_times = [], []
    for _ in range(args.calls):
        for name, raw in zip(names, frames, strict=True):
            out.send(name, raw)
        got: list[bytes] = []
        started = time.thread_time()
        deadline = time.monotonic() + 10
        while len(got) < len(frames) and time.monotonic() < deadline:
            got += into.receive(1.0)
        receive_times.append(time.thread_time() - started)
        assert len(got) == len(frames), len(got)
        board = Board("reader", time.monotonic, time.time)
        started = time.thread_time()
        for raw in got:
            board.offer(raw, fresh=True)
        offer_times.append(time.thread_time() - started)
    board = Board("reader", time.monotonic, time.time)
    for raw in frames:
        board.offer(raw, fresh=True)
    reader.aggregates.peers = board.peers

    def new_frames() -> None:
        """As when every sender's next frame came: parsed again at the next read."""
        for held in board._held.values():
            held.data = None
        board._changes += 1

    def overview() -> None:
        new_frames()
        reader.realtime()

    def stream_frame() -> None:
        new_frames()
        sections.build(reader, protocol.SECTIONS)

    merged = reader.realtime().total_requests
    assert merged == args.senders * args.rate * 60, merged
    received, taken = statistics.median(receive_times), statistics.median(offer_times)
    summed, whole = timed(overview, args.calls), timed(stream_frame, args.calls)
    print(f"{kind}: fan-in of {args.senders} senders' frames: received {received * 1e3:.1f} ms, "
          f"taken {taken * 1e3:.1f} ms CPU a second (the link thread: "
          f"{(received + taken) * 100:.1f}% of a core); the overview with them "
          f"{summed * 1e3:.1f} ms, a stream frame of every section {whole * 1e3:.1f} ms "
          f"({whole * 100:.1f}% of a core while someone watches)")  # fmt: skip
    out.forget([*names, "bench"])
    for transport in (out, into):
        transport.close()
    worker.shutdown()
    reader.shutdown()

    lag_options = {**options, "live_group": group + "-lag"}
    sender, receiver = Aegis(**lag_options), Aegis(**lag_options)
    lags = lag_seconds(sender, receiver, args.lags)
    print(f"{kind}: lag, request to the other process's view: median "
          f"{statistics.median(lags) * 1e3:.0f} ms, longest {max(lags) * 1e3:.0f} ms "
          f"of {args.lags}")  # fmt: skip
    sender.shutdown()
    receiver.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--lags", type=int, default=10)
    parser.add_argument("--routes", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", choices=("redis", "postgresql"))
    args = parser.parse_args()
    ROUTES[:] = [f"/r{number}/{{id}}" for number in range(args.routes)]
    for kind, url in (("redis", args.redis), ("postgresql", args.postgres)):
        if args.only in (None, kind):
            measure(kind, url, args)


if __name__ == "__main__":
    main()

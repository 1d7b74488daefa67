"""The middleware around a trivial ASGI app: its own cost with almost no noise.

The app answers with two messages and nothing else, so the per-request time
is mostly the middleware. Rounds alternate bare/wrapped; medians reported.
Aegis's flusher is held back (long interval, big batch) and drained untimed.

    python bench/hot_path.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"ok"}


async def trivial_app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = "/items/{item_id}"
    await send(START)
    await send(BODY)


async def timing_chunk(app: Any, count: int) -> float:
    scope = {
        "type": "http", "method": "GET", "path": "/items/42", "root_path": "",
        "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 5000), "query_string": b"",
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    started = time.perf_counter()
    for _ in range(count):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / count * 1e6


async def overhead(rounds: int, chunk: int, speedups: bool) -> tuple[float, float]:
    """Median bare time and median per-round overhead, in microseconds."""
    from aegis_mw import Aegis, AegisMiddleware

    aegis = Aegis(
        sink="memory://", flush_interval=3600, batch_size=1_000_000, speedups=speedups, environ={}
    )
    wrapped = AegisMiddleware(trivial_app, aegis=aegis)
    bare_times, wrapped_times = [], []
    await timing_chunk(wrapped, chunk)
    for _ in range(rounds):
        gc.collect()
        bare_times.append(await timing_chunk(trivial_app, chunk))
        gc.collect()
        wrapped_times.append(await timing_chunk(wrapped, chunk))
        aegis.force_flush()
        aegis.sinks[0].clear()  # type: ignore[attr-defined]
    aegis.shutdown()
    differences = [w - b for w, b in zip(wrapped_times, bare_times, strict=True)]
    return statistics.median(bare_times), statistics.median(differences)


async def main(rounds: int, chunk: int) -> None:
    for speedups, label in ((True, "compiled"), (False, "pure-Python")):
        bare, extra = await overhead(rounds, chunk, speedups)
        print(
            f"trivial ASGI app: {bare:.3f} us; with AegisMiddleware ({label} path): "
            f"+{extra:.3f} us per request (median of {rounds} rounds x {chunk})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--chunk", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.chunk))

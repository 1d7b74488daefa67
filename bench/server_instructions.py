"""Instructions per request in a real server, per thread, counted by callgrind.

``bench/tail_latency.py`` finds the middleware's event loop thread costing a
saturated uvicorn a few microseconds a request more than the same request
path costs in process (``bench/overhead.py``). Either the server runs more
of our code per request than the in-process loop does, or the same code costs
more there (colder caches, more branch misses). Timings cannot tell these
apart; instruction counts can: this runs ``tail_latency.py``'s app (bare
Starlette, the ``timing`` middleware, ``AegisMiddleware`` on the default
SQLite sink) in a real ``uvicorn`` under callgrind, sends a warm-up, zeroes
the counters, sends ``--requests`` more over ``--connections`` keep-alive
connections, and reads the counts per thread: the event loop's (the request
path) and the others (the pipeline's).

The pipeline's count here is an upper bound: under callgrind the server runs
some 50 times slower, so each flush carries fewer records and its fixed costs
weigh more than at full speed.

Needs ``valgrind`` (Debian package ``valgrind``).

    python bench/server_instructions.py                      # about two minutes
    python bench/server_instructions.py --requests 8000 --variants bare aegis
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tail_latency import APP, free_port

SUMMARY = re.compile(r"^summary: (\d+)$", re.MULTILINE)
THREAD = re.compile(r"^thread: (\d+)$", re.MULTILINE)


async def one_connection(port: int, count: int, first: int) -> int:
    """``count`` GETs on one keep-alive connection, each after the last answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ok = 0
    try:
        for index in range(count):
            path = f"/items/{(first + index) % 1000}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            ok += head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    return ok


async def send(port: int, requests: int, connections: int) -> int:
    per = requests // connections
    counts = await asyncio.gather(
        *(one_connection(port, per, number * per) for number in range(connections))
    )
    return sum(counts)


def wait_ready(port: int, deadline: float) -> None:
    """Like tail_latency.py's, but a first answer under callgrind takes seconds,
    past that one's half-second socket timeout."""
    while time.monotonic() < deadline:
        try:
            if asyncio.run(send(port, 1, 1)) == 1:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"server on port {port} did not start under callgrind")


def per_thread(directory: Path, pid: int) -> dict[int, int]:
    """The dump's instruction count per thread (callgrind numbers threads from 1)."""
    counts: dict[int, int] = {}
    for path in directory.glob(f"callgrind.{pid}.1-*"):  # part 1: the dump after zeroing
        text = path.read_text(errors="replace")
        thread, summary = THREAD.search(text), SUMMARY.search(text)
        if thread and summary:
            counts[int(thread.group(1))] = int(summary.group(1))
    return counts


def measure(variant: str, requests: int, warm_up: int, connections: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        (workdir / "bench_app.py").write_text(APP)
        port = free_port()
        env = dict(
            os.environ,
            BENCH_VARIANT=variant,
            BENCH_DB=str(workdir / "aegis.db"),
            PYTHONHASHSEED="0",
            PYTHONPATH=os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
        )
        command = [
            "valgrind", "--tool=callgrind", "--separate-threads=yes",
            f"--callgrind-out-file={workdir}/callgrind.%p",
            sys.executable, "-m", "uvicorn", "bench_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        server = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_ready(port, time.monotonic() + 300)
            if (
                asyncio.run(send(port, warm_up, connections))
                != warm_up // connections * connections
            ):
                raise SystemExit(f"{variant}: the warm-up was not answered 200")
            subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True,
                           capture_output=True, timeout=120)  # fmt: skip
            answered = asyncio.run(send(port, requests, connections))
            subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True,
                           capture_output=True, timeout=120)  # fmt: skip
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=300)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        sent = requests // connections * connections
        if answered != sent:
            raise SystemExit(f"{variant}: {answered} of {sent} requests answered 200")
        counts = per_thread(workdir, server.pid)
        if 1 not in counts:
            raise SystemExit(f"{variant}: no callgrind dump of the event loop's thread")
        loop = counts.pop(1)
        return {"loop": loop / sent, "others": sum(counts.values()) / sent}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["bare", "timing", "aegis"])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warm-up", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install valgrind)")
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")
    rows = {
        variant: measure(variant, args.requests, args.warm_up, args.connections)
        for variant in args.variants
    }
    bare = rows["bare"]["loop"]
    print(
        f"\nuvicorn under callgrind, instructions per request ({args.requests} requests over"
        f" {args.connections} connections, after {args.warm_up})\n"
    )
    header = f"{'variant':22} {'event loop':>12} {'over bare':>10} {'other threads':>14}"
    print(header)
    print("-" * len(header))
    for variant, row in rows.items():
        print(
            f"{variant:22} {row['loop']:>12,.0f} {row['loop'] - bare:>+10,.0f}"
            f" {row['others']:>14,.0f}"
        )


if __name__ == "__main__":
    main()

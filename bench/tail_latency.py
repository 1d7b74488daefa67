"""Tail latency and server CPU under HTTP load: a bare Starlette app beside
the same app with AegisMiddleware (default SQLite sink, every request stored),
with starlette_exporter, and with the cheapest pure ASGI middleware there is
(``timing``: a clock read and two additions), the floor any middleware pays in
a real server.

Each variant is a real ``uvicorn`` server (one worker, its defaults: uvloop
and httptools where installed) pinned to CPU 0; ``wrk`` runs pinned to CPU 1,
so the server has one core to itself and the load generator the other. All
servers start together and stay up; rounds run each variant once, in rotating
order, so slow drifts of the machine hit every variant alike. Reported per
variant, as the median over rounds: requests/s, the server's CPU time per
request (utime + stime from /proc, so the background pipeline is charged to
the variant), split into the event loop's thread and the others, wrk's latency
percentiles, the server's garbage collections (young, middle, full, and
the longest, from ``gc.callbacks``), and its context switches per 1,000
requests (from /proc): the event loop's thread preempted (involuntary), and
the other threads' sleeps and waits (voluntary), which the pipeline's pauses
and the GIL's hand-overs show up as.

Two loads:

- **saturation**: ``-c 32`` connections as fast as the server answers;
- **paced** (``--paced 0.5``): about half of bare's saturated rate, each
  connection waiting a fixed delay between a response and its next request
  (wrk's ``delay()``), so queueing is not what the percentiles measure: what
  the middleware adds to a request's own latency is.

    python bench/tail_latency.py                  # 6 rounds of 8 s per load
    python bench/tail_latency.py --rounds 3 --seconds 4 --no-paced   # quick look
    python bench/tail_latency.py --other-tree ../aegis-before   # beside another commit
    python bench/tail_latency.py --alt-options '{"sink": "memory://"}'  # beside other options
    python bench/tail_latency.py --alt-options '{}' --alt-pipeline-cpu 1  # pipeline on wrk's core

``--alt-pipeline-cpu`` moves the ``aegis_alt`` server's other threads (the
flusher's and the sinks') to another CPU once it is warm, so the event loop
has its core to itself: what the loop's thread then costs is the request
path's own share, without the pipeline beside it.

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``) and two CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

APP = textwrap.dedent(
    """
    import gc
    import os
    import time

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    # Garbage collections in the server (any thread): per generation, count,
    # seconds and the longest, read and reset by the bench after each round.
    collections = [[0, 0.0, 0.0] for _ in range(3)]
    started = [0.0]


    def watch(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
            return
        seconds = time.perf_counter() - started[0]
        entry = collections[info["generation"]]
        entry[0] += 1
        entry[1] += seconds
        entry[2] = max(entry[2], seconds)


    gc.callbacks.append(watch)


    async def item(request):
        return PlainTextResponse("ok")


    async def read_collections(request):
        data = [list(entry) for entry in collections]
        for entry in collections:
            entry[:] = [0, 0.0, 0.0]
        return JSONResponse(data)


    app = Starlette(
        routes=[Route("/items/{item_id}", item), Route("/_bench/collections", read_collections)]
    )
    variant = os.environ["BENCH_VARIANT"]
    if variant == "aegis":
        import json

        from aegis_mw import AegisMiddleware

        options = {"sink": "sqlite:///" + os.environ["BENCH_DB"]}
        options.update(json.loads(os.environ.get("BENCH_AEGIS_OPTIONS") or "{}"))
        app.add_middleware(AegisMiddleware, **options)
    elif variant == "starlette_exporter":
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware)
    elif variant == "timing":

        # The cheapest useful pure ASGI middleware, a clock read and two
        # additions: what any middleware costs a real server.
        class Timing:
            def __init__(self, app):
                self.app = app
                self.count = 0
                self.total = 0.0

            async def __call__(self, scope, receive, send):
                start = time.perf_counter()
                await self.app(scope, receive, send)
                self.count += 1
                self.total += time.perf_counter() - start

        app.add_middleware(Timing)
    """
)

WRK_SCRIPT = textwrap.dedent(
    """
    local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
    local counter = 0
    request = function()
      counter = counter + 1
      return wrk.format("GET", "/items/" .. (counter % 1000))
    end
    if delay_ms > 0 then
      delay = function() return delay_ms end
    end
    done = function(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        'BENCH {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,' ..
        '"p50":%d,"p99":%d,"p999":%d,"max":%d}\\n',
        summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
        e.status, latency:percentile(50), latency:percentile(99),
        latency:percentile(99.9), latency.max))
    end
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """utime + stime of one process (all its threads), or of one of its threads,
    in seconds."""
    where = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> tuple[int, int]:
    """The main thread's involuntary context switches, and the voluntary ones
    of all the other threads (a thread that ended meanwhile is not counted)."""
    loop_preempted = others_waited = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        except OSError:  # the thread ended
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(task) == pid:
            loop_preempted = int(fields["nonvoluntary_ctxt_switches"])
        else:
            others_waited += int(fields["voluntary_ctxt_switches"])
    return loop_preempted, others_waited


def pin_other_threads(pid: int, cpu: int) -> None:
    """Every thread of the server but its main one (the event loop's) onto ``cpu``."""
    for task in os.listdir(f"/proc/{pid}/task"):
        if int(task) != pid:
            os.sched_setaffinity(int(task), {cpu})


def read_collections(port: int) -> list[list[float]]:
    """The server's garbage collections since the last read: per generation,
    [count, seconds, longest]; the read resets them."""
    url = f"http://127.0.0.1:{port}/_bench/collections"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not start")


def start_server(
    variant: str, workdir: Path, other_tree: Path | None = None, alt_options: str = ""
) -> tuple[subprocess.Popen[bytes], int]:
    """``aegis_other`` runs the aegis app on the aegis_mw of ``other_tree``
    (a checkout of another commit, its extension built or copied in);
    ``aegis_alt`` runs it with ``alt_options`` (JSON: AegisMiddleware's
    keyword arguments over the default SQLite sink)."""
    port = free_port()
    app_variant = "aegis" if variant in ("aegis_other", "aegis_alt") else variant
    env = dict(os.environ, BENCH_VARIANT=app_variant, BENCH_DB=str(workdir / f"{variant}.db"))
    env["BENCH_AEGIS_OPTIONS"] = alt_options if variant == "aegis_alt" else ""
    paths = [str(workdir), env.get("PYTHONPATH", "")]
    if variant == "aegis_other" and other_tree is not None:
        paths.insert(0, str(other_tree))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    command = [
        "taskset", "-c", "0", sys.executable, "-m", "uvicorn", "bench_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=workdir, start_new_session=True)
    wait_ready(port, time.monotonic() + 30)
    return server, port


def run_wrk(port: int, seconds: float, connections: int, delay_ms: int, script: Path) -> dict:
    env = dict(os.environ, BENCH_DELAY_MS=str(delay_ms))
    command = [
        "taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise SystemExit(f"wrk gave no summary:\n{out.stdout}\n{out.stderr}")


def measure(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]],
    *,
    rounds: int,
    seconds: float,
    connections: int,
    delay_ms: int,
    script: Path,
) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    names = list(servers)
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            server, port = servers[name]
            read_collections(port)
            before = cpu_seconds(server.pid)
            # The server's main thread runs the event loop (and the request
            # path); the rest of its CPU is in other threads (the pipeline's).
            loop_before = cpu_seconds(server.pid, server.pid)
            switches_before = context_switches(server.pid)
            summary = run_wrk(port, seconds, connections, delay_ms, script)
            # The pipeline's work for the last requests lands within a flush
            # interval: wait it out so the round is charged for all of it.
            time.sleep(1.5)
            cpu = cpu_seconds(server.pid) - before
            loop_cpu = cpu_seconds(server.pid, server.pid) - loop_before
            preempted, waited = (
                after - before
                for after, before in zip(context_switches(server.pid), switches_before, strict=True)
            )
            collected = read_collections(port)
            requests = summary["requests"]
            if summary["errors"] or summary["non2xx"]:
                raise SystemExit(f"{name}: wrk saw errors: {summary}")
            results[name].append(
                {
                    "rps": requests / (summary["duration_us"] / 1e6),
                    "cpu_us": cpu / requests * 1e6,
                    "loop_cpu_us": loop_cpu / requests * 1e6,
                    "loop_preempted_per_k": preempted / requests * 1000,
                    "others_waited_per_k": waited / requests * 1000,
                    "young_gcs": collected[0][0],
                    "middle_gcs": collected[1][0],
                    "full_gcs": collected[2][0],
                    "longest_gc_ms": max(entry[2] for entry in collected) * 1000,
                    "p50_ms": summary["p50"] / 1000,
                    "p99_ms": summary["p99"] / 1000,
                    "p999_ms": summary["p999"] / 1000,
                    "max_ms": summary["max"] / 1000,
                }
            )
            print(
                f"  round {round_index + 1} {name:20s} " + format_row(results[name][-1]), flush=True
            )
    return results


def format_row(row: dict[str, float]) -> str:
    return (
        f"{row['rps']:8.0f} req/s  {row['cpu_us']:6.1f} µs CPU/req "
        f"({row['loop_cpu_us']:.1f} loop)  p50 {row['p50_ms']:6.2f}  "
        f"p99 {row['p99_ms']:6.2f}  p99.9 {row['p999_ms']:6.2f}  max {row['max_ms']:7.2f} ms  "
        f"gc {row['young_gcs']:.0f}/{row['middle_gcs']:.0f}/{row['full_gcs']:.0f} "
        f"longest {row['longest_gc_ms']:.1f} ms  "
        f"switches/1k {row['loop_preempted_per_k']:.1f}/{row['others_waited_per_k']:.1f}"
    )


def summarize(title: str, results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    medians = {
        name: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        for name, rows in results.items()
    }
    bare = medians["bare"]
    print(f"\n{title} (medians of {len(results['bare'])} rounds)")
    print(f"{'variant':20s} {'req/s':>8s} {'ratio':>6s} {'CPU µs/req':>11s} {'Δ CPU':>7s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'p99 x':>6s} {'p99.9 ms':>9s} {'Δ p99.9':>8s}")  # fmt: skip
    for name, row in medians.items():
        print(
            f"{name:20s} {row['rps']:8.0f} {row['rps'] / bare['rps']:6.2f} {row['cpu_us']:11.1f} "
            f"{row['cpu_us'] - bare['cpu_us']:+7.1f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} "
            f"{row['p99_ms'] / bare['p99_ms']:6.2f} {row['p999_ms']:9.2f} "
            f"{row['p999_ms'] - bare['p999_ms']:+8.2f}"
        )
    print(f"\n{'':20s} {'loop thread':>11s} {'other threads':>13s}   "
          f"collections per round (young/middle/full, longest)   "
          f"per 1k requests: loop preempted, others waited")  # fmt: skip
    for name, row in medians.items():
        collections = (
            f"{row['young_gcs']:.0f}/{row['middle_gcs']:.0f}/{row['full_gcs']:.0f}, "
            f"{row['longest_gc_ms']:.1f} ms"
        )
        print(
            f"{name:20s} {row['loop_cpu_us']:8.1f} µs {row['cpu_us'] - row['loop_cpu_us']:10.1f} µs   "
            f"{collections:51s} {row['loop_preempted_per_k']:8.1f} {row['others_waited_per_k']:8.1f}"
        )
    return {"medians": medians, "rounds": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--paced", type=float, default=0.5, help="fraction of bare's rate")
    parser.add_argument("--no-paced", dest="paced", action="store_const", const=0.0)
    parser.add_argument("--delay-ms", type=int, default=5, help="paced: per-connection delay")
    parser.add_argument(
        "--variants", nargs="+", default=["bare", "timing", "aegis", "starlette_exporter"]
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--alt-options",
        default="",
        help="also run the aegis app with these AegisMiddleware options (JSON, over the "
        "default SQLite sink; variant aegis_alt): options compared in one run",
    )
    parser.add_argument(
        "--alt-pipeline-cpu",
        type=int,
        help="with --alt-options: run the aegis_alt server's background threads on this CPU "
        "(its event loop keeps CPU 0)",
    )
    parser.add_argument(
        "--other-tree",
        type=Path,
        help="also run the aegis app on the aegis_mw in this directory (variant aegis_other): "
        "a before-and-after comparison in one run",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset")
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")
    if args.other_tree is not None and "aegis_other" not in args.variants:
        args.variants.append("aegis_other")
    if args.alt_pipeline_cpu is not None and not args.alt_options:
        raise SystemExit("--alt-pipeline-cpu needs --alt-options (use '{}' for the defaults)")
    if args.alt_options:
        if not isinstance(json.loads(args.alt_options), dict):
            raise SystemExit("--alt-options: a JSON object of AegisMiddleware options")
        if "aegis_alt" not in args.variants:
            args.variants.append("aegis_alt")
    workdir = Path(tempfile.mkdtemp(prefix="aegis-tail-"))
    (workdir / "bench_app.py").write_text(APP)
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    report: dict[str, Any] = {}
    try:
        for name in args.variants:
            servers[name] = start_server(name, workdir, args.other_tree, args.alt_options)
        for _, port in servers.values():  # warm up: imports, caches, first flush
            run_wrk(port, 2, args.connections, 0, script)
        if args.alt_pipeline_cpu is not None:
            pin_other_threads(servers["aegis_alt"][0].pid, args.alt_pipeline_cpu)
        print(f"saturation: wrk -c{args.connections}, {args.seconds:g} s rounds")
        saturated = measure(
            servers, rounds=args.rounds, seconds=args.seconds,
            connections=args.connections, delay_ms=0, script=script,
        )  # fmt: skip
        report["saturation"] = summarize("saturation", saturated)
        if args.paced > 0:
            rate = report["saturation"]["medians"]["bare"]["rps"] * args.paced
            connections = max(1, round(rate * args.delay_ms / 1000))
            print(
                f"\npaced: about {rate:.0f} req/s ({args.paced:g} of bare's), "
                f"{connections} connections each waiting {args.delay_ms} ms between requests"
            )
            paced = measure(
                servers, rounds=args.rounds, seconds=args.seconds,
                connections=connections, delay_ms=args.delay_ms, script=script,
            )  # fmt: skip
            report["paced"] = summarize("paced", paced)
    finally:
        for server, _ in servers.values():
            os.killpg(server.pid, signal.SIGINT)
        for server, _ in servers.values():
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

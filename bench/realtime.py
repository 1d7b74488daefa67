"""/ws/metrics with many listeners: what 500 subscribed clients at 1 Hz cost the
server, and what they do to the app's request latency.

The target: 500 subscribed clients at 1 Hz cost under 10% of one core for the
broadcasting, and the app's request latency with them connected stays within
5% of without.

One uvicorn process (one worker, ``--no-access-log``, the HTTP and WebSocket
implementations uvicorn picks itself) serves ``tests.realtime.ws_app:app``, a
small Starlette app under ``AegisMiddleware(sink="memory://")``, on a socket
bound to 127.0.0.1 here and handed over with ``--fd``. TCP_NODELAY is set on
that socket and the connections inherit it: uvicorn takes an ``--fd`` socket
for a Unix one and leaves Nagle on, and each response (headers and body in two
writes) would wait ~40 ms for the client's delayed ACK. The options come from
``AEGIS_*`` variables: ``AEGIS_UPDATE_INTERVAL`` (``--interval``, 1000 ms) and
the connection limits, raised so that ``--clients`` connections from one
address are allowed. The same server serves every round.

Each round compares two states, in alternating order (idle first in the
first round, clients first in the second, and so on):

- idle: nobody connected to /ws/metrics;
- clients: ``--clients`` (500) connections opened by a separate process with
  the ``websockets`` asyncio client (50 handshakes at a time, no client
  pings, permessage-deflate offered as browsers do unless
  ``--no-compression``), each keeping the default subscription (overview +
  alerts) and reading and discarding its frames, acknowledging every
  ``--ack-every`` (2) messages as the dashboard page does (0: never). Every
  client must receive ``hello`` first. Measuring starts 3 s after the last handshake.

In each state:

1. Broadcast cost. The server's CPU time (utime + stime of all its threads,
   from /proc/<pid>/stat) over ``--window`` (20) seconds, as % of one core.
   The broadcasting's cost is clients minus idle in the same round. Over the
   same window the clients' process counts what each client received: frames
   per second in total against clients / interval, the fewest and most per
   client, ticks missed (a gap of more than 1.5 intervals between two frames)
   and how long after its tick each frame was read (ticks are multiples of
   the interval on the monotonic clock, which processes share on Linux; the
   figure includes the clients' own process working through 500 sockets).
2. Request latency, after the window, clients still connected. A separate
   process sends ``--requests`` (20,000, a few seconds: several ticks)
   sequential ``GET /ok`` over one keep-alive connection (a raw socket, the
   request bytes prepared once, 200 untimed requests first, GC off) and times
   each from the send to the last byte of the body (``wrk`` is not used: it
   reports a few percentiles of a timed run, not each of a fixed count of
   requests). Reported per state: median and p99 over every round's requests
   together, and the ratio of the medians.

Verdicts: the broadcast cost (median over rounds of clients minus idle)
under 10% of one core; the median latency with clients within 5% of the
median without. Linux only (/proc). Every wait has a deadline, and the
child processes are killed on the way out, on errors, Ctrl-C or SIGTERM too.

    python bench/realtime.py                  # 3 rounds of 20 s windows, about 3 minutes
    python bench/realtime.py --quick          # 1 round, 8 s windows, 5,000 requests: 30 s
    python bench/realtime.py --clients 1000 --interval 500 --no-compression
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import http.client
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import queue
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.realtime.ws_app:app"
WS_PATH = "/ws/metrics"
HELLO_PREFIX = '{"type":"hello"'
METRICS_PREFIX = '{"type":"metrics"'
REQUEST = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-realtime\r\n\r\n"
TARGET_CPU_PERCENT = 10.0
TARGET_LATENCY_RATIO = 1.05
CONNECT_AT_ONCE = 50
#: The app's access token the server is given and the clients send.
BENCH_TOKEN = "realtime-bench-token"
HANDSHAKE_TIMEOUT = 15.0  # one client's handshake, then its hello
CONNECT_DEADLINE = 120.0  # all the clients' handshakes
STARTUP_TIMEOUT = 60.0
REPLY_TIMEOUT = 30.0  # a child's answer to one command
EXIT_TIMEOUT = 15.0
COMMAND_TIMEOUT = 900.0  # the clients' process waits this long for a command, at most
MAX_COMMANDS = 1000
SETTLE_SECONDS = 3.0
WARMUP_REQUESTS = 200
LOAD_DEADLINE = 120.0  # the load process gives up after this long
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- small helpers --------------------------------------------------------------------
def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[min(index, len(ordered) - 1)]


def emit(message: dict[str, Any]) -> None:
    """One JSON line to the parent."""
    print(json.dumps(message), flush=True)


def version_of(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- the clients' process -------------------------------------------------------------
@dataclass
class Client:
    """One /ws/metrics connection and what it received."""

    ws: Any = None
    error: str = ""
    closed: str = ""
    frames: int = 0
    chars: int = 0
    other: int = 0
    last: float = 0.0
    missed: int = 0
    max_gap: float = 0.0
    mark_frames: int = 0
    mark_chars: int = 0
    mark_missed: int = 0
    acked: int = 0


@dataclass
class Crowd:
    """Every client of the process, and the window being counted."""

    interval: float
    clients: list[Client]
    ack_every: int = 0
    delays: list[float] = field(default_factory=list)
    mark_time: float = 0.0
    mark_cpu: float = 0.0
    quitting: bool = False

    @property
    def live(self) -> list[Client]:
        return [client for client in self.clients if client.ws is not None]

    def mark(self) -> None:
        for client in self.clients:
            client.mark_frames, client.mark_chars = client.frames, client.chars
            client.mark_missed, client.max_gap = client.missed, 0.0
        self.delays = []
        self.mark_time, self.mark_cpu = time.monotonic(), time.process_time()

    def report(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.mark_time
        live = self.live
        frames = [client.frames - client.mark_frames for client in live]
        missed = [client.missed - client.mark_missed for client in live]
        chars = sum(client.chars - client.mark_chars for client in live)
        delays = sorted(self.delays)
        return {
            "elapsed": elapsed,
            "cpu_percent": (time.process_time() - self.mark_cpu) / elapsed * 100,
            "clients": len(live),
            "open": sum(1 for client in live if not client.closed),
            "frames": sum(frames),
            "fewest": min(frames, default=0),
            "most": max(frames, default=0),
            "missed_ticks": sum(missed),
            "clients_missing": sum(1 for count in missed if count),
            "max_gap": max((client.max_gap for client in live), default=0.0),
            "frame_chars": chars / sum(frames) if sum(frames) else 0.0,
            "delay_p50": percentile(delays, 0.50),
            "delay_p99": percentile(delays, 0.99),
            "delay_max": delays[-1] if delays else 0.0,
            "other_messages": sum(client.other for client in live),
            "closed": dict(collections.Counter(c.closed for c in live if c.closed)),
        }


def describe(exc: BaseException) -> str:
    from websockets.exceptions import ConnectionClosed

    if isinstance(exc, ConnectionClosed):
        received = exc.rcvd
        if received is None:
            return "closed without a close frame"
        return f"closed {received.code} {received.reason}".strip()
    return f"{type(exc).__name__}: {exc}"[:160]


async def open_client(uri: str, client: Client, gate: asyncio.Semaphore, compression: bool) -> None:
    """Connect and read ``hello``; on failure, say why in ``client.error``."""
    from websockets.asyncio.client import connect

    async with gate:
        try:
            ws = await connect(
                uri,
                open_timeout=HANDSHAKE_TIMEOUT,
                ping_interval=None,
                close_timeout=5,
                compression="deflate" if compression else None,
                proxy=None,
                max_size=1 << 22,
                # The stream is private by default: the clients hold the app's token.
                additional_headers={"Authorization": f"Bearer {BENCH_TOKEN}"},
            )
        except Exception as exc:
            client.error = describe(exc)
            return
        try:
            first = await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT)
        except Exception as exc:
            client.error = describe(exc)
            await ws.close()
            return
        if not (isinstance(first, str) and first.startswith(HELLO_PREFIX)):
            client.error = f"first message is not hello: {first[:60]!r}"
            await ws.close()
            return
        client.ws = ws


async def read_frames(crowd: Crowd, client: Client) -> None:
    """Receive and discard, counting frames, gaps and delays after the tick."""
    interval = crowd.interval
    ack_every = crowd.ack_every
    ws = client.ws
    try:
        async for message in ws:
            now = time.monotonic()
            if ack_every and isinstance(message, str):
                # seq is every message's last key: '..., "seq":41}'
                seq = int(message[message.rindex(":") + 1 : -1])
                if seq - client.acked >= ack_every:
                    client.acked = seq
                    await ws.send(f'{{"type":"ack","data":{seq}}}')
            if isinstance(message, str) and message.startswith(METRICS_PREFIX):
                if client.last:
                    gap = now - client.last
                    client.max_gap = max(client.max_gap, gap)
                    if gap > 1.5 * interval:
                        client.missed += round(gap / interval) - 1
                client.last = now
                client.frames += 1
                client.chars += len(message)
                crowd.delays.append(now % interval)
            else:
                client.other += 1
    except Exception as exc:
        if not crowd.quitting:
            client.closed = describe(exc)
        return
    if not crowd.quitting:
        client.closed = f"closed {ws.close_code} {ws.close_reason or ''}".strip()


async def crowd_main(
    port: int, count: int, interval: float, compression: bool, ack_every: int
) -> None:
    """Open ``count`` clients, then answer ``mark``/``report``/``quit`` on stdin."""
    uri = f"ws://127.0.0.1:{port}{WS_PATH}"
    crowd = Crowd(interval, [Client() for _ in range(count)], ack_every=ack_every)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    started = time.monotonic()
    opening = [open_client(uri, client, gate, compression) for client in crowd.clients]
    try:
        await asyncio.wait_for(asyncio.gather(*opening), CONNECT_DEADLINE)
    except asyncio.TimeoutError:
        for client in crowd.clients:
            if client.ws is None and not client.error:
                client.error = f"not connected within {CONNECT_DEADLINE:.0f} s"
    live = crowd.live
    extensions = collections.Counter(
        client.ws.response.headers.get("Sec-WebSocket-Extensions", "none") for client in live
    )
    errors = collections.Counter(client.error for client in crowd.clients if client.error)
    emit(
        {
            "connected": len(live),
            "failed": count - len(live),
            "errors": dict(errors.most_common(5)),
            "seconds": time.monotonic() - started,
            "extensions": dict(extensions),
        }
    )
    readers = [asyncio.create_task(read_frames(crowd, client)) for client in live]
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    crowd.mark()
    for _ in range(MAX_COMMANDS):
        try:
            line = await asyncio.wait_for(commands.readline(), COMMAND_TIMEOUT)
        except asyncio.TimeoutError:
            break
        command = line.decode().strip()
        if command == "mark":
            crowd.mark()
            emit({"marked": True})
        elif command == "report":
            emit(crowd.report())
        else:  # "quit", or the parent went away
            break
    closed_by_server = collections.Counter(client.closed for client in live if client.closed)
    crowd.quitting = True
    closing = asyncio.gather(*(client.ws.close() for client in live), return_exceptions=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(closing, EXIT_TIMEOUT)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    emit({"closed_by_server": dict(closed_by_server), "frames": sum(c.frames for c in live)})


# -- the load process -----------------------------------------------------------------
def fetch(sock: socket.socket) -> None:
    """One ``GET /ok`` on a keep-alive connection, read to the last byte of the body."""
    sock.sendall(REQUEST)
    data = b""
    header_end = -1
    length = -1
    for _ in range(1000):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
        if header_end < 0:
            header_end = data.find(b"\r\n\r\n")
            if header_end < 0:
                continue
            head = data[:header_end].split(b"\r\n")
            if head[0][9:12] != b"200":
                raise ConnectionError(f"unexpected response {head[0]!r}")
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length < 0:
                raise ConnectionError("a response without content-length")
        if len(data) >= header_end + 4 + length:
            return
    raise ConnectionError("a response that does not end")


def load_main(port: int, requests: int) -> None:
    """``requests`` sequential timed ``GET /ok``; their latencies (µs) as JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(WARMUP_REQUESTS):
            fetch(sock)
        latencies: list[float] = []
        deadline = time.monotonic() + LOAD_DEADLINE
        clock = time.perf_counter_ns
        gc.collect()
        gc.disable()
        try:
            for _ in range(requests):
                start = clock()
                fetch(sock)
                latencies.append((clock() - start) / 1000)
                if time.monotonic() > deadline:
                    break
        finally:
            gc.enable()
    emit({"latencies": [round(value, 1) for value in latencies]})


# -- the parent: processes ------------------------------------------------------------
class Lines:
    """A child's output line by line, drained by a thread (the child never blocks
    on a full pipe), read with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line; None at the end of the output; TimeoutError after ``timeout``."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output for {timeout:.0f} s") from None
        if line is not None:
            self.seen.append(line)
        return line

    def rest(self, timeout: float = 1.0) -> list[str]:
        """Every line so far (waiting up to ``timeout`` for the end of the output)."""
        self._thread.join(timeout)
        with contextlib.suppress(TimeoutError):
            for _ in range(100_000):
                if self.next(0.01) is None:
                    break
        return self.seen


class Children:
    """Child processes started here; :meth:`close` kills those still running."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, command: list[str], **options: Any) -> subprocess.Popen[str]:
        process = subprocess.Popen(command, text=True, **options)
        self.processes.append(process)
        return process

    def close(self) -> None:
        # No Ctrl-C in the middle of this: every child must go.
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            for process in reversed(self.processes):
                if process.poll() is None:
                    process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(EXIT_TIMEOUT)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def child_command(role: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *args]


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    log: Lines
    command: str


def server_environment(interval_ms: int, clients: int) -> tuple[dict[str, str], dict[str, str]]:
    """The environment without ``AEGIS_*`` variables, the repository on the path,
    and the options set here (also returned on their own, to print)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    per_client = min(100_000, max(1000, 2 * clients))
    options = {
        "AEGIS_UPDATE_INTERVAL": str(interval_ms),
        "AEGIS_WS_MAX_CONNECTIONS_PER_CLIENT": str(per_client),
        "AEGIS_WS_MAX_CONNECTIONS": str(max(2000, 2 * per_client)),
        "AEGIS_ACCESS_TOKEN": BENCH_TOKEN,
    }
    env.update(options)
    return env, options


def get_ok(port: int, timeout: float) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/ok")
        response = connection.getresponse()
        return response.status == 200 and response.read() == b"ok"
    except OSError:
        return False
    finally:
        connection.close()


def start_server(children: Children, workdir: str, interval_ms: int, clients: int) -> Server:
    """uvicorn on a socket bound to 127.0.0.1 here, answering ``GET /ok``."""
    env, options = server_environment(interval_ms, clients)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # uvicorn wraps --fd as an AF_UNIX socket, so asyncio does not set
        # TCP_NODELAY on the connections; Linux passes it on from the listener.
        # Without it, every response (headers and body in two writes) waits
        # ~40 ms for the client's delayed ACK.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(2048)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        arguments = [APP, "--fd", str(fd), "--workers", "1", "--no-access-log",
                     "--log-level", "warning"]  # fmt: skip
        process = children.start(
            [sys.executable, "-m", "uvicorn", *arguments],
            cwd=workdir,
            env=env,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    finally:
        listener.close()  # the child holds its own copy
    assert process.stdout is not None
    log = Lines(process.stdout)
    settings = " ".join(f"{name}={value}" for name, value in options.items())
    server = Server(process, port, log, f"{settings} uvicorn {' '.join(arguments)}")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = "\n".join(log.rest())
            raise RuntimeError(f"uvicorn exited with {process.returncode}:\n{output}")
        if get_ok(port, 5.0):
            return server
        time.sleep(0.2)
    raise RuntimeError(f"uvicorn did not answer GET /ok within {STARTUP_TIMEOUT:.0f} s")


class ClientsProcess:
    """The process holding the /ws/metrics clients, driven over its stdin."""

    def __init__(self, children: Children, port: int, args: argparse.Namespace) -> None:
        options = [
            "--port", str(port), "--clients", str(args.clients),
            "--interval", str(args.interval), "--ack-every", str(args.ack_every),
        ]  # fmt: skip
        if args.no_compression:
            options.append("--no-compression")
        self.process = children.start(
            child_command("clients", *options),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.out = Lines(self.process.stdout)
        self.err = Lines(self.process.stderr)
        self.ready = self.answer(CONNECT_DEADLINE + 2 * HANDSHAKE_TIMEOUT + REPLY_TIMEOUT)

    def answer(self, timeout: float) -> dict[str, Any]:
        line = self.out.next(timeout)
        if line is None:
            errors = "\n".join(self.err.rest())
            raise RuntimeError(f"the clients' process ended:\n{errors}")
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, command: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.answer(timeout)

    def stop(self) -> dict[str, Any]:
        summary = self.send("quit", EXIT_TIMEOUT + REPLY_TIMEOUT)
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(EXIT_TIMEOUT)
        return summary


def run_load(children: Children, port: int, requests: int) -> list[float]:
    """Latencies (µs) of ``requests`` sequential ``GET /ok`` from a separate process."""
    process = children.start(
        child_command("load", "--port", str(port), "--requests", str(requests)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(timeout=LOAD_DEADLINE + 60)
    if process.returncode != 0:
        raise RuntimeError(f"the load process failed ({process.returncode}):\n{err}")
    latencies: list[float] = json.loads(out)["latencies"]
    if len(latencies) < requests:
        print(f"  note: only {len(latencies)} of {requests} requests within {LOAD_DEADLINE:.0f} s")
    return latencies


# -- the parent: measuring ------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_percent(pid: int, seconds: float) -> float:
    """The CPU time ``pid`` takes over the next ``seconds``, as % of one core."""
    cpu, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - started) * 100


@dataclass
class State:
    """One state of one round."""

    cpu: float
    rss: float
    latencies: list[float]
    frames: dict[str, Any] | None = None
    ready: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None


def latency_text(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return (
        f"GET /ok median {percentile(ordered, 0.5):.0f} µs, "
        f"p99 {percentile(ordered, 0.99):.0f} µs ({len(ordered)})"
    )


def frames_text(ready: dict[str, Any], frames: dict[str, Any], interval: float) -> str:
    expected = frames["clients"] / interval
    text = (
        f"{ready['connected']}/{ready['connected'] + ready['failed']} connected in "
        f"{ready['seconds']:.1f} s; {frames['frames'] / frames['elapsed']:.1f} frames/s "
        f"(expected {expected:.1f}), {frames['fewest']}-{frames['most']} per client, "
        f"{frames['frame_chars']:.0f} chars each, missed ticks {frames['missed_ticks']} "
        f"({frames['clients_missing']} clients), longest gap {frames['max_gap']:.2f} s; "
        f"read after tick p50 {frames['delay_p50'] * 1000:.0f} ms, "
        f"p99 {frames['delay_p99'] * 1000:.0f} ms, max {frames['delay_max'] * 1000:.0f} ms; "
        f"clients' process CPU {frames['cpu_percent']:.1f}%"
    )
    negotiated = "; ".join(f"{count} x {name}" for name, count in ready["extensions"].items())
    text += f"; extensions: {negotiated or 'none'}"
    if ready["errors"]:
        text += f"; connect errors {ready['errors']}"
    if frames["closed"] or frames["open"] != frames["clients"]:
        text += f"; closed by the server {frames['closed']}"
    if frames["other_messages"]:
        text += f"; {frames['other_messages']} other messages"
    return text


def measure(
    children: Children, server: Server, args: argparse.Namespace, with_clients: bool
) -> State:
    pid = server.process.pid
    if not with_clients:
        cpu = cpu_percent(pid, args.window)
        rss = rss_mb(pid)
        return State(cpu, rss, run_load(children, server.port, args.requests))
    crowd = ClientsProcess(children, server.port, args)
    try:
        time.sleep(SETTLE_SECONDS)
        crowd.send("mark")
        cpu = cpu_percent(pid, args.window)
        frames = crowd.send("report")
        rss = rss_mb(pid)
        latencies = run_load(children, server.port, args.requests)
        summary = crowd.stop()
    finally:
        if crowd.process.poll() is None:
            crowd.process.kill()
    time.sleep(SETTLE_SECONDS)  # the server lets the connections go
    return State(cpu, rss, latencies, frames, crowd.ready, summary)


def environment_lines(args: argparse.Namespace, server: Server) -> list[str]:
    import uvicorn.protocols.http.auto
    import uvicorn.protocols.websockets.auto

    http_impl = uvicorn.protocols.http.auto.AutoHTTPProtocol.__name__
    ws_class = uvicorn.protocols.websockets.auto.AutoWebSocketsProtocol
    ws_impl = ws_class.__name__ if ws_class is not None else "none"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                      if line.startswith("model name")), "")  # fmt: skip
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    program = Path(sys.argv[0]).as_posix()
    if Path(program).is_absolute():
        program = "bench/realtime.py"
    return [
        f"command: {shlex.join(['python', program, *sys.argv[1:]])}",
        f"machine: {platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs ({usable} usable){', ' + model if model else ''}",
        f"python {platform.python_version()}; uvicorn {version_of('uvicorn')} "
        f"({http_impl}, {ws_impl}, {loop} loop); websockets {version_of('websockets')}; "
        f"starlette {version_of('starlette')}; aegis_mw {version_of('aegis_mw')}",
        f"server: {server.command}",
        f"plan: {args.rounds} round(s); {args.clients} clients at {args.interval} ms "
        f"(permessage-deflate {'not offered' if args.no_compression else 'offered'}; "
        f"acks {f'every {args.ack_every} messages' if args.ack_every else 'never'}); "
        f"{args.window:g} s CPU windows; {args.requests} GET /ok per state",
    ]


def run(args: argparse.Namespace) -> None:
    interval = args.interval / 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.clients + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    children = Children()
    rounds: list[dict[str, State]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="aegis-realtime-") as workdir:
            server = start_server(children, workdir, args.interval, args.clients)
            print("/ws/metrics: broadcast cost and request latency")
            print("\n".join(environment_lines(args, server)))
            run_load(children, server.port, 2000)  # warm up, untimed
            time.sleep(SETTLE_SECONDS)
            for number in range(args.rounds):
                order = ("idle", "clients") if number % 2 == 0 else ("clients", "idle")
                print(f"\nround {number + 1}/{args.rounds} ({' then '.join(order)})")
                states: dict[str, State] = {}
                for name in order:
                    state = states[name] = measure(children, server, args, name == "clients")
                    line = (
                        f"  {name + ':':8} server CPU {state.cpu:.2f}% of one core, "
                        f"RSS {state.rss:.0f} MB; {latency_text(state.latencies)}"
                    )
                    if state.frames is not None and state.ready is not None:
                        line += f"\n           {frames_text(state.ready, state.frames, interval)}"
                    if state.summary and state.summary["closed_by_server"]:
                        closed = state.summary["closed_by_server"]
                        line += f"\n           closed by the server before the end: {closed}"
                    print(line, flush=True)
                cost = states["clients"].cpu - states["idle"].cpu
                print(f"  broadcast cost: {cost:.2f}% of one core")
                rounds.append(states)
            if server.process.poll() is not None:
                print(f"\nnote: the server exited with {server.process.returncode}")
            children.close()
            log = [line for line in server.log.rest() if line.strip()]
    finally:
        children.close()
    summarize(rounds, log, args)


def summarize(rounds: list[dict[str, State]], log: list[str], args: argparse.Namespace) -> None:
    idle_cpu = [states["idle"].cpu for states in rounds]
    busy_cpu = [states["clients"].cpu for states in rounds]
    costs = [states["clients"].cpu - states["idle"].cpu for states in rounds]
    cost = statistics.median(costs)
    idle = sorted(value for states in rounds for value in states["idle"].latencies)
    busy = sorted(value for states in rounds for value in states["clients"].latencies)
    ratio = percentile(busy, 0.5) / percentile(idle, 0.5)
    p99_ratio = percentile(busy, 0.99) / percentile(idle, 0.99)
    per_round = [
        statistics.median(states["clients"].latencies) / statistics.median(states["idle"].latencies)
        for states in rounds
    ]
    windows = [states["clients"].frames or {} for states in rounds]
    rates = [window.get("frames", 0) / window.get("elapsed", 1.0) for window in windows]

    def listed(values: list[float], digits: int = 2) -> str:
        return ", ".join(f"{value:.{digits}f}" for value in values)

    print(f"\nsummary ({len(rounds)} round(s), {args.clients} clients at {args.interval} ms)")
    print(
        f"  server CPU idle:         median {statistics.median(idle_cpu):.2f}% ({listed(idle_cpu)})"
    )
    print(
        f"  server CPU with clients: median {statistics.median(busy_cpu):.2f}% ({listed(busy_cpu)})"
    )
    print(
        f"  frames received:         median {statistics.median(rates):.1f}/s "
        f"({listed(rates, 1)}), expected {args.clients * 1000 / args.interval:.1f}/s"
    )
    verdict = "PASS" if cost < TARGET_CPU_PERCENT else "FAIL"
    print(f"  broadcast cost:          median {cost:.2f}% of one core ({listed(costs)}): "
          f"target < {TARGET_CPU_PERCENT:g}%: {verdict}")  # fmt: skip
    print(f"  latency idle:            {latency_text(idle)}")
    print(f"  latency with clients:    {latency_text(busy)}")
    verdict = "PASS" if ratio <= TARGET_LATENCY_RATIO else "FAIL"
    within = f"{TARGET_LATENCY_RATIO * 100 - 100:.0f}%"
    print(f"  ratio of medians:        {ratio:.3f} (per round {listed(per_round, 3)}; p99 ratio "
          f"{p99_ratio:.2f}): target within {within}: {verdict}")  # fmt: skip
    if log:
        print(f"  server log ({len(log)} lines of warnings or errors):")
        for line in log[:10]:
            print(f"    {line}")
    else:
        print("  server log: no warnings or errors")


def raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=500, help="WebSocket clients (500)")
    parser.add_argument("--rounds", type=int, help="rounds (3; 1 with --quick)")
    parser.add_argument("--window", type=float, help="seconds of CPU measured (20; 8 with --quick)")
    parser.add_argument("--requests", type=int, help="GET /ok per state (20000; 5000 with --quick)")
    parser.add_argument("--interval", type=int, default=1000, help="update_interval, ms (1000)")
    parser.add_argument("--quick", action="store_true", help="one short round, about 30 s")
    parser.add_argument("--ack-every", type=int, default=2,
                        help="clients acknowledge every Nth message, as the dashboard does "
                        "(2 with the default interval and stall timeout); 0: never")  # fmt: skip
    parser.add_argument("--no-compression", action="store_true",
                        help="clients do not offer permessage-deflate")  # fmt: skip
    parser.add_argument("--role", choices=("main", "clients", "load"), default="main",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.role == "clients":
            asyncio.run(
                crowd_main(
                    args.port,
                    args.clients,
                    args.interval / 1000,
                    not args.no_compression,
                    args.ack_every,
                )
            )
            return
        if args.role == "load":
            load_main(args.port, args.requests)
            return
    except KeyboardInterrupt:
        sys.exit(130)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.window = args.window or (8.0 if args.quick else 20.0)
    args.requests = args.requests or (5000 if args.quick else 20000)
    if not 100 <= args.interval <= 60_000:
        parser.error("--interval is in milliseconds, from 100 to 60000")
    if min(args.clients, args.rounds, args.requests) < 1 or args.window <= 0:
        parser.error("--clients, --rounds, --requests and --window must be positive")
    if not Path("/proc/self/stat").exists():
        parser.error("the server's CPU time is read from /proc: Linux only")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignoring it
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: the child processes were killed", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

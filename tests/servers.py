"""Real server processes for the tests, on 127.0.0.1: uvicorn on a socket bound here,
and helpers to follow a child's output (gunicorn)."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.child_output import ChildOutput
from tests.conftest import REQUIRE_SERVICES

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "Uvicorn running on"
STARTUP_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0


def _ephemeral_ports() -> range:
    """The ports the kernel hands out for outgoing connections and bind(0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


_RANDOM = random.SystemRandom()


def free_port() -> int:
    """A port on 127.0.0.1 free now, for a server started later. Chosen below
    the ephemeral range: a port bind(0) gives is one the kernel may give
    again, to an outgoing connection of this test or another program, before
    the server binds it; one outside that range only a program naming it
    takes. Random, so runs side by side rarely pick the same."""
    ephemeral = _ephemeral_ports()
    candidates = range(10_000, ephemeral.start) if ephemeral.start > 11_000 else range(0)
    for _ in range(200):
        # The system's randomness: a test re-seeding the random module (hypothesis)
        # would make workers side by side pick the same ports.
        port = _RANDOM.choice(candidates) if candidates else 0
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    pytest.fail("no free port on 127.0.0.1 in 200 tries")


def prometheus_tool(name: str) -> str:
    """The path of a Prometheus tool (``prometheus``, ``promtool``); missing: a
    failure in CI, a skip elsewhere."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package 'prometheus')"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def prometheus_server(
    target_port: int,
    workdir: Path,
    rule_files: tuple[Path, ...] = (),
    features: tuple[str, ...] = (),
) -> Iterator[str]:
    """Prometheus scraping 127.0.0.1:target_port every second as job ``app``
    (evaluating ``rule_files`` every second too, with the feature flags
    ``features`` on); yields its URL."""
    binary = prometheus_tool("prometheus")
    port = free_port()
    config = workdir / "prometheus.yml"
    rules = "".join(f"  - '{path}'\n" for path in rule_files)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n  - job_name: app\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    command = [
        binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        *(f"--enable-feature={feature}" for feature in features),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    log = ChildOutput(process.stderr)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT)
        log.join(EXIT_TIMEOUT)


def promtool_checks(exposition: str) -> None:
    """``promtool check metrics`` has nothing to say about ``exposition`` but the
    default registry's own counters (missing help). promtool missing: a failure
    in CI, a skip elsewhere."""
    import shutil

    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (Debian package 'prometheus')"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
    )
    # promtool lints the default registry's own counters for missing help; ours have help.
    complaints = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if line.strip() and not line.startswith(("process_", "python_"))
    ]
    assert complaints == [], checked
    assert checked.returncode in (0, 3), checked


@dataclass
class Server:
    """A running uvicorn child and what it printed."""

    process: subprocess.Popen[str]
    port: int
    log: ChildOutput

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM by default), then wait (bounded) for the exit status."""
        self.process.send_signal(sig)
        code = self.process.wait(timeout=EXIT_TIMEOUT)
        self.log.join(EXIT_TIMEOUT)
        return code


def child_environment(**extra: str) -> dict[str, str]:
    """The test's environment without ``AEGIS_*`` variables, the repository on the path."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@contextmanager
def uvicorn_server(
    app: str, workdir: Path, *args: str, env: dict[str, str] | None = None, port: int = 0
) -> Iterator[Server]:
    """Serve ``app`` with uvicorn in ``workdir`` on a socket bound here (to ``port``,
    or any free one); killed on the way out."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A port a previous server of the test used may still have connections in TIME_WAIT.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    access_log = (workdir / "uvicorn-stdout.log").open("w")
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        command = [sys.executable, "-m", "uvicorn", app, "--fd", str(fd), *args]
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env if env is not None else child_environment(),
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=access_log,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        listener.close()  # the child holds its own copy
        access_log.close()
    assert process.stderr is not None
    log = ChildOutput(process.stderr)
    try:
        if not log.wait_for(READY_LINE, STARTUP_TIMEOUT):
            pytest.fail(f"uvicorn did not start ({app} {args}):\n{log.text}")
        yield Server(process, port, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT)
        log.join(EXIT_TIMEOUT)


def read_lines(stream: object, lines: queue.Queue[str | None]) -> None:
    """Copy a child's output into a queue, line by line; ``None`` at EOF."""
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line.rstrip("\n"))
    lines.put(None)


def wait_for(
    lines: queue.Queue[str | None], seen: list[str], pattern: str, count: int, deadline: float
) -> list[re.Match[str]]:
    """Read output until ``pattern`` has matched ``count`` lines, or fail at ``deadline``."""
    regex = re.compile(pattern)
    matches = [m for m in (regex.search(line) for line in seen) if m]
    while len(matches) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {count} x {pattern!r} in gunicorn's output:\n" + "\n".join(seen))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"gunicorn exited before {pattern!r}:\n" + "\n".join(seen))
        seen.append(line)
        match = regex.search(line)
        if match:
            matches.append(match)
    return matches


@contextmanager
def gunicorn_process(
    command: list[str], cwd: Path, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str | None], list[str]]]:
    """gunicorn started with ``command``: the process, its output lines as they
    come (read by a thread) and a list for the lines a test has looked at,
    which holds the whole output once the block is left; killed on the way
    out if still running."""
    # A session of its own: its workers can be killed with it, never left
    # holding the output pipe open (the reader would wait for them forever).
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        yield process, lines, seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):  # workers the master left behind
            os.killpg(process.pid, signal.SIGKILL)
        reader.join(timeout=EXIT_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()
        while not lines.empty():  # what nobody waited for: the rest of the output
            line = lines.get_nowait()
            if line is not None:
                seen.append(line)


def gunicorn_command(
    workers: int, app: str, *extra: str, worker_class: str = "uvicorn_worker.UvicornWorker"
) -> list[str]:
    """gunicorn (uvicorn workers unless told otherwise) on an ephemeral 127.0.0.1 port."""
    from gunicorn.config import KNOWN_SETTINGS

    command = [
        sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", worker_class,
        "-b", "127.0.0.1:0", "--graceful-timeout", "20", "--log-level", "info", *extra,
    ]  # fmt: skip
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        # Newer gunicorn opens a control socket under $HOME unless told not to.
        command.append("--no-control-socket")
    return [*command, app]


Answer = TypeVar("Answer")


def settled(
    ask: Callable[[], Answer], check: Callable[[Answer], bool], in_a_row: int, seconds: float
) -> list[Answer]:
    """Ask until ``in_a_row`` consecutive answers pass ``check`` (each a new
    connection, so any worker may answer), or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    answers: list[Answer] = []
    streak = 0
    while streak < in_a_row:
        if time.monotonic() > deadline:
            pytest.fail(f"the answers never settled: {answers[-3:]}")
        answer = ask()
        answers.append(answer)
        streak = streak + 1 if check(answer) else 0
    return answers[-in_a_row:]


def multiprocess_env(shared: Path) -> dict[str, str]:
    """The environment of a gunicorn whose workers share their metrics in
    ``shared``, flushing every 0.2 s, with no AEGIS_* variable of the machine's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env.update(
        PROMETHEUS_MULTIPROC_DIR=str(shared),
        AEGIS_FLUSH_INTERVAL="0.2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return env


def gunicorn_started(
    lines: queue.Queue[str | None], seen: list[str], workers: int, deadline: float
) -> tuple[str, list[int]]:
    """The base URL of a gunicorn that printed its address, booted ``workers``
    workers and saw each one's application start up; and those workers' pids."""
    [listening] = wait_for(lines, seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline)
    booted = wait_for(lines, seen, r"Booting worker with pid: (\d+)", workers, deadline)
    wait_for(lines, seen, r"Application startup complete", workers, deadline)
    return f"http://127.0.0.1:{int(listening.group(1))}", [int(m.group(1)) for m in booted]

"""A Redis server of the test's own, to stop and start at will (never the
machine's shared one): ``redis-server`` on a free port of 127.0.0.1, no
persistence, so a restart loses everything, as a restart of a cache does.
A missing ``redis-server``: a skip, or a failure under REQUIRE_TEST_SERVICES."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.servers import free_port

TIMEOUT = 30.0


class PrivateRedis:
    """One throw-away server: :meth:`start`, :meth:`stop`, :attr:`url`."""

    def __init__(self) -> None:
        program = shutil.which("redis-server")
        if program is None:
            if REQUIRE_SERVICES:
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.program = program
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while not self._answers():  # it listens once it has loaded (nothing, here)
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()  # as a crash: nothing saved, connections cut
            process.wait(timeout=TIMEOUT)

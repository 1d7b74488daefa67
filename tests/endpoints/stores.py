"""Stores that are down, for the outage tests: a TCP listener on 127.0.0.1 that
accepts connections and never answers (a hung server), and a forwarder that
brings a store back on a port where nothing listened (a restarted one), or
freezes with its connections open (a server that hung while in use)."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit


class _Listener:
    """A listening socket on 127.0.0.1 served by a thread until ``close()``
    (``contextlib.closing`` closes it at the end of a block)."""

    def __init__(self, port: int = 0) -> None:
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", port))
        self.socket.listen(128)
        self.socket.setblocking(False)
        self.port: int = self.socket.getsockname()[1]
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ, self._accept)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self.held: list[socket.socket] = []
        #: Set by the serving thread once it relays nothing more (Forwarder.freeze).
        self.frozen = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:  # close() or freeze() woke us
                    if self._wake_read.recv(1) == b"x":
                        return
                    self.frozen.set()
                    continue
                key.data(key.fileobj)

    def _accept(self, listener: socket.socket) -> None:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return
        self.accepted(connection)

    def accepted(self, connection: socket.socket) -> None:
        self.held.append(connection)

    def close(self) -> None:
        self._wake_write.send(b"x")
        self._thread.join(timeout=10)
        for held in self.held:
            held.close()
        self._selector.close()
        for sock in (self.socket, self._wake_read, self._wake_write):
            sock.close()


class HungStore(_Listener):
    """Accepts every connection and never sends a byte: a connection attempt
    waits until its client gives up. Use it as ``with closing(HungStore())``."""

    @property
    def url(self) -> str:
        """A PostgreSQL URL naming this "server"."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"


class Forwarder(_Listener):
    """Relays every connection on ``port`` to ``target`` (the real server)
    until ``freeze()``: from then on nothing is relayed either way and new
    connections are held unanswered, all of them left open, as a server that
    hung (stopped, or its host frozen) leaves them. ``thaw()`` relays again
    for the connections made after it, the others left as they were: a
    server process that hung while others answer, or a failover to another
    server at the same address. ``delay`` seconds are added to each relayed
    chunk: a slow link (each round trip 2 x ``delay`` longer)."""

    def __init__(self, port: int, target: tuple[str, int], delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay
        self._freezing = False
        # Connections made before the last thaw() stay frozen.
        self._thaws = 0
        super().__init__(port)

    def accepted(self, connection: socket.socket) -> None:
        if self._freezing:
            self.held.append(connection)
            return
        upstream = socket.create_connection(self.target, timeout=10)
        self.held += [connection, upstream]
        for source, sink in ((connection, upstream), (upstream, connection)):
            source.setblocking(False)
            self._selector.register(source, selectors.EVENT_READ, self._relay(sink, self._thaws))

    def freeze(self) -> None:
        """Relay nothing more, from when this returns."""
        self._freezing = True
        self._wake_write.send(b"f")
        assert self.frozen.wait(10), "the forwarder did not freeze"

    def thaw(self) -> None:
        """Relay connections made from now on; those made before stay frozen."""
        self._thaws += 1
        self._freezing = False
        self.frozen.clear()  # a later freeze() waits for its own

    def _relay(self, sink: socket.socket, thaws: int) -> object:
        def relay(source: socket.socket) -> None:
            if self._freezing or thaws != self._thaws:
                # Frozen: the bytes stay in the kernel's buffers, unread.
                self._selector.unregister(source)
                return
            try:
                data = source.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._selector.unregister(source)
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if self.delay:
                time.sleep(self.delay)  # the link's latency, not a wait for anything
            sink.setblocking(True)
            try:
                sink.sendall(data)
            except OSError:
                pass
            sink.setblocking(False)

        return relay


def forwarded_url(postgres_url: str, port: int) -> tuple[str, tuple[str, int]]:
    """The test's PostgreSQL URL on ``port`` of 127.0.0.1, and the real server
    (what a Forwarder on that port relays to)."""
    real = urlsplit(postgres_url)
    url = postgres_url.replace(f"@{real.hostname}:{real.port}/", f"@127.0.0.1:{port}/")
    return url, (real.hostname or "127.0.0.1", real.port or 5432)


def timed(
    call: Callable[[], Any], wait: float = 20.0, thread: ThreadPoolExecutor | None = None
) -> tuple[BaseException | None, float]:
    """What ``call`` raised (None if nothing) and the seconds it took, run in
    a thread (a new one, or ``thread``'s: a sink's write connection belongs
    to the thread that opened it) so that a call that hangs on a store fails
    the test after ``wait`` seconds instead of hanging it."""

    def run() -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            call()
        except Exception as error:
            return error, time.monotonic() - started
        return None, time.monotonic() - started

    pool = thread or ThreadPoolExecutor(1)
    try:
        return pool.submit(run).result(timeout=wait)
    finally:
        if thread is None:
            pool.shutdown(wait=False)  # a hung call: the test fails, then its store closes

"""Stores that are down, for the outage tests: a TCP listener on 127.0.0.1 that
accepts connections and never answers (a hung server), and a forwarder that
brings a store back on a port where nothing listened (a restarted one)."""

from __future__ import annotations

import selectors
import socket
import threading


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
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:  # close() asked us to stop
                    return
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
    """Relays every connection on ``port`` to ``target`` (the real server)."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(port)

    def accepted(self, connection: socket.socket) -> None:
        upstream = socket.create_connection(self.target, timeout=10)
        self.held += [connection, upstream]
        for source, sink in ((connection, upstream), (upstream, connection)):
            source.setblocking(False)
            self._selector.register(source, selectors.EVENT_READ, self._relay(sink))

    def _relay(self, sink: socket.socket) -> object:
        def relay(source: socket.socket) -> None:
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
            sink.setblocking(True)
            try:
                sink.sendall(data)
            except OSError:
                pass
            sink.setblocking(False)

        return relay

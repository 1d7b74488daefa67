"""A deadline on a PostgreSQL connection's round trips, kept by the client.

The server's own limits (``statement_timeout``) need a server that runs: one
that hung with the connection open (stopped, frozen, wedged), or a network
that silently swallows what it is sent while the peer's kernel still
acknowledges, leaves psycopg waiting for an answer that never comes, and the
thread with it, for as long as that lasts. libpq has no timeout of its own
for a query, and psycopg's waits have none either.

So whoever borrows a connection for something that must end arms a
:class:`Deadline`: when it passes first, the connection's socket is shut
down (through a duplicate of its descriptor, held from the start, so the
shutdown can never reach a descriptor number since reused for something
else). The wait then ends at once with psycopg's ``OperationalError`` and
the connection is broken, so its pool discards it. Disarmed in time, nothing
happens; disarming and firing exclude each other, so a connection that went
back to its pool is never shut down.
"""

from __future__ import annotations

import os
import socket
import threading
from types import TracebackType
from typing import Any

import psycopg


class Deadline:
    """``with Deadline(connection, seconds):`` shuts the connection's socket
    down if the block is still running ``seconds`` later; ``missed`` says
    whether it did. A thread waits for the deadline (one per armed block:
    blocks are few, a history read or an alert store's call, and a pool
    lends at most a handful of connections at once)."""

    def __init__(self, connection: psycopg.Connection[Any], seconds: float) -> None:
        self.seconds = seconds
        self.missed = False
        self._lock = threading.Lock()
        duplicate = os.dup(connection.fileno())
        try:
            self._socket: socket.socket | None = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)
            raise
        self._timer = threading.Timer(seconds, self._sever)
        self._timer.daemon = True
        self._timer.name = "aegis-pg-deadline"

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        with self._lock:
            held, self._socket = self._socket, None
        if held is not None:
            held.close()  # the duplicate only: the connection keeps its own
        if self.missed and isinstance(error, psycopg.OperationalError):
            # psycopg's words would be "server closed the connection
            # unexpectedly", which it did not: say what happened.
            raise psycopg.OperationalError(
                f"no answer from the server within {self.seconds:g} s: connection closed"
            ) from error

    def _sever(self) -> None:
        with self._lock:
            if self._socket is None:  # the block ended meanwhile
                return
            self.missed = True
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the peer: the wait ends anyway
                pass

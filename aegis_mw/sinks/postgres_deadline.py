"""Deadlines on PostgreSQL connections' round trips, kept by the client.

The server's own limits (``statement_timeout``) need a server that runs: one
that hung with the connection open (stopped, frozen, wedged), or a network
that silently swallows what it is sent while the peer's kernel still
acknowledges, leaves psycopg waiting for an answer that never comes, and the
thread with it, for as long as that lasts. libpq has no timeout of its own
for a query, and psycopg's waits have none either.

So whoever borrows a connection for something that must end arms a deadline
(``with watchdog.deadline(connection, seconds):``). When it passes first,
the watchdog's thread shuts the connection's socket down, through a
duplicate of its descriptor held from the start (the shutdown can never
reach a descriptor number since reused for something else). The wait ends
at once with psycopg's ``OperationalError``, which leaving the block turns
into one that says what happened. Leaving a block whose deadline passed
closes the connection whatever the block did, so its pool discards it; a
block that had finished its last round trip (a write committed, say) is
not failed for it: ``missed`` tells its owner (a pool's check must fail).
Disarming and firing exclude each other, so a connection that went back to
its pool is never shut down.

The server is not asked to cancel the statement: a server that runs has
cancelled it by its statement timeout before the deadline; one that does
not answer would not answer the cancel either, and waiting for that would
only make the call's failure later.

One thread per watchdog (one per pool), started when a deadline is armed and
ending after a while with none; where no thread can be started (an
interpreter at exit, after its ``atexit`` hooks began), a block runs without
a deadline, as it did before deadlines existed. Arming wakes the thread only
when the new deadline comes before the thread's next wake: a deadline is
tens of seconds and a block milliseconds, so nearly every block costs a
lock and a duplicated descriptor, not a thread switch (about 7 µs of CPU a
block against 18 with a wake each time).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

import psycopg

#: Seconds the watchdog's thread waits with nothing armed before it ends.
IDLE_SECONDS = 30.0


class Deadline:
    """One armed block (see :meth:`Watchdog.deadline`); ``missed`` says whether
    its deadline passed first, ``severed`` is set when it did. ``strict``: a
    block that finished after its deadline fails all the same (a pool's check
    or a connection's set-up, whose connection must not be used)."""

    def __init__(
        self,
        watchdog: Watchdog,
        connection: psycopg.Connection[Any],
        seconds: float,
        strict: bool = False,
    ) -> None:
        self.seconds = seconds
        self.strict = strict
        self.missed = False
        self.severed = threading.Event()
        self.due = 0.0
        self._watchdog = watchdog
        self._connection = connection
        self._socket: socket.socket | None = None

    def __enter__(self) -> Deadline:
        # fromfd duplicates the descriptor (a handle on Windows).
        duplicate = socket.fromfd(self._connection.fileno(), socket.AF_INET, socket.SOCK_STREAM)
        self.due = time.monotonic() + self.seconds
        self._socket = duplicate
        if not self._watchdog.arm(self):
            self._socket = None
            duplicate.close()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._watchdog.disarm(self)
        held, self._socket = self._socket, None
        if held is not None:
            held.close()  # the duplicate only: the connection keeps its own
        if not self.missed:
            return
        # Its socket is shut down: whatever the block got, the connection is
        # done for, and its pool must not lend it again.
        self._connection.close()
        if isinstance(error, psycopg.OperationalError):
            # psycopg's words would be "server closed the connection
            # unexpectedly", which it did not: say what happened.
            raise self.error() from error
        if error is None and self.strict:  # answered, but too late: closed, so not used
            raise self.error()

    def renew(self) -> None:
        """Count the deadline afresh from now (a block of several statements,
        each with its own time)."""
        self._watchdog.renew(self)

    def error(self) -> psycopg.OperationalError:
        """What a missed deadline is reported as."""
        return psycopg.OperationalError(
            f"no answer from the server within {self.seconds:g} s: connection closed"
        )

    def sever(self) -> None:
        """The deadline passed (the watchdog's thread, under its lock)."""
        self.missed = True
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the peer: the wait ends anyway
                pass
        self.severed.set()


class Watchdog:
    """Keeps the deadlines of one pool's connections, with one thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._condition = threading.Condition(threading.Lock())
        self._armed: set[Deadline] = set()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closing = False
        # When the thread next wakes by itself, and when a deadline was last
        # armed (its idle time counts from then).
        self._wakes_at = 0.0
        self._armed_at = 0.0

    def deadline(
        self, connection: psycopg.Connection[Any], seconds: float, *, strict: bool = False
    ) -> Deadline:
        """A context manager: ``connection``'s socket is shut down if the block
        still runs ``seconds`` from its start (see :class:`Deadline`)."""
        return Deadline(self, connection, seconds, strict)

    @property
    def armed(self) -> int:
        """How many blocks are armed now."""
        with self._condition:
            return len(self._armed)

    def arm(self, deadline: Deadline) -> bool:
        """Keep ``deadline``; False when no thread could be started to keep it."""
        if self._pid != os.getpid():
            # A forked child: the parent's thread is not here, and its lock
            # may have been held at the fork.
            self._condition = threading.Condition(threading.Lock())
            self._armed, self._thread, self._pid = set(), None, os.getpid()
            self._wakes_at = 0.0
        with self._condition:
            self._closing = False
            if self._thread is None:
                thread = threading.Thread(target=self._watch, name=self.name, daemon=True)
                try:
                    thread.start()  # it waits for this lock, then sees the deadline
                except RuntimeError:  # at interpreter exit: no new threads
                    return False
                self._thread = thread
            self._armed.add(deadline)
            self._armed_at = time.monotonic()
            if deadline.due < self._wakes_at:  # else it wakes in time by itself
                self._condition.notify()
            return True

    def close(self) -> None:
        """Let the thread end now rather than after a while idle (its owner is
        closed; a later deadline starts another)."""
        if self._pid != os.getpid():
            return
        with self._condition:
            self._closing = True
            self._condition.notify()

    def renew(self, deadline: Deadline) -> None:
        """Move ``deadline`` to ``seconds`` from now, while it is armed (later
        than before: the thread wakes in time by itself)."""
        if self._pid != os.getpid():  # armed in the parent, before a fork
            return
        with self._condition:
            if deadline in self._armed:
                self._armed_at = time.monotonic()
                deadline.due = self._armed_at + deadline.seconds

    def disarm(self, deadline: Deadline) -> None:
        if self._pid != os.getpid():  # armed in the parent, before a fork
            return
        with self._condition:
            self._armed.discard(deadline)

    def _watch(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for deadline in [armed for armed in self._armed if armed.due <= now]:
                    self._armed.discard(deadline)
                    deadline.sever()
                if self._armed:
                    wait = min(armed.due for armed in self._armed) - now
                else:
                    wait = self._armed_at + IDLE_SECONDS - now
                    if wait <= 0 or self._closing:
                        self._thread = None  # the next arm starts another
                        self._wakes_at = 0.0
                        return
                self._wakes_at = now + wait
                self._condition.wait(wait)

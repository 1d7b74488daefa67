"""The live figures of an app's processes on several hosts, exchanged
through a transport (Redis, PostgreSQL: :mod:`aegis_mw.transports`).

One thread per process, ``aegis-live``, owns the transport's connections:
about once a second it sends this process's frame (:mod:`.live_board`) and
takes the frames the others sent, which every live read then adds to this
process's own figures. The request path never sees it; the flusher neither
(a transport that hangs delays only the live view of other hosts).

When the transport fails (the server restarted, the network broke), the
thread retries with the sinks' backoff, then reads every sender's stored
frame again (a resync), as it does after a gap in a sender's sequence and
every :data:`RESYNC_SECONDS` in case a pushed frame went missing unseen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .leases import holder_id
from .live_board import Board, encode_frame
from .sink import retry_delay

logger = logging.getLogger("aegis_mw.live")

#: Seconds between two frames of a process.
SEND_SECONDS = 1.0
#: Seconds between two reads of every stored frame, gap or none.
RESYNC_SECONDS = 30.0
#: Backoff after a transport failure: from this, doubling...
RETRY_INITIAL = 0.5
#: ...up to this.
RETRY_MAX = 5.0
#: How long :meth:`LiveLink.stop` waits for the closing frame to go out.
STOP_SECONDS = 3.0


class LiveTransport(Protocol):
    """Carries frames between the processes of an app (one per process,
    used by its link thread only).

    Each call may raise any exception for a transport that failed; the
    link then closes it, makes a new one and resyncs.
    """

    #: Its kind, for the health details ("redis", "postgresql").
    kind: str
    #: Whether every frame sent reaches the readers (pub/sub): a skipped
    #: sequence number is then a frame lost, and calls for a resync. A
    #: transport that keeps only each sender's latest (a table) skips by design.
    pushes_every_frame: bool

    def send(self, sender: str, frame: bytes) -> None:
        """Keep ``frame`` as ``sender``'s latest, and push it to the readers."""

    def receive(self, timeout: float) -> list[bytes]:
        """The frames pushed since the last call, waiting at most ``timeout``
        seconds for one (an empty list when none came)."""

    def stored(self) -> list[bytes]:
        """Every sender's latest frame, as kept (a resync)."""

    def forget(self, senders: list[str]) -> None:
        """Remove the stored frames of senders long gone."""

    def close(self) -> None:
        """Close its connections (never called in a forked child on the
        parent's transport)."""


class LiveLink:
    """This process's frames out, the others' in (owned by the metrics service)."""

    def __init__(
        self,
        connect: Callable[[], LiveTransport],
        source: Callable[[], dict[str, Any]],
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        *,
        kind: str,
    ) -> None:
        #: Makes a transport (a new one after each failure).
        self.connect = connect
        #: This process's live publication, built when a frame is due.
        self.source = source
        self.monotonic = monotonic
        self.wall = wall
        self.kind = kind
        self.sender = holder_id()
        self.board = Board(self.sender, monotonic, wall)
        self.sent = 0
        self.resyncs = 0
        self.errors = 0
        self.last_error = ""
        #: Whether the last exchange with the transport worked.
        self.connected = False
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Transports of a forked parent: referenced, never used or closed here.
        self._left_behind: list[Any] = []
        self._transport: LiveTransport | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (no-op while it runs and was not told to stop).
        Each thread has its own stop event and its own connections: one that
        did not end within :meth:`stop`'s wait ends by itself, never sharing
        a connection with the next."""
        if self.alive and not self._stop.is_set():
            return
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="aegis-live", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Send a closing frame (this process's gauges leave the sums at once,
        its counts stay) and end the thread, waiting at most ``timeout``."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(max(0.0, timeout))
        self.connected = False

    def reset_after_fork(self) -> None:
        """In a forked child: a name of its own (the parent is now another
        sender), new connections, a thread if the parent had one running."""
        running = self._thread is not None and not self._stop.is_set()
        if self._transport is not None:
            self._left_behind.append(self._transport)
        self._transport = None
        self._thread = None
        self.sender = holder_id()
        self.board.reset_own(self.sender)
        self._seq = 0
        self.connected = False
        if running:
            self.start()

    def frame(self, *, closed: bool = False) -> bytes:
        """This process's next frame."""
        self._seq += 1
        data = self.source()
        if closed:
            data.update(in_flight=0, websockets_active=0)
        wall = self.wall()
        offset = wall - self.monotonic()
        return encode_frame(self.sender, self._seq, offset, wall, data, closed=closed)

    def _run(self, stop: threading.Event) -> None:
        transport: LiveTransport | None = None
        try:
            transport = self._exchange(stop)
        finally:
            if transport is not None:
                self._close(transport)

    def _exchange(self, stop: threading.Event) -> LiveTransport | None:
        """The thread's loop until ``stop``; returns its transport (if any)."""
        failures = 0
        resync = True
        next_send = next_resync = 0.0
        transport: LiveTransport | None = None
        while not stop.is_set():
            try:
                if transport is None:
                    transport = self.connect()
                    if stop.is_set():  # stopped (and perhaps replaced) while it connected
                        return transport
                    self._transport = transport
                    resync = True
                now = self.monotonic()
                if now >= next_send:
                    transport.send(self.sender, self.frame())
                    self.sent += 1
                    next_send = now + SEND_SECONDS
                    self._worked(stop, failures)
                sequenced = transport.pushes_every_frame
                if resync or now >= next_resync:
                    for raw in transport.stored():
                        self.board.offer(raw, fresh=False)
                    gone = self.board.forgotten()
                    if gone:
                        transport.forget(gone)
                    self.resyncs += 1
                    resync, next_resync = False, now + RESYNC_SECONDS
                wait = max(0.0, min(next_send - self.monotonic(), SEND_SECONDS))
                for raw in transport.receive(wait):
                    if self.board.offer(raw, fresh=True, sequenced=sequenced) == "gap":
                        resync = True
                self._worked(stop, failures)
                failures = 0
            except ReferenceError:
                return transport  # the pipeline was dropped without shutdown
            except Exception as exc:
                failures += 1
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if self.connected or failures == 1:
                    logger.warning(
                        "aegis_mw: the live transport (%s) failed, retrying: %s",
                        self.kind, self.last_error,
                    )  # fmt: skip
                if stop is self._stop:
                    self.connected = False
                if transport is not None:
                    self._close(transport)
                    transport = None
                stop.wait(retry_delay(RETRY_INITIAL, RETRY_MAX, failures - 1))
        # The last frame, saying this process ended; not from a thread that a
        # newer one replaced (its readers would drop this process's gauges).
        if transport is not None and self.connected and stop is self._stop:
            try:
                transport.send(self.sender, self.frame(closed=True))
                self.sent += 1
            except Exception as exc:  # readers count it dead after DEAD_AFTER
                logger.debug("aegis_mw: the closing live frame was not sent: %s", exc)
        return transport

    def _worked(self, stop: threading.Event, failures: int) -> None:
        """An exchange worked: connected from its first frame out (a thread
        told to stop speaks for nobody)."""
        if stop is self._stop and not self.connected:
            if failures:
                logger.warning("aegis_mw: the live transport (%s) works again", self.kind)
            self.connected = True

    def _close(self, transport: LiveTransport) -> None:
        if self._transport is transport:
            self._transport = None
        try:
            transport.close()
        except Exception as exc:  # a broken one may fail to close
            logger.debug("aegis_mw: closing the live transport: %s", exc)

"""What the routes we serve read with: threads of their own and a breaker for
the history store, owned by the ``Aegis`` (``aegis.reads``).

Blocking monitoring work (a history read, rendering ``/metrics`` or the page,
a sync health check) runs in worker threads, but never under the server's
shared limiter: anyio's default one (40 tokens) is what a framework's ``def``
endpoints run under, and a store that hangs must not take it from the app.
Each lane has a ``CapacityLimiter`` of its own instead, so a hung store holds
at most the ``store`` lane's few threads, and ``/metrics`` never waits behind
it. Why limiters rather than a pool of our own: ``anyio.to_thread.run_sync``
with a limiter is the same call on asyncio and trio, cancellable and
fork-safe, and its threads come from anyio's per-loop cache, which grows on
demand, so our busy lanes never make the app's calls wait for a thread; a
``ThreadPoolExecutor`` would need a bridge to each loop, a fork handler and a
queue bound of its own. A limiter belongs to one event loop, so each lane
keeps one per loop in a ``RunVar`` held by this object (no module state:
two apps never share one). Waiting is bounded too: when a lane already has
``QUEUE_PER_THREAD`` callers per token waiting, the next answers 503 ``busy``
at once (counted here, not read from the limiter: a burst arriving in one
turn of the loop passes any check before the first of it reaches the limiter).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.history import HistorySource
from ..core.settings import AegisSettings
from ..core.sink import RecordSink
from ..history.breaker import GuardedSource, StoreBreaker
from .response import Response

if TYPE_CHECKING:
    from anyio import CapacityLimiter

#: History reads: the JSON API and the stream's ``get`` (the pool's size).
STORE = "store"
#: ``/metrics`` and the dashboard page: our own memory, never a store.
RENDER = "render"
#: Sync health checks (at most one thread per check while it runs).
CHECKS = "checks"
LANES = {STORE: 4, RENDER: 2, CHECKS: 16}
QUEUE_PER_THREAD = 8


class _Lane:
    """One lane on one event loop: its limiter and the callers it holds."""

    __slots__ = ("callers", "limiter")

    def __init__(self, limiter: CapacityLimiter) -> None:
        self.limiter = limiter
        self.callers = 0  # in a thread or waiting for one; only touched on the loop


class ReadThreads:
    """A bounded ``CapacityLimiter`` per lane and per event loop."""

    def __init__(self, lanes: dict[str, int]) -> None:
        self.lanes = dict(lanes)
        self._vars: dict[str, Any] = {}  # lane -> anyio.lowlevel.RunVar, made on first use

    def _lane(self, lane: str) -> _Lane:
        # Imported here: importing aegis_mw must not import anyio.
        import anyio
        import anyio.lowlevel

        var = self._vars.get(lane)
        if var is None:
            # setdefault, not a lock: loops in other threads (WSGI probes) may
            # race here, and one of the RunVars made wins for all of them.
            var = self._vars.setdefault(lane, anyio.lowlevel.RunVar(f"aegis_mw.{lane}"))
        found: _Lane | None = var.get(None)
        if found is None:  # no await since get(): no other task made one meanwhile
            found = _Lane(anyio.CapacityLimiter(self.lanes[lane]))
            var.set(found)
        return found

    def limiter(self, lane: str) -> CapacityLimiter:
        """This lane's limiter on the running event loop."""
        return self._lane(lane).limiter

    async def respond(self, lane: str, function: Callable[..., Response], *args: Any) -> Response:
        """``function(*args)`` in one of the lane's threads, or 503 ``busy`` at once
        when as many callers already wait as the lane's queue holds."""
        import anyio.to_thread

        found = self._lane(lane)
        tokens = self.lanes[lane]
        if found.callers >= tokens + QUEUE_PER_THREAD * tokens:
            return Response.error(
                503, "busy", "too many monitoring reads at once; retry shortly", retry_after="1"
            )
        found.callers += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=found.limiter)
        finally:
            found.callers -= 1


class MonitoringReads:
    """The read threads and the history store's breaker of one pipeline."""

    def __init__(
        self,
        settings: AegisSettings,
        sinks: list[RecordSink],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threads = ReadThreads(LANES)
        #: The store the JSON API reads (the first sink that keeps history),
        #: behind its breaker; None when no sink keeps history.
        self.history: GuardedSource | None = None
        source = next((sink for sink in sinks if isinstance(sink, HistorySource)), None)
        if source is not None:
            set_timeout = getattr(source, "set_read_timeout", None)
            if callable(set_timeout):
                set_timeout(settings.read_timeout)
            name = str(getattr(source, "name", "") or type(source).__name__)
            # A probe gets its connection within read_timeout, or fails; one that
            # takes longer still has hung on an established one.
            breaker = StoreBreaker(
                name,
                retry_after=settings.read_retry_after,
                probe_limit=settings.read_timeout + settings.read_retry_after,
                clock=monotonic,
            )
            self.history = GuardedSource(source, breaker)

    def reset_after_fork(self) -> None:
        if self.history is not None:
            self.history.breaker.reset_after_fork()

"""How late the event loop runs what it is given: for liveness and a built-in check.

A daemon thread hands the loop a no-op callback every ``interval`` seconds
(``anyio.from_thread.run_sync`` with the loop's token, so asyncio and trio
alike) and measures how long the loop took to run it. While a callback is
still waiting, the lag is at least its age: a wedged loop shows a growing lag
to anyone who can still ask (a thread, or the loop once it recovers).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any


class LoopLagMonitor:
    """Started once per event loop, from that loop (``start_here``)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.last_lag = 0.0
        self._pending_since: float | None = None
        self._token: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def lag(self) -> float:
        """Seconds the loop is behind now (the last measurement, or the age of
        a callback it has not run yet, whichever is larger)."""
        pending = self._pending_since
        waiting = time.monotonic() - pending if pending is not None else 0.0
        return max(self.last_lag, waiting)

    def start_here(self) -> None:
        """Watch the running event loop (call from a coroutine on it); idempotent."""
        if self.running:
            return
        import anyio.lowlevel

        self._token = anyio.lowlevel.current_token()
        self._stop.clear()
        self._thread = threading.Thread(
            target=_watch, args=(weakref.ref(self), self._stop), name="aegis-loop-lag", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _ping(self) -> bool:
        """From the watching thread: one round trip through the loop."""
        import anyio.from_thread

        sent = time.monotonic()
        self._pending_since = sent
        try:
            anyio.from_thread.run_sync(_nothing, token=self._token)
        except Exception:
            return False  # the loop is gone (closed, or the app stopped)
        finally:
            self._pending_since = None
        self.last_lag = time.monotonic() - sent
        return True


def _nothing() -> None:
    return None


def _watch(ref: weakref.ReferenceType[LoopLagMonitor], stop: threading.Event) -> None:
    while not stop.is_set():
        monitor = ref()
        if monitor is None or not monitor._ping():
            return
        interval = monitor.interval
        del monitor  # do not keep it alive while waiting
        if stop.wait(interval):
            return

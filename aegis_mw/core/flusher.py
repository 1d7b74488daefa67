"""The background worker: its lifecycle and its loop.

One thread per process wakes every ``flush_interval`` or as soon as
``batch_size`` items wait (the request path releases ``Recorder.wake``) and
runs a cycle (see :mod:`.flush_cycle`): drain the inbox, fold, finalize, and
write each sink's backlog. Shutdown writes what is left within its deadline,
counts what it could not, and closes the sinks.

The lifecycle is one state under one lock::

    idle ──start──► running ──shutdown──► stopping ──► stopped ──start──► running

A ``start`` that arrives while stopping is remembered and carried out by the
stopping worker once the sinks are closed, so a restart never races the old
run's last steps. Between wakes the worker holds only a weak reference to the
flusher: a pipeline that is dropped without ``shutdown`` lets its threads end.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from . import gil_slices
from .finalize import Finalizer
from .flush_cycle import FlushCycle
from .recorder import Recorder
from .sink_runner import SinkRunner

logger = logging.getLogger("aegis_mw.flusher")


class _FlushRequest:
    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.event.set()


def _release(wake: threading.Lock) -> None:
    try:
        wake.release()
    except RuntimeError:  # already released: a wake-up is pending anyway
        pass


def _worker(ref: weakref.ReferenceType[Flusher], niceness: int) -> None:
    """The flusher thread. Holds the flusher strongly only while it works."""
    gil_slices.lower_thread_priority(niceness)
    while True:
        flusher = ref()
        if flusher is None:
            return
        wake, timeout = flusher._next_wait()
        del flusher
        if timeout > 0:
            wake.acquire(timeout=timeout)
        else:
            # Work is waiting already (a flush request, say): a wake-up
            # released for it is consumed here, or it would run a second,
            # empty cycle right after this one, racing the caller that
            # asked for the flush.
            wake.acquire(blocking=False)
        flusher = ref()
        if flusher is None or not flusher._step():
            return
        del flusher


class Flusher:
    """Owns the worker thread; see the module docstring."""

    def __init__(
        self,
        recorder: Recorder,
        finalizer: Finalizer,
        runners: Sequence[SinkRunner],
        *,
        flush_interval: float,
        batch_size: int,
        sink_timeout: float,
        shutdown_timeout: float,
        on_first_records: Callable[[], None] | None = None,
        niceness: int = gil_slices.NICENESS,
    ) -> None:
        #: Nice levels its thread runs below the process (gil_slices).
        self.niceness = niceness
        #: Called in the worker thread after every cycle and after the final
        #: flush (the multi-process metrics snapshot); its failures are logged.
        self.after_cycle: Callable[[], None] | None = None
        self.recorder = recorder
        self.runners = list(runners)
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.sink_timeout = sink_timeout
        self.cycle = FlushCycle(
            recorder,
            finalizer,
            self.runners,
            batch_size=batch_size,
            sink_timeout=sink_timeout,
            on_first_records=on_first_records,
        )
        self._lock = threading.Lock()
        self._state = "idle"
        self._requests: list[_FlushRequest] = []
        self._deadline: float | None = None
        self._restart_wanted = False
        self._result: bool | None = None
        self._next_flush = 0.0
        self._thread: threading.Thread | None = None

    @property
    def internal_errors(self) -> int:
        return self.cycle.internal_errors

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle (any thread) ---------------------------------------------
    def start(self) -> None:
        """Start the sink threads and the worker; idempotent.

        After a completed :meth:`shutdown` this starts afresh (an app whose
        lifespan runs several times, as test clients do, keeps recording).
        """
        with self._lock:
            if self._state == "stopping":
                self._restart_wanted = True
            elif self._state != "running":
                self._launch()

    def _launch(self) -> None:
        """Start a run. Called with the lock held, in idle or stopped state."""
        if self._state == "stopped":
            for runner in self.runners:
                runner.restart_thread()
            self.recorder.closed = False
        for runner in self.runners:
            runner.start()
        self._state = "running"
        self._deadline = None
        self._result = None
        self._next_flush = time.monotonic() + self.flush_interval
        # When the flusher is collected the callback wakes the worker, which
        # then finds its weak reference dead and ends.
        wake = self.recorder.wake
        ref = weakref.ref(self, lambda _: _release(wake))
        self._thread = threading.Thread(
            target=_worker, args=(ref, self.niceness), name="aegis-flusher", daemon=True
        )
        self._thread.start()

    def force_flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded before this call; True when all sinks took it.

        Sinks in backoff are tried once anyway. Blocks the calling thread, so
        from async code run it in a worker thread.
        """
        request = _FlushRequest()
        with self._lock:
            if self._state != "running":
                return self._result is True
            self._requests.append(request)
            # No long pauses from now on, in the cycle under way too (gil_slices).
            self.recorder.hurried = True
        self.recorder.wake_flusher()
        if not request.event.wait(timeout):
            return False
        return request.ok

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop recording, write what is buffered within ``timeout`` (default
        ``shutdown_timeout``), close the sinks. A call while stopped or
        stopping does nothing and returns the result so far (False until the
        first call has finished).
        """
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        with self._lock:
            if self._state in ("stopping", "stopped"):
                return self._result is True
            was_idle = self._state == "idle"
            self._state = "stopping"
            self._deadline = deadline
            self.recorder.closed = True
            thread = self._thread
        if was_idle or thread is None:
            for runner in self.runners:
                runner.start()
            self._finish()
            return self._result is True
        self.recorder.wake_flusher()
        # The worker keeps to the deadline itself; the grace covers one
        # abandoned write and closing the sinks.
        thread.join(max(0.0, deadline - time.monotonic()) + self.sink_timeout + 1.0)
        if thread.is_alive():
            logger.warning(
                "aegis shutdown did not finish in time; %d records are still unwritten",
                self.cycle.unwritten(),
            )
        return self._result is True

    def reset_after_fork(self) -> None:
        """In a forked child: fresh lock, empty queues, new threads."""
        self._lock = threading.Lock()
        self._requests = []
        self._thread = None
        for runner in self.runners:
            runner.reset_after_fork()
        self.cycle.reset_after_fork()
        if self._state == "stopping":  # its worker did not come along
            self._state, self._result = "stopped", False
        elif self._state == "running":
            self._state = "idle"
            with self._lock:
                self._launch()

    # -- the worker ----------------------------------------------------------
    def _next_wait(self) -> tuple[threading.Lock, float]:
        """How long the worker may sleep, and on what."""
        with self._lock:
            if self._requests or self._state != "running":
                return self.recorder.wake, 0.0
        now = time.monotonic()
        until = self._next_flush
        for runner in self.runners:
            if runner.owes() and runner.retry_at > now:
                until = min(until, runner.retry_at)
        return self.recorder.wake, until - now

    def _step(self) -> bool:
        """One wake-up's work; False when the thread should end."""
        with self._lock:
            requests, self._requests = self._requests, []
            stopping = self._state == "stopping"
        if stopping:
            result = self._finish()
            for request in requests:
                request.finish(result)
            return False
        # force_flush set recorder.hurried (no long pauses, see gil_slices).
        try:
            ok = self.cycle.run(force=bool(requests), stop=self._stopping)
        finally:
            with self._lock:  # one that came meanwhile keeps it for its cycle
                self.recorder.hurried = bool(self._requests)
        self._after_cycle()
        for request in requests:
            request.finish(ok)
        self._next_flush = time.monotonic() + self.flush_interval
        return True

    def _after_cycle(self) -> None:
        hook = self.after_cycle
        if hook is None:
            return
        try:
            hook()
        except Exception:
            logger.exception("aegis after-cycle hook failed; continuing")

    def _stopping(self) -> bool:
        return self._deadline is not None

    def _finish(self) -> bool:
        """Final flush and close, then publish the result (and restart if asked)."""
        deadline = self._deadline if self._deadline is not None else time.monotonic()
        result = self.cycle.final(deadline)
        self._after_cycle()
        self.cycle.close_sinks(max(deadline, time.monotonic() + 1.0))
        with self._lock:
            self._state = "stopped"
            self._result = result
            requests, self._requests = self._requests, []
            for request in requests:
                request.finish(result)
            if self._restart_wanted:
                self._restart_wanted = False
                self._launch()
        return result

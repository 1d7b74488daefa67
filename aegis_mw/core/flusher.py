"""The background worker: drain, finalize, write, retry — never raise.

One thread per process wakes every ``flush_interval`` or as soon as
``batch_size`` items wait (the request path releases ``Recorder.wake``),
moves the inbox into each sink's bounded backlog and writes it in chunks.
A failing sink keeps its backlog and backs off; a hanging one is abandoned
after ``sink_timeout`` (see :mod:`.sink_runner`). Shutdown writes what is
left within its deadline and counts what it could not.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from .finalize import Finalizer
from .recorder import Recorder
from .sink_runner import SinkRunner, SinkTimeout

logger = logging.getLogger("aegis_mw.flusher")

DROP_REPORT_INTERVAL = 10.0


class _FlushRequest:
    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.event.set()


class Flusher:
    """Owns the worker thread; see the module docstring for the cycle."""

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
    ) -> None:
        self.recorder = recorder
        self.aggregates = recorder.aggregates
        self.finalizer = finalizer
        self.runners = list(runners)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.sink_timeout = sink_timeout
        self.shutdown_timeout = shutdown_timeout
        self.cycles = 0
        self.internal_errors = 0
        self._lock = threading.Lock()
        self._requests: list[_FlushRequest] = []
        self._stop_deadline: float | None = None
        self._shutdown_result: bool | None = None
        self._shutdown_started = False
        self._thread: threading.Thread | None = None
        self._reported_drops: dict[str, int] = dict(recorder.dropped)
        self._last_drop_report = -math.inf
        # Called once, from this thread, after the first records were ingested.
        self._on_first_records = on_first_records

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Start the sink threads and the worker; idempotent.

        After a completed :meth:`shutdown` this starts afresh (an app whose
        lifespan runs several times, as test clients do, keeps recording).
        """
        with self._lock:
            if self._shutdown_started:
                if self._shutdown_result is None:
                    return  # a shutdown is still running; it wins
                self._shutdown_started = False
                self._shutdown_result = None
                self._stop_deadline = None
                self._thread = None
                for runner in self.runners:
                    runner.restart_thread()
                self.recorder.closed = False
            if self._thread is not None:
                return
            for runner in self.runners:
                runner.start()
            self._thread = threading.Thread(target=self._run, name="aegis-flusher", daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def force_flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded before this call; True when all sinks took it.

        Sinks in backoff are tried once anyway. Blocks the calling thread, so
        from async code run it in a worker thread.
        """
        if self._shutdown_started:
            return self._shutdown_result is True
        request = _FlushRequest()
        with self._lock:
            self._requests.append(request)
        self.recorder.wake_flusher()
        if not request.event.wait(timeout):
            return False
        return request.ok

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop recording, write what is buffered within ``timeout`` (default
        ``shutdown_timeout``), close the sinks. A second call does nothing and
        returns the first call's result (False while the first is running).
        """
        with self._lock:
            if self._shutdown_started:
                return self._shutdown_result is True
            self._shutdown_started = True
            deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
            self._stop_deadline = deadline
            thread = self._thread
        self.recorder.closed = True
        if thread is not None and thread.is_alive():
            self.recorder.wake_flusher()
            # The worker honours the deadline itself; the grace covers closing.
            thread.join(max(0.0, deadline - time.monotonic()) + self.sink_timeout + 1.0)
        else:
            for runner in self.runners:
                runner.start()
            self._finish(deadline)
        return self._shutdown_result is True

    def reset_after_fork(self) -> None:
        """In a forked child: fresh locks, empty queues, new threads."""
        self._lock = threading.Lock()
        self._requests = []
        self._thread = None
        for runner in self.runners:
            runner.reset_after_fork()
        self._reported_drops = dict(self.recorder.dropped)
        self._last_drop_report = -math.inf
        if not self._shutdown_started:
            self.start()

    # -- the worker ----------------------------------------------------------
    def _run(self) -> None:
        wake = self.recorder.wake
        next_flush = time.monotonic() + self.flush_interval
        while True:
            now = time.monotonic()
            wait_until = next_flush
            for runner in self.runners:
                if runner.backlog and runner.retry_at > now:
                    wait_until = min(wait_until, runner.retry_at)
            with self._lock:
                idle = not self._requests and self._stop_deadline is None
            if idle and wait_until > now:
                wake.acquire(timeout=wait_until - now)
            with self._lock:
                requests, self._requests = self._requests, []
                deadline = self._stop_deadline
            if deadline is not None:
                self._finish(deadline)
                for request in requests:
                    request.finish(self._shutdown_result is True)
                return
            try:
                ok = self._cycle(force=bool(requests))
            except Exception:
                self.internal_errors += 1
                logger.exception("aegis flusher cycle failed; continuing")
                ok = False
            for request in requests:
                request.finish(ok)
            next_flush = time.monotonic() + self.flush_interval

    def _cycle(self, *, force: bool, deadline: float | None = None) -> bool:
        self.cycles += 1
        self._ingest()
        self._write(force=force, deadline=deadline)
        self._report_drops(time.monotonic())
        # Items that arrived during this cycle are the next cycle's business.
        return all(not runner.backlog for runner in self.runners)

    def _ingest(self) -> None:
        """Move what the inbox holds now into every sink's backlog."""
        recorder = self.recorder
        remaining = len(recorder.inbox)
        while remaining > 0:
            count = min(remaining, self.batch_size)
            items, malformed = self.aggregates.fold_drained(lambda: recorder.drain(count))  # noqa: B023
            remaining -= count
            if self._on_first_records is not None and items:
                hook, self._on_first_records = self._on_first_records, None
                hook()
            invalid_before = self.finalizer.invalid
            records = self.finalizer.finalize(items)
            malformed += self.finalizer.invalid - invalid_before
            if malformed:
                recorder.dropped["invalid"] += malformed
            for runner in self.runners:
                overflow = runner.offer(records)
                if overflow:
                    self.recorder.dropped["backlog_full"] += overflow

    def _write(self, *, force: bool, deadline: float | None) -> None:
        """Write due backlogs in rounds of one chunk per sink, in parallel."""
        failed: set[int] = set()
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            due = [
                runner
                for runner in self.runners
                if id(runner) not in failed and runner.backlog and (force or now >= runner.retry_at)
            ]
            if not due:
                return
            wait_until = now + self.sink_timeout
            if deadline is not None:
                wait_until = min(wait_until, deadline)
            calls = []
            for runner in due:
                batch, taken = runner.next_batch(self.batch_size)
                calls.append((runner, taken, runner.call(runner.sink.write, batch)))
            for runner, taken, future in calls:
                error = runner.wait(future, wait_until)
                finished = time.monotonic()
                if error is None:
                    runner.succeeded(taken, finished - now)
                else:
                    runner.failed(error, finished, timed_out=isinstance(error, SinkTimeout))
                    failed.add(id(runner))

    def _finish(self, deadline: float) -> None:
        """Final flush: keep trying (with backoff) until empty or the deadline."""
        first = True
        try:
            while True:
                self._ingest()
                self._write(force=first, deadline=deadline)
                first = False
                now = time.monotonic()
                pending = [runner for runner in self.runners if runner.backlog]
                if not pending or now >= deadline:
                    break
                retry = min(runner.retry_at for runner in pending)
                # Backoff inside the worker thread, never on an event loop.
                time.sleep(max(0.0, min(retry, deadline) - now))
            left = sum(len(runner.backlog) for runner in self.runners) + len(self.recorder.inbox)
            if left:
                self.recorder.dropped["shutdown_timeout"] += left
                logger.warning("aegis shutdown: %d records could not be written in time", left)
                # Counted as dropped, so gone: a later restart must not write them too.
                for runner in self.runners:
                    runner.backlog.clear()
                self.recorder.inbox.clear()
            self._shutdown_result = left == 0
            self._report_drops(time.monotonic(), final=True)
        except Exception:
            self.internal_errors += 1
            logger.exception("aegis final flush failed")
            self._shutdown_result = False
        finally:
            self._close_sinks(max(deadline, time.monotonic() + 1.0))

    def _close_sinks(self, deadline: float) -> None:
        for runner in self.runners:
            error = runner.wait(runner.call(runner.sink.close), deadline)
            if error is not None:
                logger.warning("aegis sink %s did not close cleanly: %s", runner.name, error)
            runner.stop()

    def _report_drops(self, now: float, *, final: bool = False) -> None:
        """At most one warning per ``DROP_REPORT_INTERVAL`` with the counts since the
        last; ``final`` (at shutdown) reports whatever is left regardless."""
        if not final and now - self._last_drop_report < DROP_REPORT_INTERVAL:
            return
        current = dict(self.recorder.dropped)
        since = {
            reason: count - self._reported_drops.get(reason, 0)
            for reason, count in current.items()
            if count > self._reported_drops.get(reason, 0)
        }
        if not since:
            return
        self._reported_drops = current
        self._last_drop_report = now
        logger.warning(
            "aegis dropped %d records since the last report (%s)",
            sum(since.values()),
            ", ".join(f"{reason}={count}" for reason, count in sorted(since.items())),
        )

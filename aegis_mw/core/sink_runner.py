"""One sink's backlog, retry schedule and I/O thread.

Each sink gets its own daemon thread so that a write which hangs can be
abandoned: the flusher stops waiting after ``sink_timeout``, counts a timeout
and moves on, while the stuck call keeps its thread. Until that call returns
the sink counts as busy and every attempt fails at once, so a hung sink never
piles up threads. A daemon thread (not a ``concurrent.futures`` pool, whose
workers are joined at exit) means a sink that never returns cannot hold the
process open.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from . import deque_take, gil_slices
from .deque_take import DequeTake
from .isolation import Isolation
from .record import Batch, EventRecord, RequestRecord
from .refusals import RefusalHandling, Stored
from .rollup import MAX_PENDING_CELLS, MAX_PENDING_CUSTOM_CELLS, RollupDelta
from .sink import RecordSink, retry_delay
from .spooling import Spooled

#: Seconds between rollup writes while traffic flows: the cost of a rollup
#: write depends on the routes and buckets it touches, not on how many
#: requests it sums, so adding them up for a few seconds makes it per time,
#: not per batch. History queries lag by at most this (realtime does not).
ROLLUP_INTERVAL = 5.0
#: Written sooner when this many cells wait.
ROLLUP_FLUSH_CELLS = 5_000

logger = logging.getLogger("aegis_mw.flusher")

_Job = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


class SinkBusy(RuntimeError):
    """The previous write to this sink has not returned yet."""


class SinkTimeout(RuntimeError):
    """A write did not return within ``sink_timeout`` and was abandoned."""


def _serve(jobs: queue.SimpleQueue[_Job | None], niceness: int) -> None:
    """A sink's I/O thread: runs calls until it is handed ``None``.

    It holds the queue, not the runner, so a runner that is dropped (its
    pipeline discarded without shutdown) ends the thread through a finalizer.
    """
    gil_slices.lower_thread_priority(niceness)
    while True:
        job = jobs.get()
        if job is None:
            return
        _run(*job)
        # Not kept while waiting for the next job: the batch may be thousands of records.
        del job


def _run(future: Future[Any], function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = function(*args)
    except BaseException as exc:  # handed to the waiting flusher, which logs it
        future.set_exception(exc)
    else:
        future.set_result(result)


class SinkRunner(RefusalHandling):
    """Backlog and state of one sink; every method runs in the flusher's thread."""

    def __init__(
        self,
        sink: RecordSink,
        name: str,
        *,
        max_backlog: int,
        backoff_initial: float,
        backoff_max: float,
        niceness: int = gil_slices.NICENESS,
        take: DequeTake = deque_take.PYTHON,
    ) -> None:
        self.sink = sink
        #: How the front of the backlog is split into a batch and removed.
        self._take = take
        #: Nice levels its thread runs below the process (gil_slices).
        self.niceness = niceness
        self.name = name
        self.max_backlog = max_backlog
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backlog: deque[Stored] = deque()
        #: Records this sink could not keep: over the backlog bound while it was
        #: failing, still unwritten when shutdown's deadline passed, or refused
        #: by the sink for their content (see :mod:`.isolation`).
        self.dropped: dict[str, int] = {"backlog_full": 0, "shutdown_timeout": 0, "rejected": 0}
        #: History sinks also get rollups: added up while they wait (bounded in
        #: cells), then frozen under one id until a write of them succeeds.
        self.keeps_rollups = callable(getattr(sink, "read_rollups", None))
        if self.keeps_rollups:
            # Requests whose rollup counts were lost, by the same reasons.
            self.dropped.update(rollups_full=0, rollups_shutdown_timeout=0, rollups_rejected=0)
            # The app's own metrics' cells (series changes) lost, likewise.
            self.dropped.update(
                custom_rollups_full=0, custom_rollups_shutdown_timeout=0,
                custom_rollups_rejected=0,
            )  # fmt: skip
        #: Sinks that store the app's events (``stores_events``) get them in
        #: their backlog beside the records, bounded and retried alike.
        self.keeps_events = bool(getattr(sink, "stores_events", False))
        #: A sink that counts the records it is given (the OTLP sink's request
        #: metrics) gets every request's, whatever ``sample_rate`` keeps.
        self.counts_records = bool(getattr(sink, "counts_records", False))
        self.rollups_pending: RollupDelta | None = None
        self.rollups_in_flight: RollupDelta | None = None
        #: Parts of a refused delta still to be tried, after the one in flight.
        self.rollup_parts: deque[RollupDelta] = deque()
        self.isolation = Isolation()
        # Whether the batch of the write in progress carries the rollups.
        self._batch_has_rollups = False
        self._reset_refusal_log()
        self._delta_prefix = os.urandom(8).hex()
        self._delta_sequence = 0
        self._batch_sequence = 0
        # The batch of the last write whose outcome is unknown (it failed or
        # timed out, and may have been stored anyway): sent again, under the
        # same id, until it succeeds or is refused. See next_batch.
        self._unanswered: tuple[Batch, int] | None = None
        self._rollups_next = 0.0
        self.written = 0
        self.errors = 0
        self.timeouts = 0
        self.consecutive_failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.last_flush_seconds = 0.0
        self.flush_seconds_total = 0.0
        self.flushes = 0
        #: The spool this sink's writes go through (see :mod:`.spooling`), if any.
        self.spool: Spooled | None = None
        #: What a write calls on the sink's thread: the sink's ``write``, or the spool.
        self.writer: Callable[[Batch], None] = sink.write
        self._in_flight: Future[Any] | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def attach_spool(self, spool: Spooled) -> None:
        """Send this sink's writes through ``spool`` (a remote store's outage
        kept on local disk)."""
        self.spool = spool
        self.writer = spool

    def spool_due(self, now: float) -> bool:
        """Spooled batches wait and the store may be tried again."""
        return self.spool is not None and self.spool.due(now)

    # -- I/O thread -------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            jobs = self._jobs
            self._thread = threading.Thread(
                target=_serve,
                args=(jobs, self.niceness),
                name=f"aegis-sink-{self.name}",
                daemon=True,
            )
            self._thread.start()
            # Not at exit: the final flush still needs this thread then.
            weakref.finalize(self, jobs.put, None).atexit = False

    def call(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``function`` on the sink's thread; fails fast while a call hangs."""
        if self._in_flight is not None and not self._in_flight.done():
            failed: Future[Any] = Future()
            failed.set_exception(SinkBusy(f"previous write to {self.name} has not returned"))
            return failed
        future: Future[Any] = Future()
        self._in_flight = future
        self._jobs.put((future, function, args))
        return future

    def stop(self) -> None:
        """Let the I/O thread finish once queued calls are done."""
        self._jobs.put(None)

    def restart_thread(self) -> None:
        """After shutdown stopped the I/O thread: a new one on a new queue.

        A call abandoned at shutdown may still be running on the old thread
        (which exits once it returns); it stays ``_in_flight``, so the sink
        counts as busy and never sees two calls at once.
        """
        self._jobs = queue.SimpleQueue()
        self._thread = None

    def reset_after_fork(self) -> None:
        """In a forked child: no thread yet, nothing owed (the parent writes it),
        and counters that describe the child's own writes only."""
        self._in_flight = None  # that call ran on a thread the child does not have
        self.restart_thread()
        self.backlog.clear()
        self.rollups_pending = self.rollups_in_flight = None
        self.rollup_parts.clear()
        self.isolation.reset()
        self._tail_probe = False
        self._unanswered = None
        if self.spool is not None:
            self.spool.reset_after_fork()
        self._reset_refusal_log()
        self._delta_prefix = os.urandom(8).hex()
        self._delta_sequence = 0
        self.dropped = dict.fromkeys(self.dropped, 0)
        self.written = self.errors = self.timeouts = self.flushes = 0
        self.consecutive_failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.last_flush_seconds = self.flush_seconds_total = 0.0

    # -- backlog and schedule --------------------------------------------
    def offer(self, records: Sequence[Stored]) -> None:
        """Append what fits under the bound; count the rest as ``backlog_full``."""
        room = max(self.max_backlog - len(self.backlog), 0)
        if room >= len(records):
            self.backlog.extend(records)
        else:
            self.backlog.extend(records[:room])
            self.dropped["backlog_full"] += len(records) - room

    def offer_rollups(self, delta: RollupDelta) -> None:
        """Add a copy of ``delta`` to what this sink owes (history sinks only)."""
        if not self.keeps_rollups or not delta.holds_anything():
            return
        if self.rollups_pending is None:
            self.rollups_pending = RollupDelta()
        owed = [d for d in (self.rollups_in_flight, *self.rollup_parts) if d is not None]
        refused, refused_custom = self.rollups_pending.absorb(
            delta,
            MAX_PENDING_CELLS - sum(len(d.cells) for d in owed),
            MAX_PENDING_CUSTOM_CELLS - sum(len(d.custom) for d in owed),
        )
        self.dropped["rollups_full"] += refused
        self.dropped["custom_rollups_full"] += refused_custom

    def queued(self) -> int:
        """Records owed: the backlog, and those held while a refusal is searched."""
        return len(self.backlog) + len(self.isolation.held)

    def owes(self) -> bool:
        """Records or rollups not yet written."""
        return (
            bool(self.queued())
            or self.rollups_pending is not None
            or (self.rollups_in_flight is not None)
            or bool(self.rollup_parts)
        )

    def rollups_due(self, now: float, *, now_anyway: bool) -> bool:
        """Rollups to send with the next batch: a retry, or pending ones whose
        interval is up (or that fill ROLLUP_FLUSH_CELLS, or ``now_anyway``)."""
        if self.rollups_in_flight is not None:
            return True
        pending = self.rollups_pending
        return pending is not None and (
            now_anyway or now >= self._rollups_next or len(pending) >= ROLLUP_FLUSH_CELLS
        )

    def owes_now(self, now: float, *, rollups_now: bool) -> bool:
        """Something to write in this round."""
        return bool(self.backlog) or self.rollups_due(now, now_anyway=rollups_now)

    def drop_owed(self, reason: str) -> None:
        """Give up on everything owed, counted under ``reason``."""
        self.dropped[reason] += self.queued()
        self.backlog.clear()
        self._tail_probe = False
        for delta in (self.rollups_pending, self.rollups_in_flight, *self.rollup_parts):
            if delta is not None:
                self.dropped[f"rollups_{reason}"] += delta.requests
                self.dropped[f"custom_rollups_{reason}"] += len(delta.custom)
        self.rollups_pending = self.rollups_in_flight = None
        self.rollup_parts.clear()
        self.isolation.reset()
        self._unanswered = None

    def next_batch(self, limit: int, *, rollups: bool = True) -> tuple[Batch, int]:
        """Up to ``limit`` records, and the rollups when ``rollups``. While a
        refusal is searched (see :mod:`.isolation`): the rollups alone, or a
        part of the suspect records without them.

        After a failed write, the same batch again, with the same
        ``batch_id``: the write may have been stored (a timeout whose write
        completed, a connection lost during the commit), and a sink that
        stores each batch id once (SQLite) then skips it whole. Nothing
        changes the backlog's front meanwhile: records are added at the end,
        and removed only by the outcome of this write or by dropping them all.
        """
        if self._unanswered is None:
            self._unanswered = self._build_batch(limit, rollups=rollups)
        return self._unanswered

    def _build_batch(self, limit: int, *, rollups: bool) -> tuple[Batch, int]:
        isolation = self.isolation
        if isolation.rollups_alone:
            if self.rollups_in_flight is not None:
                return self._records_batch(0, self.rollups_in_flight)
            isolation.rollups_alone = False
        if self._tail_probe:  # does the sink take any record? (see .refusals)
            batch, _ = self._records_batch(0, None)
            record = self.backlog[-1]
            if type(record) is RequestRecord:
                batch.requests.append(record)
            elif type(record) is EventRecord:
                batch.events.append(record)
            else:
                batch.sessions.append(record)  # type: ignore[arg-type]
            return batch, 1
        if isolation.active:
            return self._records_batch(isolation.next_size(limit), None)
        if not rollups and self.rollups_in_flight is None:
            return self._records_batch(limit, None)
        if self.rollups_in_flight is None and self.rollups_pending is not None:
            # Frozen under a new id; a retry resends the same delta and id.
            self._delta_sequence += 1
            self.rollups_pending.delta_id = f"{self._delta_prefix}-{self._delta_sequence:x}"
            self.rollups_in_flight, self.rollups_pending = self.rollups_pending, None
        return self._records_batch(limit, self.rollups_in_flight)

    def _records_batch(self, limit: int, rollups: RollupDelta | None) -> tuple[Batch, int]:
        self._batch_has_rollups = rollups is not None
        self._batch_sequence += 1
        requests, others = self._take.split_left(self.backlog, limit, RequestRecord)
        batch_id = f"{self._delta_prefix}.{self._batch_sequence:x}"
        events: list[EventRecord] = []
        if others and self.keeps_events:  # rare: sessions and events, told apart here
            events = [record for record in others if type(record) is EventRecord]
            if events:
                others = [record for record in others if type(record) is not EventRecord]
        batch = Batch(requests, others, rollups=rollups, batch_id=batch_id, events=events)
        return batch, len(requests) + len(others) + len(events)

    def succeeded(self, taken: int, seconds: float) -> None:
        answered, self._unanswered = self._unanswered, None
        isolation = self.isolation
        if self._tail_probe:  # the sink takes records: the held ones were bad
            self._tail_probe = False
            if answered is not None:  # always: every write's batch comes from next_batch
                self._remove_probed(answered[0])
            isolation.suspect = min(isolation.suspect, len(self.backlog))
            isolation.proven = True
            self.proven()
        else:
            self._take.take_left(self.backlog, taken)  # stored: let them go
            if taken:
                self.proven()
            isolation.stored(taken)
        if self._batch_has_rollups:
            self._rollups_done(refused=False)
        self.written += taken
        self.flushes += 1
        self.last_flush_seconds = seconds
        self.flush_seconds_total += seconds
        if self.consecutive_failures:
            logger.warning(
                "aegis sink %s recovered after %d failed attempts",
                self.name,
                self.consecutive_failures,
            )
        self.consecutive_failures = 0
        self.retry_at = 0.0

    def _remove_probed(self, batch: Batch) -> None:
        """Take the probed record out of the backlog: the last one when the
        probe was built, but a retried probe finds records added after it."""
        backlog = self.backlog
        probed = batch.records()[0]
        for index in range(len(backlog) - 1, -1, -1):
            if backlog[index] is probed:
                del backlog[index]
                return

    def _rollups_done(self, *, refused: bool) -> None:
        """The in-flight delta was stored, or set aside: on to the next part."""
        isolation = self.isolation
        if isolation.rollups_alone:
            isolation.rollups_answered(refused=refused)
        self.rollups_in_flight = self.rollup_parts.popleft() if self.rollup_parts else None
        if self.rollups_in_flight is None:
            isolation.rollups_alone = False
            self._rollups_next = time.monotonic() + ROLLUP_INTERVAL

    def failed(self, exc: BaseException, now: float, *, timed_out: bool) -> None:
        self.errors += 1
        if timed_out:
            self.timeouts += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.retry_at = now + retry_delay(
            self.backoff_initial, self.backoff_max, self.consecutive_failures
        )
        if self.consecutive_failures == 0:
            # One line per burst of failures; recovery is logged in succeeded().
            logger.warning(
                "aegis sink %s failed (%s); keeping %d records and retrying with backoff",
                self.name,
                self.last_error,
                len(self.backlog),
            )
        self.consecutive_failures += 1

    def wait(self, future: Future[Any], deadline: float) -> BaseException | None:
        """Wait for a call until ``deadline`` (monotonic); the error, if any."""
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            if future.done():  # the sink itself raised a TimeoutError
                return future.exception()
            return SinkTimeout(f"write to {self.name} did not return in time; abandoned")
        except BaseException as exc:
            return exc
        return None

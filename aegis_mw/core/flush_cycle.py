"""What one flush does, in the worker thread: drain, finalize, write, retry.

The inbox is moved into each sink's bounded backlog (folding every item into
the realtime ring on the way), then backlogs are written in chunks of
``batch_size``, one chunk per sink per round, all sinks in parallel. A
failing sink keeps its backlog and backs off; a hanging one is abandoned
after ``sink_timeout`` (see :mod:`.sink_runner`); one that refuses a batch
for its content has the refused records found and set aside while the rest
is stored (see :mod:`.isolation`). Nothing here raises: an
unexpected error is logged, counted, and the next cycle starts clean.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from .custom_history import CustomSampler
from .finalize import Finalizer
from .gil_slices import Slices
from .recorder import Recorder
from .retention import Retention
from .sink import is_refusal
from .sink_runner import SinkRunner, SinkTimeout

logger = logging.getLogger("aegis_mw.flusher")

DROP_REPORT_INTERVAL = 10.0
#: Items folded and finalized between two checks of the GIL slice (see
#: :mod:`.gil_slices`) by the Python loops: small enough that one step stays
#: well under a slice (4 to 10 µs an item: 0.13 to 0.3 ms).
INGEST_STEP = 32
#: The same while the compiled loops take every item, about 0.5 µs an item
#: (0.06 ms a step): each step also runs a dozen Python calls around them,
#: which at 32 items cost about 500 instructions an item
#: (``bench/instructions.py``, all-in). A step whose items the Python loops
#: took, even in part (a pure-Python request path's items, sessions, a
#: forwarded header to resolve), makes the next one short again.
COMPILED_INGEST_STEP = 128
#: Items ingested between two looks at a write in flight: while a sink writes
#: (mostly without the GIL: the database's own work, the network) the flusher
#: ingests the rest of the cycle's items, and starts the next write as soon
#: as this one returns (about a third of a millisecond of work).
OVERLAP_STEP = 256


class FlushCycle:
    """Ingest and write steps, and the counters that describe them."""

    def __init__(
        self,
        recorder: Recorder,
        finalizer: Finalizer,
        runners: Sequence[SinkRunner],
        *,
        batch_size: int,
        sink_timeout: float,
        on_first_records: Callable[[], None] | None = None,
    ) -> None:
        self.recorder = recorder
        self.aggregates = recorder.aggregates
        self.finalizer = finalizer
        self.runners = list(runners)
        self.batch_size = batch_size
        self.sink_timeout = sink_timeout
        self.cycles = 0
        self.internal_errors = 0
        # Called once, from the worker, after the first records were ingested.
        self._on_first_records = on_first_records
        self._reported: dict[str, int] = {}
        self._last_report = -math.inf
        #: Set by the owner to prune expired history between writes.
        self.retention: Retention | None = None
        #: The worker thread's slices (see :mod:`.gil_slices`), hurried while
        #: the inbox fills.
        self.slices = Slices(backlog=recorder.fill)
        #: Items taken per step between two checks of the slice: the long step
        #: after a step the compiled loops took whole, else the short one.
        self.ingest_step = INGEST_STEP
        self._long_step = COMPILED_INGEST_STEP if finalizer.compiled else INGEST_STEP
        #: Set by the owner: the app's own metrics, sampled into the rollups
        #: once per 5-second bucket for the sinks that keep history.
        self.custom: CustomSampler | None = None
        # A forced flush (and shutdown) samples them at once.
        self._sample_now = False
        #: Set by the owner (``metrics_exemplars``): takes each step's records
        #: for the exemplars on /metrics.
        self.exemplars: Callable[[list[Any]], None] | None = None

    def reset_after_fork(self) -> None:
        if self.custom is not None:
            self.custom.reset_after_fork()
        self.cycles = self.internal_errors = 0
        self._reported = {}
        self._last_report = -math.inf
        if self.retention is not None:  # the parent's counts and leases stay its own
            self.retention.reset_after_fork()

    def unwritten(self) -> int:
        """Records not yet written, counted once per sink that still owes them."""
        recorder = self.recorder
        waiting = len(recorder.inbox) + (len(recorder.events) if self._event_sinks else 0)
        return waiting + sum(runner.queued() for runner in self.runners)

    # -- a normal cycle --------------------------------------------------------
    def run(self, *, force: bool, stop: Callable[[], bool]) -> bool:
        """Ingest and write; True when every sink's backlog is empty afterwards.

        ``force`` tries sinks in backoff once anyway; ``stop`` turning true
        (shutdown began) abandons the writing so the final flush runs at once.
        """
        self.cycles += 1
        self._sample_now = force
        try:
            # A first batch's worth, so the sinks start writing at once; the
            # rest of what the inbox holds now is ingested while they write.
            budget = len(self.recorder.inbox)
            budget -= self.ingest(min(budget, self.batch_size), rollups=budget <= self.batch_size)
            self.write(force=force, deadline=None, stop=stop, rollups_now=force, budget=budget)
            if self.retention is not None and not stop():
                self.retention.run(
                    self.runners,
                    wall=self.finalizer.clock.wall(),
                    monotonic=time.monotonic(),
                    timeout=self.sink_timeout,
                )
            self.report_drops(time.monotonic())
        except Exception:
            self.internal_errors += 1
            logger.exception("aegis flusher cycle failed; continuing")
            return False
        # Items that arrived during this cycle are the next cycle's business.
        return not any(runner.owes() for runner in self.runners)

    def ingest(
        self, limit: int | None = None, *, rollups: bool = True, new_slice: bool = True
    ) -> int:
        """Move what the inbox holds now (at most ``limit`` items) into every
        sink's backlog, a few items at a time with pauses between slices (see
        :mod:`.gil_slices`); with ``rollups``, the rollups folded so far go to
        the sinks once, at the end. ``new_slice``: the thread was blocked
        until now, so a slice starts; a part of the work that goes on from
        the last one (``_ingest_part``) passes False, or parts shorter than
        a slice would never pause. Returns how many items were taken."""
        recorder = self.recorder
        if recorder.events:
            self._ingest_events()
        fold_drained = self.aggregates.fold_drained
        finalize = self.finalizer.finalize
        thin = self.finalizer.thin if self.finalizer.sample_later else None
        runners = self.runners
        slices = self.slices
        if new_slice:
            slices.begin()
        held = len(recorder.inbox)
        remaining = taken = held if limit is None else min(limit, held)
        while remaining > 0:
            count = min(remaining, self.ingest_step)
            items, malformed = fold_drained(lambda: recorder.drain(count))  # noqa: B023
            remaining -= count
            if self._on_first_records is not None and items:
                hook, self._on_first_records = self._on_first_records, None
                hook()
            invalid_before = self.finalizer.invalid
            records = finalize(items)
            malformed += self.finalizer.invalid - invalid_before
            self.ingest_step = INGEST_STEP if self.finalizer.python_items else self._long_step
            if malformed:
                recorder.dropped["invalid"] += malformed
            # With sample_later, the records of every request go to the sinks
            # that count them, the sample to the others.
            kept = thin(records) if thin is not None else records
            for runner in runners:
                runner.offer(records if runner.counts_records else kept)
            if self.exemplars is not None:
                self._take_exemplars(self.exemplars, kept)
            slices.check()
        if rollups:
            self._offer_rollups()
        return taken

    def _take_exemplars(self, take: Callable[[list[Any]], None], records: list[Any]) -> None:
        """After the records went to the sinks: a failure here loses no record."""
        try:
            take(records)
        except Exception:
            self.internal_errors += 1
            logger.exception("aegis exemplars not taken; continuing")

    def _ingest_events(self) -> None:
        """The app's events queued so far, to each sink that stores events
        (``Aegis.event`` queues none when no sink does)."""
        events = self.recorder.events.take()
        for runner in self._event_sinks:
            runner.offer(events)

    @property
    def _event_sinks(self) -> list[SinkRunner]:
        return [runner for runner in self.runners if runner.keeps_events]

    def _offer_rollups(self) -> None:
        rollups = self.finalizer.take_rollups()
        sampler = self.custom
        if sampler is not None and any(runner.keeps_rollups for runner in self.runners):
            now = self.finalizer.clock.wall()
            if self._sample_now or sampler.due(now):
                rollups.custom, rollups.metrics = sampler.take(now, forced=self._sample_now)
                self._sample_now = False
        if rollups.holds_anything():
            for runner in self.runners:
                runner.offer_rollups(rollups)

    def _ingest_part(self, budget: int, step: int) -> int:
        """Ingest up to ``step`` of the ``budget`` items still to come; the
        rollups go with the last of them. Returns the budget left (0 also when
        the inbox turned out to hold fewer: a fork's child emptied it)."""
        taken = self.ingest(min(budget, step), rollups=False, new_slice=False)
        budget = budget - taken if taken else 0
        if budget <= 0:
            self._offer_rollups()
        return budget

    def write(
        self,
        *,
        force: bool,
        deadline: float | None,
        stop: Callable[[], bool] | None = None,
        rollups_now: bool = True,
        budget: int = 0,
    ) -> None:
        """Write due backlogs in rounds of one chunk per sink, in parallel,
        ingesting ``budget`` more items from the inbox meanwhile: while the
        writes are in flight, else (no sink due) before the next round.

        Rollups go out every ``ROLLUP_INTERVAL`` (see :mod:`.sink_runner`),
        or at once with ``rollups_now`` (a forced flush, shutdown).
        """
        failed: set[int] = set()
        # Sinks written once in this call: spooled batches alone (see
        # .spooling) make a sink due once per call, never in a loop.
        tried: set[int] = set()
        while True:
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (stop is not None and stop()):
                if budget > 0:  # what was ingested is owed; the rest waits in the inbox
                    self._offer_rollups()
                return
            due = [
                runner
                for runner in self.runners
                if id(runner) not in failed
                and (
                    runner.owes_now(now, rollups_now=rollups_now)
                    or (id(runner) not in tried and runner.spool_due(now))
                )
                and (force or now >= runner.retry_at)
            ]
            if not due:
                if budget <= 0:
                    return
                budget = self._ingest_part(budget, self.batch_size)
                continue
            wait_until = now + self.sink_timeout
            if deadline is not None:
                wait_until = min(wait_until, deadline)
            calls = []
            for runner in due:
                with_rollups = runner.rollups_due(now, now_anyway=rollups_now)
                batch, taken = runner.next_batch(self.batch_size, rollups=with_rollups)
                calls.append((runner, taken, runner.call(runner.writer, batch)))
                tried.add(id(runner))
            for runner, taken, future in calls:
                # Never past the write's own deadline: a slow sink is still
                # found slow, not one the flusher kept waiting.
                while budget > 0 and not future.done() and time.monotonic() < wait_until:
                    budget = self._ingest_part(budget, OVERLAP_STEP)
                blocks = not future.done()
                error = runner.wait(future, wait_until)
                if blocks:  # a slice starts after the thread was blocked, not before
                    self.slices.begin()
                finished = time.monotonic()
                if error is None:
                    runner.succeeded(taken, finished - now)
                elif is_refusal(error):
                    # The sink is up and refused content: the next round
                    # writes a smaller part at once (no backoff, see isolation),
                    # unless it refused everything it was given (see refusals).
                    if runner.refused(error, taken, closing=deadline is not None):
                        failed.add(id(runner))
                else:
                    runner.failed(error, finished, timed_out=isinstance(error, SinkTimeout))
                    failed.add(id(runner))

    # -- shutdown ----------------------------------------------------------------
    def final(self, deadline: float) -> bool:
        """Keep trying (with backoff) until everything is written or the
        deadline passes; count what is left as dropped. True when all written."""
        self._sample_now = True  # the app's own metrics as they are at the end
        try:
            first = True
            while True:
                # Backlogs first: a cycle cut short by the shutdown may have
                # ingested without writing, and the inbox may have refilled.
                self.write(force=first, deadline=deadline)
                self.ingest()
                self.write(force=first, deadline=deadline)
                first = False
                now = time.monotonic()
                pending = [runner for runner in self.runners if runner.owes()]
                if not pending or now >= deadline:
                    break
                retry = min(runner.retry_at for runner in pending)
                # Backoff inside the worker thread, never on an event loop.
                time.sleep(max(0.0, min(retry, deadline) - now))
            left = self.unwritten()
            # Rollups (the requests' and the app's own metrics') still owed.
            rollups_left = any(runner.owes() for runner in self.runners)
            for runner in self.runners:
                # Counted as dropped, so gone: a restart must not write them too.
                runner.drop_owed("shutdown_timeout")
            if left:
                logger.warning("aegis shutdown: %d records could not be written in time", left)
            elif rollups_left:
                logger.warning("aegis shutdown: rollups could not be written in time")
            self.report_drops(time.monotonic(), final=True)
            return left == 0 and not rollups_left
        except Exception:
            self.internal_errors += 1
            logger.exception("aegis final flush failed")
            return False

    def close_sinks(self, deadline: float) -> None:
        if self.retention is not None:  # another process prunes from now on
            self.retention.release(self.runners, deadline)
        for runner in self.runners:
            error = runner.wait(runner.call(runner.sink.close), deadline)
            if error is None and runner.spool is not None:  # another process replays from now on
                error = runner.wait(runner.call(runner.spool.close), deadline)
            if error is not None:
                logger.warning("aegis sink %s did not close cleanly: %s", runner.name, error)
            runner.stop()

    # -- reporting ----------------------------------------------------------------
    def drop_counts(self) -> dict[str, int]:
        """Every drop so far: inbox reasons, and sink reasons as ``reason@sink``."""
        counts = dict(self.recorder.dropped)
        counts.update(self.recorder.events.dropped)
        for runner in self.runners:
            for reason, count in runner.dropped.items():
                counts[f"{reason}@{runner.name}"] = count
        return counts

    def report_drops(self, now: float, *, final: bool = False) -> None:
        """At most one warning per ``DROP_REPORT_INTERVAL`` with the counts since the
        last; ``final`` (at shutdown) reports whatever is left regardless."""
        if not final and now - self._last_report < DROP_REPORT_INTERVAL:
            return
        current = self.drop_counts()
        since = {
            reason: count - self._reported.get(reason, 0)
            for reason, count in current.items()
            if count > self._reported.get(reason, 0)
        }
        if not since:
            return
        self._reported = current
        self._last_report = now
        logger.warning(
            "aegis dropped %d records since the last report (%s)",
            sum(since.values()),
            ", ".join(f"{reason}={count}" for reason, count in sorted(since.items())),
        )

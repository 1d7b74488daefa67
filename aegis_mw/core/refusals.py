"""What a sink runner does when its sink refuses a batch for its content.

The search itself (which records, in which probes) is :mod:`.isolation`'s.
This part decides what a record refused on its own costs, and guards against
the one way the search could lose data: a sink that refuses *every* record
(a column added with NOT NULL, a trigger that raises, a bug in a custom
sink) looks, record by record, exactly like a batch of bad records. Setting
each aside would empty the whole backlog into ``rejected``, where an outage
would have kept it until the store was fixed.

So a refused record is set aside only once the sink has shown that it takes
records at all: a record stored since the search began. Until then refused
records are *held* (out of the backlog, still counted as owed). They are set
aside as soon as any later record is stored. Once ``HOLD_LIMIT`` are held
with nothing stored, one record from the far end of the backlog decides: if
the sink takes it (stored out of order; sinks store by id, not by order),
the held ones are its content's fault; if it refuses that one too, or there
is nothing else to try, the sink is treated as failing: every record goes
back to the front of the backlog, and it is retried with backoff, as an
outage is. At shutdown there is no time to wait for proof: refused records
are set aside at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING

from .record import Batch, EventRecord, RequestRecord, Stored

if TYPE_CHECKING:
    from .isolation import Isolation
    from .rollup import RollupDelta

__all__ = ["RefusalHandling", "Stored"]

#: Records refused in a row, nothing stored, before the sink must prove with
#: one record from the end of the backlog that it takes any.
HOLD_LIMIT = 8
#: At most one line per this many seconds tells what a sink refused and why;
#: the refusals in between are counted (and reported with the other drops).
REFUSAL_LOG_INTERVAL = 10.0

logger = logging.getLogger("aegis_mw.flusher")


class SinkRefusesEverything(RuntimeError):
    """A sink refused every record it was given, none stored: handled as an
    outage (records kept, retried with backoff), not as bad records."""


class RefusalHandling:
    """Mixed into :class:`~.sink_runner.SinkRunner` (flusher thread only)."""

    name: str
    backlog: deque[Stored]
    dropped: dict[str, int]
    isolation: Isolation
    rollups_in_flight: RollupDelta | None
    rollup_parts: deque[RollupDelta]
    _batch_has_rollups: bool
    _refusals_unlogged: int
    _refusal_logged_at: float
    #: The batch in flight is one record from the end of the backlog.
    _tail_probe: bool = False
    _unanswered: tuple[Batch, int] | None = None

    def failed(self, exc: BaseException, now: float, *, timed_out: bool) -> None:
        raise NotImplementedError  # SinkRunner's

    def _rollups_done(self, *, refused: bool) -> None:
        raise NotImplementedError  # SinkRunner's

    def refused(self, exc: BaseException, taken: int, *, closing: bool = False) -> bool:
        """The sink refused the last batch for its content: narrow the search
        (see :mod:`.isolation`) and deal with a record found refused. True when
        the sink is now backing off (it refused everything it was given)."""
        isolation = self.isolation
        self._unanswered = None  # refused: rolled back, so nothing of it was stored
        if self._tail_probe:
            self._tail_probe = False
            return self._refuses_everything(exc)
        delta = self.rollups_in_flight if self._batch_has_rollups else None
        if delta is not None and taken == 0:
            self._rollups_refused(exc, delta)
            return False
        if not isolation.batch_refused(taken, with_rollups=delta is not None):
            return False
        record = self.backlog.popleft()
        if closing or isolation.proven:
            self._set_aside([*isolation.held, record], exc)
            isolation.held.clear()
            return False
        isolation.held.append(record)
        isolation.last_refusal = exc
        if not self.backlog:  # nothing left that could prove the sink takes records
            return self._refuses_everything(exc)
        if len(isolation.held) >= HOLD_LIMIT:
            self._tail_probe = True  # the next batch: the backlog's last record
        return False

    def proven(self, exc: BaseException | None = None) -> None:
        """A record was stored: the held ones were refused for their content."""
        held = self.isolation.held
        if held:
            self._set_aside(list(held), exc)
            held.clear()

    def _rollups_refused(self, exc: BaseException, delta: RollupDelta) -> None:
        isolation = self.isolation
        isolation.rollups_answered(refused=True)
        if len(delta) > 1:
            from .isolation import split_delta

            self.rollups_in_flight, second = split_delta(delta)
            self.rollup_parts.appendleft(second)
            isolation.rollups_alone = True
            return
        self.dropped["rollups_rejected"] += delta.requests
        self.dropped["custom_rollups_rejected"] += len(delta.custom)
        what = (
            f"rollups of {delta.requests} requests ({delta.delta_id})"
            if delta.cells
            else f"{len(delta.custom)} custom metric changes ({delta.delta_id})"
        )
        reason = "rollups_rejected" if delta.cells else "custom_rollups_rejected"
        self._log_refusal(exc, what, reason, count=1)
        self._rollups_done(refused=True)

    def _set_aside(self, records: list[Stored], exc: BaseException | None) -> None:
        self.dropped["rejected"] += len(records)
        self.isolation.last_refusal = exc or self.isolation.last_refusal
        if records:
            self._log_refusal(
                self.isolation.last_refusal, _describe(records[0]), "rejected", len(records)
            )

    def _refuses_everything(self, exc: BaseException) -> bool:
        """Every record tried was refused and none stored: all of them back to
        the front of the backlog, in order, and an outage's backoff."""
        isolation = self.isolation
        held = len(isolation.held)
        self.backlog.extendleft(reversed(isolation.held))
        isolation.held.clear()
        isolation.reset()
        self.failed(
            SinkRefusesEverything(
                f"refused every record it was given ({held} in a row, none stored; "
                f"a changed schema or a bug in the sink?): {type(exc).__name__}: {exc}"
            ),
            time.monotonic(),
            timed_out=False,
        )
        return True

    def _log_refusal(self, exc: BaseException | None, what: str, reason: str, count: int) -> None:
        self._refusals_unlogged += count
        now = time.monotonic()
        if now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL:
            return
        # One line per burst: the refusal that opens it, and how many were
        # only counted since the last line.
        logger.warning(
            "aegis sink %s refused %s: %s; set aside and counted as dropped (%s)%s",
            self.name,
            what,
            f"{type(exc).__name__}: {exc}" if exc is not None else "refused",
            reason,
            f"; {self._refusals_unlogged - 1} more since the last report"
            if self._refusals_unlogged > 1
            else "",
        )
        self._refusals_unlogged = 0
        self._refusal_logged_at = now

    def _reset_refusal_log(self) -> None:
        self._refusals_unlogged = 0
        self._refusal_logged_at = -math.inf


def _describe(record: Stored) -> str:
    """A refused record, for the log: its id and its path (an event's source), shortened."""
    if type(record) is EventRecord:
        return f"event {record.event_id[:80]!r} (source {record.source[:80]!r})"
    kind = "request" if type(record) is RequestRecord else "session"
    return f"{kind} {record[0]} (path {record.path[:80]!r})"  # type: ignore[union-attr]

"""A remote store's outage, kept on local disk: write through, spool, replay.

With ``spool_dir`` set, each remote sink's writes (PostgreSQL's, or a
custom sink's that sets ``remote = True``) go through a :class:`Spooled`,
on the sink's own thread. While the store takes them, batches go straight
to it. When a write fails for want of the store (not a refusal of content),
the batch is put in the spool, a file on local disk, and counts as written:
it survives the process (a restart, a deploy, a crash), where a backlog in
memory would not. From then on, until the spool is empty again, every
batch goes to the end of the spool, so the store receives the records in
the order they came; and each write first replays the oldest spooled
batches, for at most :data:`REPLAY_SHARE` of ``sink_timeout``, once the
store's backoff is over.

A replayed batch keeps its ``batch_id`` and its rollups' ``delta_id``, so
a batch stored twice (the connection lost after the commit, or two
processes replaying) is stored once. One process of the app replays a sink
at a time, by a lease in the spool file (:mod:`aegis_mw.sinks.spool_file`).
A replayed batch the store refuses for its content is split into halves
(and its rollups sent alone) under ids derived from its own, down to the
single records refused, which are counted and let go; the ids are the same
each time, so a replay cut short and done again stores nothing twice.

The spool is bounded (``spool_max_bytes``, all its sinks together). A batch
that does not fit stays in the sink's backlog in memory, the write counted
as failed with the store's error: from there it is retried, or dropped as
``backlog_full`` when that is full too, counted as ever.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import spool_codec
from .gil_slices import Paced, Slices
from .record import Batch
from .sink import is_refusal, retry_delay
from .spool_salvage import ReplayCut, Salvage

logger = logging.getLogger("aegis_mw.flusher")

#: The share of ``sink_timeout`` one write may spend replaying, so that a
#: write with a replay in it still returns in time.
REPLAY_SHARE = 0.25
#: How often a process whose writes go straight to the store looks at the
#: spool anyway: another process of the app may have left batches in it.
LOOK_INTERVAL = 5.0


class SpoolFull(RuntimeError):
    """The spool has no room for a batch under ``spool_max_bytes``."""


@dataclass(frozen=True)
class SpoolView:
    """What the spool holds for one sink."""

    batches: int = 0
    records: int = 0
    bytes: int = 0
    #: Start of the earliest spooled record (seconds since the epoch), or 0.
    oldest: float = 0.0


class SpoolStore(Protocol):
    """The spool's storage for one sink (:class:`aegis_mw.sinks.spool_file.SpoolFile`)."""

    limit_bytes: int

    #: The last :meth:`first` found batches another process of the app replays.
    replayed_elsewhere: bool

    def append(self, batch_id: str, records: int, oldest: float, payload: bytes) -> bool:
        """Add a batch at the end; False when its ``batch_id`` is there
        already; :class:`SpoolFull` when it would take the spool over its bound."""

    def first(self) -> tuple[int, int, bytes] | None:
        """The oldest spooled batch (sequence number, records, payload) for this
        process to replay, or None: nothing spooled, or another process of
        the app replays this sink."""

    def after(self, sequence: int) -> tuple[int, int, bytes] | None:
        """The spooled batch next after ``sequence``, or None."""

    def remove(self, sequence: int) -> None: ...

    def view(self) -> SpoolView: ...

    def release(self) -> None:
        """Let another process replay at once (this one stops)."""

    def close(self) -> None: ...

    def reset_after_fork(self) -> None: ...


class Spooled(Paced):
    """One remote sink's writes, through the spool; called on the sink's thread.
    Its pauses between slices are paced as the sink's (see :class:`.gil_slices.Paced`).

    Example::

        spooled = Spooled(sink.write, SpoolFile(path, sink.name, limit), sink_timeout=5.0)
        spooled(batch)  # stored, or spooled; raises only what the runner must see
    """

    def __init__(
        self,
        write: Callable[[Batch], None],
        store: SpoolStore,
        *,
        sink_timeout: float,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.write = write
        self.store = store
        self.replay_seconds = sink_timeout * REPLAY_SHARE
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.wall = wall
        #: When the store may be tried again (monotonic); 0 while it answers.
        self.retry_at = 0.0
        self.failures = 0
        self.last_error = ""
        #: Records this process put in the spool, replayed from it, and let
        #: go: refused by the store on replay, or unreadable (see also
        #: rollups_rejected: requests whose rollup delta the store refused).
        self.spooled = 0
        self.replayed = 0
        self.rejected = 0
        self.rollups_rejected = 0
        self.custom_rollups_rejected = 0
        self.unreadable = 0
        #: What the spool holds for this sink, as last read: at start (batches
        #: left by a process before this one are replayed without traffic),
        #: then after each write, and every LOOK_INTERVAL.
        self.view = store.view()
        self._next_look = time.monotonic() + LOOK_INTERVAL

    # -- what the flusher reads (its thread) ---------------------------------
    def due(self, now: float) -> bool:
        """Batches are spooled and the store may be tried: a write to replay them."""
        return self.view.batches > 0 and now >= self.retry_at

    # -- the sink's thread ----------------------------------------------------
    def __call__(self, batch: Batch) -> None:
        now = time.monotonic()
        if now >= self._next_look:
            self._look(now)
        if self.view.batches or now < self.retry_at:
            replayed = False
            if now >= self.retry_at:
                replayed = self._replay(now + self.replay_seconds)
            # After a replay the batch waits its turn in the spool: a write
            # straight to the store now could take this call past sink_timeout.
            if replayed or self.view.batches or time.monotonic() < self.retry_at:
                self._append(batch)
                return
        self._direct(batch)

    def _direct(self, batch: Batch) -> None:
        try:
            self.write(batch)
        except Exception as exc:
            if is_refusal(exc):
                raise  # the runner finds the records refused
            self._down(exc)
            try:
                self._append(batch)
            except SpoolFull:
                raise exc from None  # kept in memory, retried by the runner
            return
        self._up()

    def _append(self, batch: Batch) -> None:
        if not batch and batch.rollups is None:
            return
        if not batch.batch_id:  # built by hand: an id of its own, so that it is stored once
            batch = Batch(
                batch.requests, batch.sessions, batch.rollups, f"s{os.urandom(8).hex()}",
                events=batch.events,
            )  # fmt: skip
        slices = Slices(backlog=self._backlog)
        payload = spool_codec.encode(batch, slices.check)
        oldest = spool_codec.oldest(batch, self.wall())
        if self.store.append(batch.batch_id, len(batch), oldest, payload):
            self.spooled += len(batch)  # not again for a batch resent after a timeout
        self._look(time.monotonic())

    def _replay(self, deadline: float) -> bool:
        """Replay the oldest batches until ``deadline``; True when any went in."""
        slices = Slices(backlog=self._backlog)
        answered = False  # by the store: a batch stored, whole or in part
        try:
            while time.monotonic() < deadline:
                row = self.store.first()
                if row is None:
                    if self.store.replayed_elsewhere:  # its replayer knows the store
                        self.failures, self.last_error = 0, ""
                    break
                sequence, records, payload = row
                batch = self._decoded(sequence, records, payload, slices)
                if batch is None:
                    continue
                self._store(batch, sequence, deadline, slices)
                answered = True
                self.store.remove(sequence)
        except ReplayCut:
            answered = True
        except Exception as exc:  # the store went away again, or the spool file failed
            self._down(exc)
        else:
            if answered:
                self._up()
        self._look(time.monotonic())
        return answered

    def _decoded(self, sequence: int, records: int, payload: bytes, slices: Slices) -> Batch | None:
        """The spooled batch, or None (let go, counted) when it cannot be read."""
        try:
            return spool_codec.decode(payload, slices.check)
        except spool_codec.SpoolCorrupt as exc:
            logger.error("aegis spool: an unreadable batch of %d records was let go (%s)",
                         records, exc)  # fmt: skip
            self.unreadable += records
            self.store.remove(sequence)
            return None

    def _store(self, batch: Batch, sequence: int, deadline: float, slices: Slices) -> None:
        """Write a replayed batch; when the store refuses it, what it takes of
        it (see :mod:`.spool_salvage`), the refused records counted and let go."""
        try:
            self.write(batch)
            self.replayed += len(batch)
            return
        except Exception as exc:
            if not is_refusal(exc):
                raise
        salvage = Salvage(self.write, deadline)

        def proof() -> bool:
            """The next spooled batch, stored whole: the store takes records."""
            row = self.store.after(sequence)
            if row is None:
                return False
            following = self._decoded(*row, slices)
            if following is None:
                return proof()
            try:
                self.write(following)
            except Exception as exc:
                if not is_refusal(exc):
                    raise
                return False
            self.store.remove(row[0])
            self.replayed += len(following)
            return True

        salvage.run(batch, proof)  # counted once the search is done, not for parts of one cut short
        self.replayed += salvage.stored
        self.rejected += len(salvage.held)
        self.rollups_rejected += salvage.held_rollups
        self.custom_rollups_rejected += salvage.held_custom
        logger.error(
            "aegis spool: the store refused %d records, the rollups of %d requests and %d "
            "changes of the app's own metrics of a spooled batch, which were let go (%s)",
            len(salvage.held), salvage.held_rollups, salvage.held_custom, salvage.refusal,
        )  # fmt: skip

    def _look(self, now: float) -> None:
        self.view = self.store.view()
        self._next_look = now + LOOK_INTERVAL

    def _up(self) -> None:
        if self.failures:
            logger.warning("aegis sink spool: the store answers again after %d failures",
                           self.failures)  # fmt: skip
        self.failures = 0
        self.retry_at = 0.0

    def _down(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.failures:  # one line per outage; the recovery is logged in _up
            logger.warning("aegis sink spool: the store is unavailable (%s); spooling",
                           self.last_error)  # fmt: skip
        self.retry_at = time.monotonic() + retry_delay(
            self.backoff_initial, self.backoff_max, self.failures
        )
        self.failures += 1

    def close(self) -> None:
        self.store.release()
        self.store.close()

    def reset_after_fork(self) -> None:
        """A forked child: its own connection and counts; the spool stays shared."""
        self.store.reset_after_fork()
        self.spooled = self.replayed = self.rejected = self.rollups_rejected = 0
        self.custom_rollups_rejected = 0
        self.unreadable = self.failures = 0
        self.retry_at = self._next_look = 0.0
        self.last_error = ""

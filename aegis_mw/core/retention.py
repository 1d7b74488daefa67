"""Retention: expired history deleted in small steps by the flusher thread.

Once a minute (and every cycle while there is a backlog of expired rows),
each history sink is asked to delete at most :data:`PRUNE_BATCH` expired rows
per table, on its own thread between writes. Each step is a short
transaction, so a first cleanup of millions of rows never holds a write or
a reader for long; a failing prune is logged and tried again later, it never
counts against the sink's writes.

One process of the app prunes at a time: the one holding the ``retention``
lease in the shared store (see :mod:`.leases`), for sinks that keep leases
(SQLite, PostgreSQL). Every worker of every host would otherwise delete the
same expired rows, each waiting for the others' write locks. The holder
renews the lease at each prune; when it stops (a clean shutdown gives the
lease up at once) or dies (the lease runs out, see :func:`lease_seconds`),
the next process to try takes over. Two processes pruning at once (one
that stalled past its lease) would only delete rows twice over: nothing
else depends on who prunes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from . import leases
from .sink_runner import SinkRunner

logger = logging.getLogger("aegis_mw.flusher")

PRUNE_BATCH = 10_000
PRUNE_INTERVAL = 60.0
#: The lease's name in the store, and how long it outlives the holder's last
#: prune by default: three intervals, so a holder late by one keeps it, and a
#: dead one's work is taken over within about four minutes. The owner passes
#: three flush intervals when they are longer (retention runs in a flush
#: cycle) and the sink's timeout on top (see :func:`lease_seconds`).
LEASE = "retention"
LEASE_SECONDS = 3 * PRUNE_INTERVAL


def lease_seconds(flush_interval: float, sink_timeout: float) -> float:
    """How long a retention lease lasts for a pipeline flushing every
    ``flush_interval`` seconds: three of its prunes, however late, fit."""
    return 3 * max(PRUNE_INTERVAL, flush_interval) + sink_timeout


class Retention:
    """How long records and each rollup resolution are kept, and when to prune.

    ``horizons`` maps a rollup resolution (seconds) to how long it is kept;
    records are kept ``raw_seconds``.
    """

    def __init__(
        self,
        raw_seconds: float,
        horizons: Mapping[int, float],
        *,
        lease_seconds: float = LEASE_SECONDS,
        watch_hosts: bool = False,
    ) -> None:
        #: Whether to ask the store which hosts write to it (with no live
        #: transport, several hosts each show only their own live figures).
        self.watch_hosts = watch_hosts
        self.raw_seconds = raw_seconds
        self.horizons = dict(horizons)
        self.lease_seconds = lease_seconds
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """A fresh start (in a forked child, too: its counts and leases are its
        own, and it prunes at its first cycle if it can take the lease)."""
        self.next_run = 0.0
        #: Sinks (by runner name) whose lease this process held at its last
        #: try; a sink tried and not held is there as False.
        self.held: dict[str, bool] = {}
        #: Rows deleted and prunes failed, by sink (runner name).
        self.deleted_by_sink: dict[str, int] = {}
        self.failures_by_sink: dict[str, int] = {}
        self._holder = ("", -1)
        #: The hosts that write to a shared store (sinks with ``hosts_seen``)
        #: while they renew their lease; asked only while ``watch_hosts``.
        self.hosts: list[str] = []
        self._expiries: dict[str, float] = {}
        self._renewed: set[str] = set()

    @property
    def deleted(self) -> int:
        """Rows this process deleted, every sink together."""
        return sum(self.deleted_by_sink.values())

    @property
    def failures(self) -> int:
        """Prunes that failed, every sink together."""
        return sum(self.failures_by_sink.values())

    @property
    def holder(self) -> str:
        """This process's name as a lease holder: host, process id and a random
        part (a process id is reused)."""
        name, pid = self._holder
        if pid != os.getpid():
            pid = os.getpid()
            name = leases.holder_id()
            self._holder = (name, pid)
        return name

    def run(
        self, runners: Sequence[SinkRunner], *, wall: float, monotonic: float, timeout: float
    ) -> None:
        """Prune each history sink once if it is time; never raises."""
        if monotonic < self.next_run:
            return
        more = False
        raw_before = wall - self.raw_seconds
        rollups_before = {level: wall - kept for level, kept in self.horizons.items()}
        for runner in runners:
            if not runner.keeps_rollups or getattr(runner.sink, "prune", None) is None:
                continue
            # A sink that is failing its writes is left alone until it recovers;
            # its lease runs out meanwhile, so it no longer counts as held.
            if runner.consecutive_failures:
                if runner.name in self.held:
                    self.held[runner.name] = False
                continue
            future = runner.call(
                _prune_held, runner.sink, self.holder, wall, raw_before, rollups_before,
                self.lease_seconds, self.watch_hosts,
            )  # fmt: skip
            error = runner.wait(future, monotonic + timeout)
            if error is not None:
                # Not known to be held (a claim that timed out may still
                # succeed: the release at shutdown is tried all the same).
                self.held[runner.name] = False
                failures = self.failures_by_sink
                failures[runner.name] = failures.get(runner.name, 0) + 1
                logger.warning("aegis retention on %s failed: %s", runner.name, error)
                continue
            result, hosts = future.result()
            if hosts:
                self._saw_hosts(hosts)
            self.held[runner.name] = result is not None
            if result is None:  # another process of the app prunes
                continue
            deleted = int(result)
            by_sink = self.deleted_by_sink
            by_sink[runner.name] = by_sink.get(runner.name, 0) + deleted
            more = more or deleted >= PRUNE_BATCH
        # While expired rows remain, keep going a batch per cycle.
        self.next_run = monotonic if more else monotonic + PRUNE_INTERVAL

    def _saw_hosts(self, seen: list[tuple[str, float]]) -> None:
        """Another host counts while its lease is renewed: its expiry moved on
        since this process's last look, or at the look before (a renewal can
        fall either side of a look). A host that stopped renewing (killed, or
        gone in a rolling deploy) drops out within two looks; one seen for a
        moment (the overlap of a deploy) never counts."""
        mine = leases.host_of(self.holder)
        expiries = dict(seen)
        renewed = {
            host for host, expiry in expiries.items()
            if host in self._expiries and expiry > self._expiries[host]
        }  # fmt: skip
        hosts = sorted({mine, *renewed, *(self._renewed & expiries.keys())})
        self._expiries, self._renewed = expiries, renewed
        if len(hosts) > 1 and hosts != self.hosts:
            logger.warning(
                "aegis_mw: %d hosts write to this store (%s) and live_transport is not set: "
                "each host's live views show its own traffic only; set live_transport on every "
                "host (docs/deployment.md, Several hosts)", len(hosts), ", ".join(hosts),
            )  # fmt: skip
        self.hosts = hosts

    def release(self, runners: Sequence[SinkRunner], deadline: float) -> None:
        """Give up the leases this process holds (a clean shutdown), so another
        process takes the pruning over at its next try; never raises."""
        for runner in runners:
            release = getattr(runner.sink, "release_lease", None)
            # Every sink tried: a claim may have succeeded after its wait ran
            # out; the release changes nothing where another process holds it.
            if release is None or runner.name not in self.held:
                continue
            self.held[runner.name] = False
            error = runner.wait(runner.call(_release_leases, release, self.holder), deadline)
            if error is not None:  # it runs out by itself
                logger.warning("aegis retention lease on %s not given up: %s", runner.name, error)


def _release_leases(release: Any, holder: str) -> None:
    """On the sink's thread: the retention lease, and this host's (when this
    process holds it: the host leaves the count at once, not after it)."""
    release(LEASE, holder)
    release(leases.HOST_PREFIX + leases.host_of(holder), holder)


def _prune_held(
    sink: Any,
    holder: str,
    wall: float,
    raw_before: float,
    rollups_before: Mapping[int, float],
    lease_seconds: float,
    watch_hosts: bool = False,
) -> tuple[int | None, list[tuple[str, float]]]:
    """On the sink's thread: prune when this process holds the lease (or the
    sink keeps none): rows deleted, None when another process holds it; and
    the hosts that write to the store (``watch_hosts`` and a sink that knows)."""
    seen = getattr(sink, "hosts_seen", None)
    hosts: list[tuple[str, float]] = []
    if watch_hosts and seen is not None:
        try:
            hosts = seen(holder, wall, lease_seconds)
        except Exception as exc:  # a question of the live views: never fails the prune
            logger.debug("aegis_mw: the hosts sharing %s not read: %s", sink, exc)
    claim = getattr(sink, "claim_lease", None)
    if claim is not None and not claim(LEASE, holder, wall, lease_seconds):
        return None, hosts
    return int(sink.prune(raw_before, rollups_before, PRUNE_BATCH)), hosts

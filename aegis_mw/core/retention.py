"""Retention: expired history deleted in small steps by the flusher thread.

Once a minute (and every cycle while there is a backlog of expired rows),
each history sink is asked to delete at most :data:`PRUNE_BATCH` expired rows
per table, on its own thread between writes. Each step is a short
transaction, so a first cleanup of millions of rows never holds a write or
a reader for long; a failing prune is logged and tried again later, it never
counts against the sink's writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from .sink_runner import SinkRunner

logger = logging.getLogger("aegis_mw.flusher")

PRUNE_BATCH = 10_000
PRUNE_INTERVAL = 60.0


class Retention:
    """How long records and each rollup resolution are kept, and when to prune.

    ``horizons`` maps a rollup resolution (seconds) to how long it is kept;
    records are kept ``raw_seconds``.
    """

    def __init__(self, raw_seconds: float, horizons: Mapping[int, float]) -> None:
        self.raw_seconds = raw_seconds
        self.horizons = dict(horizons)
        self.next_run = 0.0
        self.deleted = 0
        self.failures = 0

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
            # A sink that is failing its writes is left alone until it recovers.
            if not runner.keeps_rollups or runner.consecutive_failures:
                continue
            prune = getattr(runner.sink, "prune", None)
            if prune is None:
                continue
            future = runner.call(prune, raw_before, rollups_before, PRUNE_BATCH)
            error = runner.wait(future, monotonic + timeout)
            if error is not None:
                self.failures += 1
                logger.warning("aegis retention on %s failed: %s", runner.name, error)
                continue
            deleted = int(future.result())
            self.deleted += deleted
            more = more or deleted >= PRUNE_BATCH
        # While expired rows remain, keep going a batch per cycle.
        self.next_run = monotonic if more else monotonic + PRUNE_INTERVAL

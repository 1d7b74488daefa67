"""A spooled batch the store refused on replay: what of it the store takes.

The same search the runner makes for live batches (:mod:`.refusals`), on
one batch: its rollups are sent alone, then its records and the rollups'
cells in halves, depth first, under ids derived from the batch's own
(``<id>.r``, ``<id>.n``, then ``.0``/``.1``), the same each time, so a
search cut short and made again stores nothing twice. Single records (and
single cells) refused are *held*: let go only once the store has shown it
takes records at all, by storing one of this batch or, when none of it
went in, the next spooled batch whole. A store that refuses everything
(a column added NOT NULL, a trigger that raises) looks record by record
like a batch of bad records; without that proof the batch is kept and the
store backed off from, as in an outage. The search stops at the replay's
deadline and goes on at the next write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .isolation import split_delta
from .record import Batch
from .refusals import HOLD_LIMIT, SinkRefusesEverything
from .sink import is_refusal


class ReplayCut(RuntimeError):
    """The replay's time ran out in the middle of a search (not an outage)."""


class Salvage:
    """One refused batch's search; :meth:`run` raises what the replay must see."""

    def __init__(self, write: Callable[[Batch], None], deadline: float) -> None:
        self.write = write
        self.deadline = deadline
        self.stored = 0
        #: A part went in (records, or rollups alone): the store takes writes,
        #: so rollup cells it refused alone were refused for their content
        #: (records held need a stored record, or the proof, as before).
        self.took = False
        #: Records refused on their own, and requests of cells refused alone.
        self.held: list[Any] = []
        self.held_rollups = 0
        #: The app's own metrics' cells refused alone.
        self.held_custom = 0
        #: The next spooled batch went in whole: the held ones are bad.
        self.proven = False
        self.refusal: BaseException | None = None

    def run(self, batch: Batch, proof: Callable[[], bool]) -> None:
        """Store what the store takes of ``batch``; ``proof`` stores the next
        spooled batch whole (True when it did) for a batch none of which went
        in. :class:`SinkRefusesEverything` without proof, :class:`ReplayCut`
        when the deadline passes."""
        stack: list[Batch] = [Batch.of(batch.records(), f"{batch.batch_id}.n")]
        if batch.rollups is not None:
            stack.append(Batch(rollups=batch.rollups, batch_id=f"{batch.batch_id}.r"))
        while stack:
            if time.monotonic() >= self.deadline:
                raise ReplayCut("the replay's time ran out during a search; it goes on next")
            part = stack.pop()
            if self._stored(part):
                continue
            stack.extend(reversed(_halves(part)))  # the first half next
            if len(self.held) >= HOLD_LIMIT and not (self.stored or self.proven):
                self._prove(proof)
        records_unproven = self.held and not (self.stored or self.proven)
        cells_unproven = (self.held_rollups or self.held_custom) and not (self.took or self.proven)
        if records_unproven or cells_unproven:
            self._prove(proof)

    def _stored(self, part: Batch) -> bool:
        try:
            self.write(part)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            self.refusal = exc
        else:
            self.stored += len(part)
            self.took = True
            return True
        if part.rollups is not None and len(part.rollups) == 1:
            self.held_rollups += part.rollups.requests
            self.held_custom += len(part.rollups.custom)
        elif len(part) == 1:
            self.held.extend(part.records())
        return False

    def _prove(self, proof: Callable[[], bool]) -> None:
        if not proof():
            raise SinkRefusesEverything(
                f"the store refused every record of a spooled batch tried ({self.refusal})"
            )
        self.proven = True


def _halves(part: Batch) -> list[Batch]:
    """Two parts of a refused part of two or more records (or cells); none of one."""
    if part.rollups is not None:
        if len(part.rollups) < 2:
            return []
        first, second = split_delta(part.rollups)
        return [
            Batch(rollups=first, batch_id=f"{part.batch_id}.0"),
            Batch(rollups=second, batch_id=f"{part.batch_id}.1"),
        ]
    records = len(part)
    if records < 2:
        return []
    # The first half of the records in order (requests, sessions, events), and the rest.
    every = part.records()
    half = records // 2
    return [
        Batch.of(every[:half], f"{part.batch_id}.0"),
        Batch.of(every[half:], f"{part.batch_id}.1"),
    ]

"""Finding the records a sink refuses, without holding up the others.

When a sink refuses a batch for its content (:class:`~.sink.RecordRejected`)
the records at the front of its backlog that were in that batch become
*suspect*. They are written again in smaller batches taken from the front, so
order is kept and nothing is written twice: a batch that is refused is
halved, one that is stored takes the next ones; a single record refused is
set aside (counted as ``rejected``). Since a refusal is about content, it is
the same on every try, and the search can use what it learnt: after a part
of a refused batch was stored, the rest of it holds a refused record, so the
next try takes half of that. Once a record was set aside, the rest is tried
whole (refused records are usually few and far between); when a second one
is set aside before anything was stored, the tries start from one record and
grow by doubling instead. Finding one refused record among ``n`` takes at
most ``log2(n) + 3`` writes, ``k`` of them about ``k * log2(n)``. A sink
that refuses every record is not taken for a batch of bad records (see
:mod:`.refusals`): a record refused alone is set aside only once the sink has
stored another. All of it happens against a sink that just answered, so it
never adds attempts against storage that is down: an outage is a different
error, and backs off as always.

Rollups travel with a batch. A refused batch's rollups are written alone
first (the same delta and id), which tells whether they or the records were
refused; the probes that follow carry none, so a delta is never applied
twice nor lost with a record. A delta refused on its own is split in halves
with derived ids (it was never applied, or it would have been skipped by its
id) until the refused cells are found and set aside.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .rollup import RollupDelta


class Isolation:
    """The search's state for one sink (flusher thread only).

    ``suspect`` counts the records at the front of the backlog not yet stored
    since a refusal; ``probe`` is the size of the next try; ``bad_within`` is
    the length of a front run known to hold a refused record (0: unknown).
    ``held`` keeps records refused on their own until a record stored proves
    the sink takes any (``proven``; see :mod:`.refusals`).
    """

    __slots__ = (
        "bad_within",
        "held",
        "last_refusal",
        "probe",
        "proven",
        "rejected_since_stored",
        "rollups_alone",
        "rollups_verdict",
        "suspect",
    )

    def __init__(self) -> None:
        self.held: deque[Any] = deque()
        self.last_refusal: BaseException | None = None
        #: A record was stored since this search began: refusals are content.
        self.proven = False
        self.suspect = 0
        self.probe = 0
        self.bad_within = 0
        self.rejected_since_stored = False
        #: Send the in-flight rollups with no records: after a refused batch
        #: that carried them, and for the parts of a refused delta.
        self.rollups_alone = False
        #: The refused batch carried rollups: until they are tried alone, it is
        #: not known whether the records were refused at all.
        self.rollups_verdict = False

    @property
    def active(self) -> bool:
        return self.suspect > 0

    def next_size(self, limit: int) -> int:
        return max(1, min(self.probe, self.suspect, limit))

    def batch_refused(self, taken: int, *, with_rollups: bool) -> bool:
        """A batch of ``taken`` front records was refused; True when it was
        one record known to be refused on its own (set it aside)."""
        if with_rollups:
            # Records and rollups together: the rollups go alone next, the
            # records are tried again whole until their verdict is known.
            self.rollups_alone = self.rollups_verdict = True
            self.suspect = max(self.suspect, taken)
            self.probe = self.suspect
            self.bad_within = 0
            return False
        if taken == 1:
            self.suspect = max(self.suspect - 1, 0)
            self.bad_within = 0
            # The rest whole, unless refusals come in a row: then one by one.
            self.probe = 1 if self.rejected_since_stored else self.suspect
            self.rejected_since_stored = True
            return True
        self.suspect = max(self.suspect, taken)
        self.bad_within = taken
        self.probe = taken // 2
        return False

    def stored(self, taken: int) -> None:
        """``taken`` front records were stored."""
        self.rejected_since_stored = False
        if not self.suspect:
            self.proven = False
            return
        self.suspect = max(self.suspect - taken, 0)
        self.proven = self.proven or taken > 0
        if not self.suspect:
            self.probe = self.bad_within = 0
            self.proven = False  # the search is over: the next one proves anew
            return
        if self.bad_within > taken:
            # The rest of the refused run holds the refused record: halve it.
            self.bad_within -= taken
            self.probe = max(1, self.bad_within // 2)
        else:
            self.bad_within = 0
            self.probe *= 2

    def rollups_answered(self, *, refused: bool) -> None:
        """The rollups were tried alone after a refused batch that carried them."""
        if self.rollups_verdict and not refused and self.suspect:
            # They were fine, so the records were refused: search them.
            self.bad_within = self.suspect
            self.probe = max(1, self.suspect // 2)
        self.rollups_verdict = False

    def reset(self) -> None:
        """Forget the search (its held records counted or given back first)."""
        self.held.clear()
        self.last_refusal = None
        self.suspect = self.probe = self.bad_within = 0
        self.rejected_since_stored = self.rollups_alone = self.rollups_verdict = False
        self.proven = False


def split_delta(delta: RollupDelta) -> tuple[RollupDelta, RollupDelta]:
    """Two halves of a delta of at least two cells (request cells, then the
    custom metrics' ones), under ids derived from its own (``<id>.0``,
    ``<id>.1``; generated ids hold no dot, so these never meet another
    delta's). Request counts are split so the halves add up; each half
    describes the metrics of its cells."""
    cells = list(delta.cells.items())
    custom = list(delta.custom.items())
    half = (len(cells) + len(custom)) // 2
    first, second = RollupDelta(), RollupDelta()
    first.cells = dict(cells[:half])
    second.cells = dict(cells[half:])
    first.custom = dict(custom[: max(half - len(cells), 0)])
    second.custom = dict(custom[max(half - len(cells), 0) :])
    first.requests = sum(cell[0] for _, cell in cells[:half])
    second.requests = delta.requests - first.requests
    # Each half describes only its own metrics: a description the store
    # refuses is then found with the cells of its metric, not with every half.
    for part in (first, second):
        names = {metric for _, metric, _ in part.custom}
        part.metrics = {name: m for name, m in delta.metrics.items() if name in names}
    first.delta_id = f"{delta.delta_id}.0"
    second.delta_id = f"{delta.delta_id}.1"
    return first, second

"""The compiled pipeline loops' pending sums (``_hotpath.FoldPending``).

The compiled fold and finalize loops add a request's counts into C numbers,
not into the Python lists of the realtime ring, the per-label totals and the
rollup cells; the owner settles them (writes them into the lists) before
anyone reads the lists or the Python code changes them. See
``_hotpath_c/fold_pending.c``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("aegis_mw.flusher")

#: The compiled pipeline loops' calling convention this code calls them by
#: (``_hotpath.PIPELINE_LOOPS``): a module built for another (an older build
#: left in place) is not used for them.
PIPELINE_LOOPS = 3


def loops_fit(compiled: Any) -> bool:
    """Whether the compiled module's pipeline loops are the ones this code calls."""
    return getattr(compiled, "PIPELINE_LOOPS", None) == PIPELINE_LOOPS


def settle_or_drop(owner: Any, what: str) -> None:
    """Settle ``owner._pending`` (a ``_hotpath.FoldPending``). Out of memory
    it raises with the sums kept; if a list it has sums for changed shape
    under it (nothing in this package does that), the settle drops them, as
    they cannot be written, and that is logged here, once, rather than fail
    every read after."""
    try:
        owner._pending.settle()
    except RuntimeError:
        logger.exception("aegis_mw: pending sums of the %s dropped", what)


def settled(owner: Any, what: str) -> bool:
    """:func:`settle_or_drop`; False when out of memory (the sums kept, so
    the caller must not let the Python code add to those lists yet)."""
    try:
        settle_or_drop(owner, what)
    except MemoryError:
        return False
    return True

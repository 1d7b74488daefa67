"""The API's uses of the history's store that are not history reads.

The incidents, the alert store (silences, history, audit) and the audit log
live in the history sink's store. While its breaker knows
the store is down (:mod:`aegis_mw.history.breaker`), these answer 503
``storage_unavailable`` with ``Retry-After`` at once, after their input was
checked (a bad request is still a 400), instead of each waiting in a read
thread for the store's timeout. When a probe is due, the first of them
probes the store with a read of nothing (``GuardedSource.probe``): the store
answering closes the breaker, failing to reach it opens it again (the use
answers 503 after that read, the next ones at once), so an app whose only
API traffic is incidents or alerts finds the store back, or down again,
without a history read. The use itself runs only once the breaker is
closed, and its own reads and writes never open it: their timeouts are
their own, and a write that fails on a lock is no outage of the reads.
(The audit's write of posted events goes through the breaker as a read
does, see ``events._audit``, so that a post's answer never waits for a
store known to be down twice.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..history.breaker import StoreUnavailable
from .response import Response

if TYPE_CHECKING:
    from ..aegis import Aegis

__all__ = ["StoreUnavailable", "known_down", "refuse_while_down"]


def refuse_while_down(aegis: Aegis) -> None:
    """Raise :class:`StoreUnavailable` while the history's store is known to
    be down; when a probe is due, probe it with a read first (no history
    sink: nothing to know; the breaker closed: nothing to do)."""
    history = aegis.reads.history
    if history is not None and history.breaker.state != "closed":
        history.probe()


def known_down(store: str, error: StoreUnavailable) -> Response:
    """The answer of a use refused while the store is known down (a write, a
    read, a dry run, a channel test): 503 with the breaker's Retry-After (the
    breaker logged the outage; the use was not tried)."""
    return Response.error(
        503, "storage_unavailable",
        f"{store} cannot be reached now; retry after the Retry-After seconds",
        retry_after=str(error.retry_after),
    )  # fmt: skip

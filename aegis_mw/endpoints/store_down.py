"""The API's uses of the history's store that are not history reads.

The incidents, the alert store (silences, history, audit) and the audit log
live in the history sink's store. While its breaker knows
the store is down (:mod:`aegis_mw.history.breaker`), these answer 503
``storage_unavailable`` with ``Retry-After`` at once, after their input was
checked (a bad request is still a 400), instead of each waiting in a read
thread for the store's timeout. They never open or close the breaker: their
timeouts are their own, and a write that fails on a lock is no outage; the
history's reads, which the dashboard makes all the time, find the store
down or back. (The audit's write of posted events is the exception: it goes
through the breaker, see ``events._audit``, so that a post's answer never
waits for a store known to be down twice.)
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
    be down (no history sink: nothing to know)."""
    history = aegis.reads.history
    if history is not None:
        history.breaker.refuse_while_down()


def known_down(store: str, error: StoreUnavailable) -> Response:
    """A write's answer while the store is known down: 503 with the breaker's
    Retry-After (the breaker logged the outage; nothing was tried)."""
    return Response.error(
        503, "storage_unavailable",
        f"{store} cannot be written now; retry after the Retry-After seconds",
        retry_after=str(error.retry_after),
    )  # fmt: skip

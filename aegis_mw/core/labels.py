"""Bounded values for records and metric labels: the standard HTTP methods
(anything else is folded into ``_OTHER``), the route cap, and error
descriptions cut to a length.
"""

from __future__ import annotations

from .record import OVERFLOW_ROUTE

STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def describe_error(exc: BaseException, limit: int) -> str:
    """``"TypeName: message"`` cut to ``limit`` characters; never raises.

    A broken ``__str__`` on the app's exception must not turn into a second
    exception inside the middleware.
    """
    name = type(exc).__qualname__
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    text = f"{name}: {message}" if message else name
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


class RouteCap:
    """Admits at most ``limit`` distinct route values; folds the rest.

    The first ``limit`` values seen are kept for the life of the process (a
    route set is fixed by the app, so the first ones are the real ones); any
    later new value becomes ``<overflow>`` and is counted in ``overflowed``.
    """

    __slots__ = ("known", "limit", "overflowed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: set[str] = set()
        self.overflowed = 0

    def admit(self, route: str) -> str:
        """The route, or ``<overflow>`` (counted) once the cap is reached."""
        if route not in self.known and len(self.known) >= self.limit:
            self.overflowed += 1
            return OVERFLOW_ROUTE
        return self.label(route)

    def label(self, route: str) -> str:
        """What :meth:`admit` gives, without counting an overflow: for a second
        look at a request already counted (the metric labels)."""
        known = self.known
        if route in known:
            return route
        if len(known) < self.limit:
            known.add(route)
            return route
        return OVERFLOW_ROUTE

    def copy(self) -> RouteCap:
        """An independent copy, for readers predicting labels."""
        other = RouteCap(self.limit)
        other.known = set(self.known)
        return other

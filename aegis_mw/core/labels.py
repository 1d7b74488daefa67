"""Bounded values for records: the standard HTTP methods (anything else is
folded into ``_OTHER`` by the finalizer) and error descriptions cut to a
length. The route cap lives with the finalizer (``finalize.RouteCap``).
"""

from __future__ import annotations

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

"""Keeping label values bounded: methods, routes, error strings.

Every value that becomes an aggregate key passes through here, so a client
sending random methods or paths cannot grow memory or metric cardinality.
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

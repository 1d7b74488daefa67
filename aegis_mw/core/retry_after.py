"""``Retry-After`` as a number of seconds, for the clients of our own that
honour it (the alert channels, the OTLP sink)."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime


def retry_after(value: str | None) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date, as seconds from now
    (0 for a date past); ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if seconds == seconds else None

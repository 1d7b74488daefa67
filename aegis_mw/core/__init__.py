"""The standard-library-only core: records, the hot path, aggregates, the flusher.

Nothing here imports a third-party package or a database driver; a test
imports this package in a fresh interpreter and checks ``sys.modules``.
"""

from __future__ import annotations

from .aggregates import RealtimeAggregates, RealtimeSnapshot
from .clock import Clock, SystemClock
from .errors import ConfigError
from .record import (
    CLIENT_CLOSED_STATUS,
    OTHER_METHOD,
    OVERFLOW_ROUTE,
    UNMATCHED_ROUTE,
    Batch,
    RequestRecord,
    WebSocketSession,
)
from .settings import AegisConfigWarning, AegisSettings
from .sink import RecordRejected, RecordSink

__all__ = [
    "CLIENT_CLOSED_STATUS",
    "OTHER_METHOD",
    "OVERFLOW_ROUTE",
    "UNMATCHED_ROUTE",
    "AegisConfigWarning",
    "AegisSettings",
    "Batch",
    "Clock",
    "ConfigError",
    "RealtimeAggregates",
    "RealtimeSnapshot",
    "RecordRejected",
    "RecordSink",
    "RequestRecord",
    "SystemClock",
    "WebSocketSession",
]

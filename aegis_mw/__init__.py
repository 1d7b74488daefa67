"""aegis_mw: self-hosted request monitoring for ASGI apps.

Add one middleware; every request and WebSocket session is recorded into
batched in-memory buffers that a background thread flushes to sinks
(SQLite by default)::

    from aegis_mw import AegisMiddleware

    app.add_middleware(AegisMiddleware, sink="sqlite:///aegis.db")
"""

from __future__ import annotations

from .aegis import Aegis
from .asgi import AegisMiddleware, ScopeRouteReader
from .core import (
    AegisConfigWarning,
    AegisSettings,
    Batch,
    ConfigError,
    RealtimeSnapshot,
    RecordRejected,
    RecordSink,
    RequestRecord,
    WebSocketSession,
)
from .core.stats import PipelineStats, SinkStats

__version__ = "0.1.0.dev0"

__all__ = [
    "Aegis",
    "AegisConfigWarning",
    "AegisMiddleware",
    "AegisSettings",
    "Batch",
    "ConfigError",
    "PipelineStats",
    "RealtimeSnapshot",
    "RecordRejected",
    "RecordSink",
    "RequestRecord",
    "ScopeRouteReader",
    "SinkStats",
    "WebSocketSession",
    "__version__",
]

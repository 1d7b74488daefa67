"""Health checks: registration, concurrent runs with timeouts, and the answers
for ``/health/live``, ``/health/ready`` and ``/health``."""

from __future__ import annotations

from .builtin import (
    disk_space,
    live_transport_health,
    loop_lag,
    process_memory,
    sink_health,
    spool_health,
)
from .checks import CheckOutcome, CheckResult, HealthCheck
from .service import HealthService

__all__ = [
    "CheckOutcome",
    "CheckResult",
    "HealthCheck",
    "HealthService",
    "disk_space",
    "live_transport_health",
    "loop_lag",
    "process_memory",
    "sink_health",
    "spool_health",
]

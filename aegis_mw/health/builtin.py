"""Checks the user can switch on: ``aegis.health.add(disk_space("/var/lib/app"))``.

Each reads something local and cheap; none touches the network.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING

from .checks import FAIL, PASS, WARN, CheckOutcome, HealthCheck

if TYPE_CHECKING:
    from ..aegis import Aegis
    from ..core.stats import SinkStats
    from .loop_lag import LoopLagMonitor


def sink_health(aegis: Aegis, *, max_backlog: int = 10_000, critical: bool = False) -> HealthCheck:
    """Every sink accepted its last write, and none has more than ``max_backlog``
    records waiting (a sink that keeps failing is reported with its last error).
    A batch kept in the spool counts as accepted (see :func:`spool_health`)."""

    def check() -> CheckOutcome:
        stats = aegis.stats()
        details: dict[str, dict[str, object]] = {
            sink.name: {"backlog": sink.backlog, "consecutive_failures": sink.consecutive_failures}
            for sink in stats.sinks
        }
        for sink in stats.sinks:
            if sink.spool_limit_bytes:
                details[sink.name]["spool"] = _spool_details(sink)
        failing = [sink for sink in stats.sinks if sink.consecutive_failures]
        if failing:
            message = "; ".join(f"{sink.name}: {sink.last_error}" for sink in failing)
            return CheckOutcome(FAIL, message, details)
        behind = [sink.name for sink in stats.sinks if sink.backlog > max_backlog]
        if behind:
            return CheckOutcome(WARN, f"backlog over {max_backlog}: {', '.join(behind)}", details)

        if not stats.flusher_alive:
            return CheckOutcome(FAIL, "the flusher thread is not running", details)
        return CheckOutcome(PASS, "", details)

    return HealthCheck("sinks", check, timeout=2.0, critical=critical)


def spool_health(aegis: Aegis) -> HealthCheck:
    """The spools of remote sinks (registered by itself with ``spool_dir``):
    pass while empty; warn while batches wait there (the store unreachable,
    or the replay not done: nothing is lost, the stored history lags); fail
    while writes through it fail (a batch found no room, a write hangs: the
    batches wait in memory, bounded). Never critical: the app serves its
    requests either way."""

    def check() -> CheckOutcome:
        sinks = [sink for sink in aegis.stats().sinks if sink.spool_limit_bytes]
        details = {sink.name: _spool_details(sink) for sink in sinks}
        full = [sink for sink in sinks if sink.consecutive_failures]
        if full:
            message = "; ".join(f"{sink.name}: {sink.last_error}" for sink in full)
            return CheckOutcome(FAIL, message, details)
        waiting = [sink for sink in sinks if sink.spool_records or sink.spool_error]
        if waiting:
            message = "; ".join(
                f"{sink.name}: {sink.spool_records} records spooled"
                + (f", the store unreachable ({sink.spool_error})" if sink.spool_error else "")
                for sink in waiting
            )
            return CheckOutcome(WARN, message, details)
        return CheckOutcome(PASS, "", details)

    return HealthCheck("spool", check, timeout=2.0, critical=False)


def live_transport_health(aegis: Aegis) -> HealthCheck:
    """The live figures' transport between hosts (registered by itself with
    ``live_transport``, or with a store several hosts can share): pass while
    frames go out and come in; warn while it fails (the live views show this
    process and what came before; the stored history and ``/metrics`` are
    not affected), or, with no transport, while several hosts write to the
    store (each host's live views show only its own). Never critical."""

    def check() -> CheckOutcome:
        link = aegis.metrics.link
        if link is None:
            retention = aegis.flusher.cycle.retention
            hosts = retention.hosts if retention is not None else []
            local = {"transport": "local", "hosts": hosts}
            if len(hosts) > 1:
                message = (
                    f"{len(hosts)} hosts write to the store and live_transport is not set: "
                    "each host's live views show its own traffic only"
                )
                return CheckOutcome(WARN, message, local)
            return CheckOutcome(PASS, "", local)
        board = link.board
        details: dict[str, object] = {
            "transport": link.kind, "sender": link.sender, "connected": link.connected,
            "senders_live": board.live_senders(), "senders_known": board.known_senders(),
            "frames_sent": link.sent, "frames_taken": board.taken, "gaps": board.gaps,
            "frames_refused": board.refused, "resyncs": link.resyncs, "errors": link.errors,
        }  # fmt: skip
        if not link.alive:
            return CheckOutcome(WARN, "the live transport's thread is not running", details)
        if not link.connected:
            return CheckOutcome(WARN, f"the live transport fails: {link.last_error}", details)
        return CheckOutcome(PASS, "", details)

    return HealthCheck("live_transport", check, timeout=2.0, critical=False)


def _spool_details(sink: SinkStats) -> dict[str, object]:
    return {
        "records": sink.spool_records,
        "bytes": sink.spool_bytes,
        "limit_bytes": sink.spool_limit_bytes,
        "oldest_age_seconds": round(sink.spool_oldest_age_seconds, 3),
    }


def disk_space(
    path: str = ".", *, min_free_ratio: float = 0.05, critical: bool = False
) -> HealthCheck:
    """At least ``min_free_ratio`` of the file system holding ``path`` is free."""
    if not 0 <= min_free_ratio < 1:
        raise ValueError("min_free_ratio must be from 0 to below 1")

    def check() -> CheckOutcome:
        usage = shutil.disk_usage(path)
        free = usage.free / usage.total if usage.total else 0.0
        details = {"path": os.fspath(path), "free_bytes": usage.free, "total_bytes": usage.total}
        if free < min_free_ratio:
            return CheckOutcome(FAIL, f"{free:.1%} free, below {min_free_ratio:.1%}", details)
        return CheckOutcome(PASS, "", details)

    return HealthCheck("disk", check, timeout=2.0, critical=critical)


def process_memory(max_rss_bytes: int, *, critical: bool = False) -> HealthCheck:
    """The process's resident memory is below ``max_rss_bytes``."""
    if max_rss_bytes <= 0:
        raise ValueError("max_rss_bytes must be positive")

    def check() -> CheckOutcome:
        rss = resident_bytes()
        details = {"rss_bytes": rss, "max_rss_bytes": max_rss_bytes}
        if rss is None:
            return CheckOutcome(WARN, "resident memory is not readable here", details)
        if rss > max_rss_bytes:
            return CheckOutcome(FAIL, f"{rss} bytes resident, over {max_rss_bytes}", details)
        return CheckOutcome(PASS, "", details)

    return HealthCheck("memory", check, timeout=2.0, critical=critical)


def loop_lag(monitor: LoopLagMonitor, *, max_seconds: float = 1.0) -> HealthCheck:
    """The event loop runs what it is given within ``max_seconds``."""

    def check() -> CheckOutcome:
        lag = monitor.lag()
        details = {"lag_seconds": round(lag, 6), "max_seconds": max_seconds}
        if lag > max_seconds:
            return CheckOutcome(FAIL, f"event loop {lag:.3f} s behind", details)
        return CheckOutcome(PASS, "", details)

    return HealthCheck("event_loop", check, timeout=2.0, critical=False)


def resident_bytes() -> int | None:
    """Current resident set size (Linux), else the peak (other Unixes), else None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024

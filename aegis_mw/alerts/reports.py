"""Each process's report of its own health, and the app's state from them.

Health checks run in the process a probe reaches, and each process has its
own pipeline (its buffers, its sinks' writes): no single process sees the
app's health. So every process's alert service writes a small report each
tick into the shared store (:func:`process_report`: its checks' latest
results, the records it dropped so far, whether each of its sinks fails),
and the evaluating process reads the reports of the processes alive (those
written within ``LIVE_INTERVALS`` intervals) into the values of the state
inputs ``health_check_failing``, ``sink_failing`` and ``records_dropped``
(:class:`ReportReader`), and into whether the app's readiness fails, which
by default holds back the firings of its error and latency alerts.

A check's result is the one the last probe of ``/health/ready`` (or
``/health``) got in that process: a result older than ``RESULT_SECONDS`` is
not counted, so a process nobody probes reports no check (the rules over
them then see nothing failing).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.stats import PipelineStats
from ..health.checks import FAIL, UNKNOWN, CheckResult
from .figures import Group

#: A report counts while it is at most this many evaluation intervals old.
LIVE_INTERVALS = 3
#: A check's result counts while it is at most this many seconds old.
RESULT_SECONDS = 120.0
#: The inputs read from the reports.
REPORT_INPUTS = ("health_check_failing", "sink_failing", "records_dropped")


def process_report(
    results: Mapping[str, CheckResult], stats: PipelineStats, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """This process's report: each check's latest result (failing or not,
    critical or not, its age in seconds), the records dropped since start,
    and whether each sink's writes fail now."""
    now = clock()
    return {
        "checks": {
            name: {
                "failing": result.status in (FAIL, UNKNOWN),
                "critical": result.critical,
                "age": max(0.0, now - result.checked_at),
            }
            for name, result in results.items()
        },
        "dropped": sum(stats.dropped.values())
        + sum(sum(sink.dropped.values()) for sink in stats.sinks),
        "sinks": {sink.name: sink.consecutive_failures > 0 for sink in stats.sinks},
    }


@dataclass
class AppState:
    """What the live processes' reports say together."""

    #: Per check: how many processes last saw it fail.
    health_check_failing: dict[Group, float] = field(default_factory=dict)
    #: Per sink: how many processes fail to write to it.
    sink_failing: dict[Group, float] = field(default_factory=dict)
    #: Records dropped across the processes since the previous reading.
    records_dropped: float = 0.0
    #: The critical checks failing in some process: the app is not ready.
    not_ready: tuple[str, ...] = ()

    def inputs(self) -> dict[str, Mapping[Group, float]]:
        """The state inputs' values, as :func:`.figures.state_figures` takes them."""
        return {
            "health_check_failing": self.health_check_failing,
            "sink_failing": self.sink_failing,
            "records_dropped": {(): self.records_dropped},
        }


class ReportReader:
    """Reads reports into an :class:`AppState`, remembering each process's
    drop counter between readings (a process first seen counts from then)."""

    def __init__(self) -> None:
        self._dropped: dict[str, int] = {}

    def read(self, reports: Iterable[tuple[str, Mapping[str, Any]]]) -> AppState:
        """``reports``: (process, report) of the processes alive."""
        state = AppState()
        failing_critical: set[str] = set()
        seen: dict[str, int] = {}
        for process, report in reports:
            for name, check in _mapping(report.get("checks")).items():
                if not isinstance(check, Mapping) or not _number(check.get("age"), RESULT_SECONDS):
                    continue  # stale (or unreadable): counts neither way
                group: Group = (("check", str(name)),)
                failing = bool(check.get("failing"))
                state.health_check_failing[group] = (
                    state.health_check_failing.get(group, 0.0) + failing
                )
                if failing and check.get("critical"):
                    failing_critical.add(str(name))
            for name, failing in _mapping(report.get("sinks")).items():
                group = (("sink", str(name)),)
                state.sink_failing[group] = state.sink_failing.get(group, 0.0) + bool(failing)
            dropped = report.get("dropped")
            if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped >= 0:
                before = self._dropped.get(process, dropped)
                state.records_dropped += max(0, dropped - before)  # a new counter: from 0
                seen[process] = dropped
        self._dropped = seen  # processes gone are forgotten
        state.not_ready = tuple(sorted(failing_critical))
        return state


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any, most: float) -> bool:
    """A number of seconds from 0 to ``most``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= most

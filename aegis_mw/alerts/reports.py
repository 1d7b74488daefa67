"""Each process's report of its own health, and the app's state from them.

Health checks run in the process a probe reaches, and each process has its
own pipeline (its buffers, its sinks' writes): no single process sees the
app's health. So every process's alert service writes a small report each
tick into the shared store (:func:`process_report`: its checks' latest
results, the records it dropped so far, whether each of its sinks fails),
and the evaluating process reads the reports of the processes alive (those
written within ``LIVE_INTERVALS`` intervals) into the values of the state
inputs ``health_check_failing``, ``readiness_failing``, ``sink_failing``
and ``records_dropped`` (:class:`ReportReader`), and into the channels the
app's processes have: the notices of a channel none has any more (removed
from the settings) are given up after an hour instead of waiting for ever.
An alert over ``readiness_failing`` that fires holds back the firings of
the error and latency alerts, its symptoms (see .service).

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
REPORT_INPUTS = ("health_check_failing", "readiness_failing", "sink_failing", "records_dropped")
#: A process not seen this long is forgotten (its drop counter with it).
FORGET_SECONDS = 3600.0


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
    #: The same for the critical checks only.
    readiness_failing: dict[Group, float] = field(default_factory=dict)
    #: Per sink: how many processes fail to write to it.
    sink_failing: dict[Group, float] = field(default_factory=dict)
    #: Records dropped across the processes since the previous reading.
    records_dropped: float = 0.0
    #: The channels some live process has; None when a live process did not
    #: say (a version before it did).
    channels: frozenset[str] | None = None

    def inputs(self) -> dict[str, Mapping[Group, float]]:
        """The state inputs' values, as :func:`.figures.state_figures` takes them."""
        return {
            "health_check_failing": self.health_check_failing,
            "readiness_failing": self.readiness_failing,
            "sink_failing": self.sink_failing,
            "records_dropped": {(): self.records_dropped},
        }


class ReportReader:
    """Reads reports into an :class:`AppState`, remembering each process's
    drop counter between readings (a process first seen counts from then;
    one missing from a reading is remembered for FORGET_SECONDS)."""

    def __init__(self) -> None:
        #: process -> (its drop counter, when last seen)
        self._dropped: dict[str, tuple[int, float]] = {}

    def read(self, reports: Iterable[tuple[str, Any]], now: float) -> AppState:
        """``reports``: (process, report) of the processes alive, at ``now``."""
        state = AppState()
        channels: set[str] | None = set()
        for process, report in reports:
            if not isinstance(report, Mapping):
                continue  # written by something else: not ours to read
            named = report.get("channels")
            if channels is not None and isinstance(named, list):
                channels.update(str(name) for name in named)
            else:
                channels = None
            for name, check in _mapping(report.get("checks")).items():
                if not isinstance(check, Mapping) or not _number(check.get("age"), RESULT_SECONDS):
                    continue  # stale (or unreadable): counts neither way
                group: Group = (("check", str(name)),)
                failing = bool(check.get("failing"))
                _add(state.health_check_failing, group, failing)
                if check.get("critical"):
                    _add(state.readiness_failing, group, failing)
            for name, failing in _mapping(report.get("sinks")).items():
                _add(state.sink_failing, (("sink", str(name)),), bool(failing))
            dropped = report.get("dropped")
            if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped >= 0:
                before = self._dropped.get(process, (dropped, now))[0]
                state.records_dropped += max(0, dropped - before)  # a new counter: from 0
                self._dropped[process] = (dropped, now)
        for process, (_, seen) in list(self._dropped.items()):
            if seen < now - FORGET_SECONDS:
                del self._dropped[process]
        state.channels = None if channels is None else frozenset(channels)
        return state


def _add(values: dict[Group, float], group: Group, count: bool) -> None:
    values[group] = values.get(group, 0.0) + count


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any, most: float) -> bool:
    """A number of seconds from 0 to ``most``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= most

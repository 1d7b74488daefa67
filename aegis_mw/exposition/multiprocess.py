"""Several worker processes, one ``/metrics``: per-process snapshots merged at scrape.

With ``PROMETHEUS_MULTIPROC_DIR`` set (or ``metrics_multiprocess_dir``), every
process's flusher writes its cumulative figures to its own file in that
directory after each cycle (``aegis_<pid>_<nonce>.json``, replaced
atomically). The worker that answers a scrape adds its own live figures to the
other workers' latest files, so the totals are those of all workers, at most
``flush_interval`` old for the others, whichever worker answers.

A worker that exits leaves its counters behind (the requests it served still
count) but not its gauges (nobody is in flight in a dead process): files of
processes that no longer exist are folded into ``aegis_archive.json`` and
removed, under a lock that readers share, so nothing is counted twice.
prometheus-client's own files in the same directory (``*.db``) are its own
business: the app's metrics are read with its ``MultiProcessCollector``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..core import custom_merge
from ..core.custom_metrics import MetricSnapshot, well_formed
from ..core.exemplars import Exemplars, finite_number
from ..core.labeled import LabeledTotals
from ..core.stats import PipelineStats, SinkStats
from .families import MetricsReading

logger = logging.getLogger("aegis_mw.metrics")
FORMAT = 1
ARCHIVE = "aegis_archive.json"
LOCK = "aegis.lock"


#: Sink counters that files written by earlier versions lack (read as 0).
_LATER_COUNTERS = ("pruned", "prune_failures", "spooled", "replayed", "spool_lost")
#: What every process reads from the one spool file the app's processes
#: share: the largest of the live processes' readings, never a sum.
_SHARED_GAUGES = ("spool_limit_bytes", "spool_records", "spool_bytes", "spool_oldest_age_seconds")


def _sink_figures(sink: SinkStats, *, live: bool) -> dict[str, Any]:
    """What adds up across processes for one sink (its gauges only while alive)."""
    return {
        "written": sink.written,
        "dropped": dict(sink.dropped),
        "errors": sink.errors,
        "timeouts": sink.timeouts,
        "flushes": sink.flushes,
        "flush_seconds_total": sink.flush_seconds_total,
        "backlog": sink.backlog if live else 0,
        **{field: getattr(sink, field) for field in _LATER_COUNTERS},
        "prune_lease": sink.prune_lease if live else 0,
        "rejected": dict(sink.rejected),
        **{field: getattr(sink, field) if live else 0 for field in _SHARED_GAUGES},
        "counts_every_request": sink.counts_every_request,
    }


def encode(reading: MetricsReading, *, pid: int, live: bool) -> dict[str, Any]:
    """One process's figures as JSON-able data (gauges zero once it stops)."""
    labeled, stats = reading.labeled, reading.stats
    return {
        "format": FORMAT,
        "pid": pid,
        "bounds": list(labeled.bounds),
        "requests": [[*key, count] for key, count in labeled.requests.items()],
        "series": [[*key, values] for key, values in labeled.series.items()],
        "sessions": [[*key, count] for key, count in labeled.sessions.items()],
        "route_overflow": labeled.route_overflow,
        # Absent from the files of earlier versions: none then.
        "exemplars": labeled.exemplars.encode(),
        "offered": stats.offered,
        "dropped": dict(stats.dropped),
        "sampled_out": stats.sampled_out,
        "flusher_errors": stats.flusher_errors,
        "sinks": [{"name": sink.name, **_sink_figures(sink, live=live)} for sink in stats.sinks],
        "gauges": {
            "in_flight": reading.in_flight if live else 0,
            "websockets_active": reading.websockets_active if live else 0,
            "buffered": stats.buffered if live else 0,
        },
        # Absent from the files of earlier versions: none then.
        "custom": custom_merge.encode(reading.custom, live=live),
        "events": {
            "accepted": stats.events_accepted,
            "dropped": dict(stats.events_dropped),
            "buffered": stats.events_buffered if live else 0,
        },
    }


class Merge:
    """Sums snapshots into one reading; gauges only from live processes."""

    def __init__(
        self,
        own: MetricsReading,
        warned: set[str] | None = None,
        admits: Callable[[MetricSnapshot], bool] = well_formed,
    ) -> None:
        self.own = own
        self.labeled = own.labeled.copy()
        stats = own.stats
        self.offered, self.sampled_out = stats.offered, stats.sampled_out
        self.flusher_errors, self.buffered = stats.flusher_errors, stats.buffered
        self.dropped = dict(stats.dropped)
        self.events_accepted, self.events_buffered = stats.events_accepted, stats.events_buffered
        self.events_dropped = dict(stats.events_dropped)
        self.in_flight, self.websockets_active = own.in_flight, own.websockets_active
        self.sinks: dict[str, dict[str, Any]] = {
            sink.name: _sink_figures(sink, live=True) for sink in stats.sinks
        }
        self.custom = custom_merge.CustomMerge(own.custom, warned, admits)

    def add(self, data: dict[str, Any], *, live: bool) -> bool:
        """Add one snapshot; False (nothing of the request figures added) when it
        does not fit ours. Its custom metrics do not depend on the request
        histogram's buckets: they are added whenever the format is ours."""
        labeled = self.labeled
        if data.get("format") != FORMAT:
            return False
        self.custom.add(data.get("custom", []), live=live)
        if tuple(data.get("bounds", ())) != labeled.bounds:
            return False
        if not _well_formed(data):
            # A damaged or foreign file: checked whole first, so that it is not
            # half added and a scrape never fails on it.
            return False
        # Checked entry by entry (a damaged one is left out alone), before
        # anything is added.
        exemplars = Exemplars.decode(data.get("exemplars"), labeled.bounds)
        for method, route, status, count in data["requests"]:
            key = (method, route, status)
            labeled.requests[key] = labeled.requests.get(key, 0) + count
        width = len(labeled._new_series())
        for method, route, values in data["series"]:
            if len(values) != width:
                continue
            totals = labeled.series.setdefault((method, route), [0] * width)
            for index, value in enumerate(values):
                totals[index] += value
        for route, code, count in data["sessions"]:
            labeled.sessions[(route, code)] = labeled.sessions.get((route, code), 0) + count
        labeled.route_overflow += data["route_overflow"]
        labeled.exemplars.merge(exemplars)
        self.offered += data["offered"]
        self.sampled_out += data["sampled_out"]
        self.flusher_errors += data["flusher_errors"]
        for reason, count in data["dropped"].items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count
        for sink in data["sinks"]:
            mine = self.sinks.setdefault(
                sink["name"],
                {
                    "written": 0,
                    "dropped": {},
                    "errors": 0,
                    "timeouts": 0,
                    "flushes": 0,
                    "flush_seconds_total": 0.0,
                    "backlog": 0,
                    "prune_lease": 0,
                    "rejected": {},
                    **dict.fromkeys(_LATER_COUNTERS + _SHARED_GAUGES, 0),
                    "counts_every_request": False,
                },
            )
            # The same in every process (the sinks' configuration); absent
            # from the files of a version before it.
            if sink.get("counts_every_request") is True:
                mine["counts_every_request"] = True
            for field in ("written", "errors", "timeouts", "flushes", "flush_seconds_total"):
                mine[field] += sink[field]
            # Absent from the files of a version before them (a rolling upgrade).
            for field in _LATER_COUNTERS:
                mine[field] += sink.get(field, 0)
            for reason, count in sink["dropped"].items():
                mine["dropped"][reason] = mine["dropped"].get(reason, 0) + count
            for kind, count in sink.get("rejected", {}).items():  # absent before them
                mine["rejected"][kind] = mine["rejected"].get(kind, 0) + count
            if live:
                mine["backlog"] += sink["backlog"]
                mine["prune_lease"] += sink.get("prune_lease", 0)
                for field in _SHARED_GAUGES:
                    mine[field] = max(mine[field], sink.get(field, 0))
        if live:
            gauges = data["gauges"]
            self.in_flight += gauges["in_flight"]
            self.websockets_active += gauges["websockets_active"]
            self.buffered += gauges["buffered"]
        self._add_events(data.get("events"), live=live)
        return True

    def _add_events(self, events: Any, *, live: bool) -> None:
        """A file's event counts (absent from earlier versions' files); a
        damaged part is skipped whole."""
        if not (
            isinstance(events, dict)
            and _is_number(events.get("accepted"))
            and _is_number(events.get("buffered"))
            and _counts(events.get("dropped"))
        ):
            return
        self.events_accepted += events["accepted"]
        if live:
            self.events_buffered += events["buffered"]
        for reason, count in events["dropped"].items():
            self.events_dropped[reason] = self.events_dropped.get(reason, 0) + count

    def reading(self) -> MetricsReading:
        own = self.own.stats
        sinks = tuple(
            SinkStats(
                name=name,
                written=values["written"],
                backlog=values["backlog"],
                dropped=values["dropped"],
                errors=values["errors"],
                timeouts=values["timeouts"],
                consecutive_failures=0,
                last_error="",
                last_flush_seconds=0.0,
                flushes=values["flushes"],
                flush_seconds_total=values["flush_seconds_total"],
                prune_lease=values["prune_lease"],
                rejected=values["rejected"],
                **{field: values[field] for field in _LATER_COUNTERS + _SHARED_GAUGES},
                counts_every_request=values["counts_every_request"],
            )
            for name, values in self.sinks.items()
        )
        stats = PipelineStats(
            offered=self.offered,
            buffered=self.buffered,
            dropped=self.dropped,
            sampled_out=self.sampled_out,
            route_overflow=self.labeled.route_overflow,
            flusher_alive=own.flusher_alive,
            flusher_errors=self.flusher_errors,
            sinks=sinks,
            events_accepted=self.events_accepted,
            events_buffered=self.events_buffered,
            events_dropped=self.events_dropped,
        )
        return MetricsReading(
            labeled=self.labeled,
            in_flight=self.in_flight,
            websockets_active=self.websockets_active,
            stats=stats,
            health=self.own.health,
            build=self.own.build,  # the answering process's, as health is
            alerts=self.own.alerts,
            alert_channels=self.own.alert_channels,
            custom=self.custom.reading(),
        )


def _is_number(value: Any) -> bool:
    # A JSON integer too large for a float would fail the scrape that sums it.
    return type(value) is float or finite_number(value)


def _rows(rows: Any, texts: int, last: Callable[[Any], bool]) -> bool:
    """A list of rows of ``texts`` strings followed by one value ``last`` accepts."""
    return isinstance(rows, list) and all(
        isinstance(row, list)
        and len(row) == texts + 1
        and all(isinstance(text, str) for text in row[:texts])
        and last(row[texts])
        for row in rows
    )


def _counts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and _is_number(count) for key, count in value.items()
    )


#: Sink fields that files written by earlier versions lack (read as 0).
_LATER_SINK_FIELDS = (*_LATER_COUNTERS, "prune_lease", *_SHARED_GAUGES)


def _well_formed(data: dict[str, Any]) -> bool:
    """Every field :meth:`Merge.add` reads is there, with the type it expects."""
    sink_fields = ("written", "errors", "timeouts", "flushes", "flush_seconds_total", "backlog")
    gauges = data.get("gauges")
    return (
        _rows(data.get("requests"), 3, _is_number)
        and _rows(
            data.get("series"),
            2,
            lambda values: isinstance(values, list) and all(_is_number(v) for v in values),
        )
        and _rows(data.get("sessions"), 2, _is_number)
        and all(
            _is_number(data.get(name))
            for name in ("route_overflow", "offered", "sampled_out", "flusher_errors")
        )
        and _counts(data.get("dropped"))
        and isinstance(data.get("sinks"), list)
        and all(
            isinstance(sink, dict)
            and isinstance(sink.get("name"), str)
            and all(_is_number(sink.get(name)) for name in sink_fields)
            and all(_is_number(sink.get(name, 0)) for name in _LATER_SINK_FIELDS)
            and _counts(sink.get("dropped"))
            and _counts(sink.get("rejected", {}))
            for sink in data["sinks"]
        )
        and isinstance(gauges, dict)
        and all(
            _is_number(gauges.get(name)) for name in ("in_flight", "websockets_active", "buffered")
        )
    )


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _pid_of(path: Path) -> int:
    """The process id in a snapshot's name (``aegis_<pid>_<nonce>.json``)."""
    try:
        return int(path.name.split("_")[1])
    except (IndexError, ValueError):
        return 0


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # replaced or archived meanwhile
    except (OSError, ValueError, RecursionError):  # RecursionError: nested past the parser
        logger.warning("aegis_mw: ignoring unreadable metrics snapshot %s", path)
        return None
    return data if isinstance(data, dict) else None


class SnapshotFiles:
    """This process's snapshot in a shared directory, and the merge of all of them."""

    def __init__(
        self, directory: Path, admits: Callable[[MetricSnapshot], bool] = well_formed
    ) -> None:
        self.directory = directory
        #: Whether a custom metric read from a file could have been declared here.
        self._admits = admits
        self._pid = 0
        self._path = directory
        #: Custom metrics declared differently by another process, warned about.
        self._custom_conflicts: set[str] = set()

    @property
    def own_path(self) -> Path:
        """This process's file; a forked child gets a name of its own."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            self._path = self.directory / f"aegis_{pid}_{os.urandom(4).hex()}.json"
        return self._path

    @contextlib.contextmanager
    def _locked(self, kind: int) -> Iterator[None]:
        with open(self.directory / LOCK, "a+b") as lock:
            fcntl.flock(lock, kind)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def publish(self, reading: MetricsReading, *, live: bool = True) -> None:
        """Replace this process's file (flusher thread), then archive dead ones."""
        path = self.own_path
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(encode(reading, pid=self._pid, live=live)), "utf-8")
        os.replace(temporary, path)
        self._archive_dead()

    def _others(self) -> Iterator[Path]:
        own = self.own_path
        for path in sorted(self.directory.glob("aegis_*.json")):
            if path != own and path.name != ARCHIVE:
                yield path

    def _archive_dead(self) -> None:
        dead = [path for path in self._others() if not _process_exists(_pid_of(path))]
        # A process killed between writing its temporary file and renaming it
        # leaves that file behind; nobody else would ever remove it.
        leftovers = [
            path
            for path in self.directory.glob("aegis_*_*.tmp")
            if not _process_exists(_pid_of(path))
        ]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if not dead:
            return
        with self._locked(fcntl.LOCK_EX):
            archive_path = self.directory / ARCHIVE
            archive = _read(archive_path)
            merged: Merge | None = None
            for path in dead:
                data = _read(path)
                if data is None or _bounds_of(data) is None:
                    continue  # unreadable or foreign: removed below all the same
                if merged is None:
                    merged = Merge(_empty_like(data), self._custom_conflicts, self._admits)
                merged.add(data, live=False)
            if merged is not None:
                # The archive after the dead: where a custom metric's declaration
                # changed (a reload with new code), the newer figures are kept.
                if archive is not None:
                    merged.add(archive, live=False)
                temporary = archive_path.with_suffix(".tmp")
                data_text = json.dumps(encode(merged.reading(), pid=0, live=False))
                temporary.write_text(data_text, "utf-8")
                os.replace(temporary, archive_path)
            for path in dead:
                path.unlink(missing_ok=True)

    def merged(self, own: MetricsReading) -> MetricsReading:
        """``own`` (live) plus every other process's latest figures and the archive."""
        merge = Merge(own, self._custom_conflicts, self._admits)
        for path, data, live in self._snapshots():
            if not merge.add(data, live=live):
                logger.warning(
                    "aegis_mw: %s has other histogram buckets or format; its request "
                    "figures are not merged",
                    path,
                )
        return merge.reading()

    def merged_custom(self, own: Iterable[MetricSnapshot]) -> tuple[MetricSnapshot, ...]:
        """``own`` custom metrics plus every other process's (as :meth:`merged` adds them)."""
        merge = custom_merge.CustomMerge(own, self._custom_conflicts, self._admits)
        for _, data, live in self._snapshots():
            if data.get("format") == FORMAT:
                merge.add(data.get("custom", []), live=live)
        return merge.reading()

    def _snapshots(self) -> Iterator[tuple[Path, dict[str, Any], bool]]:
        """Every other process's latest file and the archive: (path, data, live)."""
        with self._locked(fcntl.LOCK_SH):
            for path in [*self._others(), self.directory / ARCHIVE]:
                data = _read(path)
                if data is not None:
                    yield path, data, path.name != ARCHIVE and _process_exists(_pid_of(path))


def _bounds_of(data: dict[str, Any]) -> tuple[float, ...] | None:
    bounds = data.get("bounds")
    if isinstance(bounds, list) and all(_is_number(bound) for bound in bounds):
        return tuple(bounds)
    return None


def _empty_like(data: dict[str, Any]) -> MetricsReading:
    """A reading with nothing in it, with the bounds of ``data``."""
    return MetricsReading(
        labeled=LabeledTotals(_bounds_of(data) or ()),
        in_flight=0,
        websockets_active=0,
        stats=PipelineStats(
            offered=0,
            buffered=0,
            dropped={},
            sampled_out=0,
            route_overflow=0,
            flusher_alive=False,
            flusher_errors=0,
            sinks=(),
        ),
        health={},
    )

"""Time ranges: which buckets a query covers, at which step and resolution.

A range is a name from :data:`RANGES` (ending now) or explicit ``from``/``to``
times. Its series gets a step from :data:`STEPS` giving about 60-120 points,
and the start is moved back to a multiple of the step, so every point but the
last is one whole bucket of a stored resolution. The end is moved forward to
a whole 5-second bucket (the finest stored; a range ending now includes the
bucket now falls in), and the last, partial point is
read from finer resolutions: a range therefore covers between its nominal
width and that plus one step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from ..core.rollup import FINEST, LEVELS

RANGES = {
    "5m": 300, "15m": 900, "1h": 3600, "6h": 21_600, "24h": 86_400, "7d": 604_800,
    "30d": 2_592_000,
}  # fmt: skip
#: Candidate steps in seconds; each at most twice the one before.
STEPS = (
    5, 10, 15, 30, 60, 120, 240, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600,
    43_200, 86_400, 172_800, 345_600, 604_800,
)  # fmt: skip
MIN_POINTS = 60
#: The longest explicit range, in seconds (about 13 months).
MAX_SPAN = 400 * 86_400
#: How long each resolution is kept by default (see ``retention_*``).
DEFAULT_HORIZONS: Mapping[int, float] = {
    5: 86_400.0, 60: 7 * 86_400.0, 300: 90 * 86_400.0, 3600: 90 * 86_400.0,
}  # fmt: skip


def horizons(retention_raw: float, retention_rollups: float) -> dict[int, float]:
    """Seconds each resolution is kept: 5 s for at most a day (it is the
    bulkiest and only short ranges read it whole), 1 min as long as the raw
    log, 5 min and 1 h for ``retention_rollups``."""
    return {
        5: min(86_400.0, retention_raw),
        60: retention_raw,
        300: retention_rollups,
        3600: retention_rollups,
    }


class QueryError(ValueError):
    """Bad query input; ``parameter`` names it, ``code`` classifies it."""

    def __init__(self, parameter: str, message: str, code: str = "invalid_parameter") -> None:
        super().__init__(message)
        self.parameter = parameter
        self.code = code
        self.message = message


def parse_time(parameter: str, value: str | float | datetime) -> float:
    """Seconds since the epoch from ISO 8601 text (UTC when no offset is
    given), a datetime, or a number of seconds."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise QueryError(parameter, f"{parameter} must be a finite time")
        return float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(
                text[:-1] + "+00:00" if text.endswith(("z", "Z")) else text
            )
        except ValueError:
            raise QueryError(
                parameter,
                f"{parameter} must be an ISO 8601 time such as 2026-01-31T12:00:00Z",
            ) from None
    else:
        raise QueryError(parameter, f"{parameter} must be an ISO 8601 time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        raise QueryError(parameter, f"{parameter} is out of range") from None


@dataclass(frozen=True)
class TimeRange:
    """The buckets a query reads: ``[start, end)`` in points of ``step``
    seconds, whole points at resolution ``level``. ``until`` is the end of
    observed time (now, for a range that reaches the present), which rates
    divide by."""

    start: int
    end: int
    step: int
    level: int
    until: float

    @property
    def points(self) -> int:
        return -(-(self.end - self.start) // self.step)

    def segments(self) -> list[tuple[int, int, int]]:
        """``(resolution, start, end)`` reads that tile the range exactly."""
        whole_end = self.start + (self.end - self.start) // self.step * self.step
        reads = [(self.level, self.start, whole_end)] if whole_end > self.start else []
        cursor = whole_end
        for level in reversed(LEVELS):
            if level > self.level:
                continue
            stop = self.end // level * level
            if stop > cursor:
                reads.append((level, cursor, stop))
                cursor = stop
        return reads

    def coarse_segments(self) -> list[tuple[int, int, int]]:
        """Reads that tile the same buckets with the fewest rows: whole hours
        in the middle, finer resolutions only at the edges (for totals, which
        need no points)."""
        reads: list[tuple[int, int, int]] = []

        def cover(first: int, last: int, levels: tuple[int, ...]) -> None:
            if first >= last or not levels:
                return
            level, finer = levels[-1], levels[:-1]
            inner_first = -(-first // level) * level
            inner_last = last // level * level
            if inner_first >= inner_last:
                cover(first, last, finer)
                return
            cover(first, inner_first, finer)
            reads.append((level, inner_first, inner_last))
            cover(inner_last, last, finer)

        cover(self.start, self.end, LEVELS)
        return reads


def resolve(
    range_name: str | None,
    since: str | float | datetime | None,
    until: str | float | datetime | None,
    *,
    now: float,
    kept: Mapping[int, float] = DEFAULT_HORIZONS,
) -> TimeRange:
    """The :class:`TimeRange` for a named range or explicit times.

    Raises :class:`QueryError` for an unknown name, both kinds given, a
    malformed time, ``from`` not before ``to``, or a span over :data:`MAX_SPAN`.
    """
    if range_name is not None and (since is not None or until is not None):
        raise QueryError("range", "give either range or from/to, not both")
    if since is None and until is None:
        name = "1h" if range_name is None else range_name
        if name not in RANGES:
            raise QueryError("range", f"range must be one of {', '.join(RANGES)}")
        first, last = now - RANGES[name], now
    else:
        if since is None:
            raise QueryError("from", "from is required with to")
        first = parse_time("from", since)
        last = now if until is None else parse_time("to", until)
        if first >= last:
            raise QueryError("from", "from must be before to")
        if last - first > MAX_SPAN:
            raise QueryError("to", f"the range may span at most {MAX_SPAN // 86_400} days")
    span = last - first
    for step in STEPS:
        if step != STEPS[-1] and span / STEPS[STEPS.index(step) + 1] >= MIN_POINTS:
            continue  # a coarser step still gives enough points
        start = math.floor(first / step) * step
        level = next(
            (
                level
                for level in reversed(LEVELS)
                if step % level == 0 and start >= now - kept.get(level, math.inf)
            ),
            None,
        )
        if level is None and step % LEVELS[-1] == 0:
            level = LEVELS[-1]  # the coarsest is all there is for old data
        if level is not None:
            break
        # The resolution this step needs has expired that far back: coarser.
    assert level is not None  # the last step is a multiple of the coarsest level
    # The finest resolution still kept at the end of the range.
    fine = next((level for level in LEVELS if last >= now - kept.get(level, math.inf)), LEVELS[-1])
    # A range ending now includes the bucket now is in (requests of this
    # very instant); an explicit end is exclusive.
    end = (math.floor(last / fine) + 1) * fine if until is None else math.ceil(last / fine) * fine
    end = max(end, start + FINEST)
    return TimeRange(start=start, end=end, step=step, level=level, until=min(last, now))

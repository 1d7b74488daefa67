"""Ranges: steps, resolutions and reads that tile the range exactly."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

import pytest

from aegis_mw.core.rollup import LEVELS
from aegis_mw.history.ranges import (
    DEFAULT_HORIZONS,
    MAX_SPAN,
    RANGES,
    QueryError,
    TimeRange,
    horizons,
    parse_time,
    resolve,
)

NOW = 1_790_000_123.4


@pytest.mark.parametrize(
    ("name", "step", "level"),
    [
        ("5m", 5, 5),
        ("15m", 15, 5),
        ("1h", 60, 60),
        ("6h", 300, 300),
        ("24h", 900, 300),
        ("7d", 7200, 3600),
        ("30d", 43_200, 3600),
    ],
)
def test_named_ranges_get_60_to_120_points(name: str, step: int, level: int) -> None:
    window = resolve(name, None, None, now=NOW)
    assert (window.step, window.level) == (step, level)
    assert 60 <= window.points <= 121  # the last point is the partial one
    assert window.start % step == 0 and window.start <= NOW - RANGES[name]
    assert window.end >= NOW and window.end % 5 == 0
    assert window.until == NOW


def _covered(window: TimeRange) -> list[tuple[int, int]]:
    return [(start, end) for _, start, end in window.segments()]


@pytest.mark.parametrize("name", list(RANGES))
def test_segments_tile_the_range_without_gaps_or_overlap(name: str) -> None:
    window = resolve(name, None, None, now=NOW)
    covered = _covered(window)
    assert covered[0][0] == window.start and covered[-1][1] == window.end
    for (_, end), (start, _) in itertools.pairwise(covered):
        assert end == start
    for level, start, end in window.segments():
        assert level in LEVELS and start % level == 0 and end % level == 0


def test_explicit_times_in_iso_8601() -> None:
    window = resolve(None, "2026-11-29T10:00:00Z", "2026-11-29T11:00:00+00:00", now=NOW)
    start = datetime(2026, 11, 29, 10, tzinfo=timezone.utc).timestamp()
    assert window.start == start and window.end == start + 3600
    assert window.step == 60 and window.points == 60


def test_naive_times_are_utc() -> None:
    assert parse_time("from", "2026-11-29T10:00:00") == parse_time("from", "2026-11-29T10:00:00Z")


def test_old_ranges_read_resolutions_that_are_still_kept() -> None:
    # Two days ago, 15 minutes wide: 5-second rollups are kept one day only.
    since = NOW - 2 * 86_400
    window = resolve(None, since, since + 900, now=NOW)
    assert window.level == 60 and window.step == 60
    assert all(level >= 60 for level, _, _ in window.segments())
    # With retention_raw of 2 hours, a day-old hour is read from 5-minute rollups.
    kept = horizons(7200, 86_400 * 90)
    window = resolve(None, NOW - 86_400, NOW - 82_800, now=NOW, kept=kept)
    assert window.level == 300
    assert all(level >= 300 for level, _, _ in window.segments())
    assert DEFAULT_HORIZONS[5] == 86_400


@pytest.mark.parametrize(
    ("args", "parameter", "message"),
    [
        (("2h", None, None), "range", "range must be one of 5m, 15m, 1h"),
        (("1h", "2026-11-29T10:00:00Z", None), "range", "either range or from/to"),
        ((None, None, "2026-11-29T10:00:00Z"), "from", "from is required"),
        ((None, "2026-11-29T11:00:00Z", "2026-11-29T10:00:00Z"), "from", "before to"),
        ((None, "2026-11-29T10:00:00Z", "2026-11-29T10:00:00Z"), "from", "before to"),
        ((None, "yesterday", None), "from", "ISO 8601"),
        ((None, "2026-11-29T10:00:00Z", "2026-13-01"), "to", "ISO 8601"),
        ((None, "", None), "from", "ISO 8601"),
        ((None, "2020-01-01T00:00:00Z", "2026-01-01T00:00:00Z"), "to", "at most 400 days"),
    ],
)
def test_bad_ranges_name_the_parameter(
    args: tuple[str | None, str | None, str | None], parameter: str, message: str
) -> None:
    with pytest.raises(QueryError, match=message) as caught:
        resolve(*args, now=NOW)
    assert caught.value.parameter == parameter
    assert MAX_SPAN == 400 * 86_400


@pytest.mark.parametrize("name", list(RANGES))
def test_coarse_segments_cover_the_same_buckets_with_few_reads(name: str) -> None:
    window = resolve(name, None, None, now=NOW)
    coarse = window.coarse_segments()
    spans = sorted((start, end) for _, start, end in coarse)
    assert spans[0][0] == window.start and spans[-1][1] == window.end
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start
    for level, start, end in coarse:
        assert start % level == 0 and end % level == 0
    # Whole hours come from the hourly rollups: at most a few edge reads besides.
    assert len(coarse) <= 2 * len(LEVELS) - 1
    if window.end - window.start >= 3 * 3600:
        hourly = sum(end - start for level, start, end in coarse if level == 3600)
        assert hourly >= window.end - window.start - 2 * 3600

"""The live service's running window sums equal a fresh read, late rows
included: a worker that wrote late is counted as soon as its bucket is read
again (the last minute every tick, everything every five minutes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.figures import SETTLE_SECONDS, collect
from aegis_mw.alerts.sliding import SlidingFigures
from tests.history.dataset import open_sink

from .test_service import START, write

RULES = [
    AlertRule(name="ratio", input="error_ratio", operator=">", threshold=0.1, window="5m"),
    AlertRule(
        name="p99",
        input="latency_p99_ms",
        operator=">",
        threshold=1,
        window="1h",
        group_by=("route",),
    ),
    AlertRule(
        name="rate", input="request_rate", operator=">", threshold=1, window="15m", route="/pay"
    ),
]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def test_late_rows_are_summed_once_read_again(sink: Any) -> None:
    for second in range(0, 600, 5):
        write(sink, START + second, 10, second % 3, f"a{second}-")
    sliding = SlidingFigures(sink, RULES, SETTLE_SECONDS)
    now = START + 600
    assert sliding.collect(now) == collect(sink, RULES, now, SETTLE_SECONDS)
    # A late worker writes into a bucket summed already, 30 s back: the
    # next tick reads the last minute again and counts it.
    write(sink, now - SETTLE_SECONDS - 30, 50, 50, "late-")
    now += 10
    assert sliding.collect(now) == collect(sink, RULES, now, SETTLE_SECONDS)
    # Later than a minute: counted at the next whole read (five minutes).
    write(sink, now - 200, 40, 40, "later-")
    now += 10
    stale = sliding.collect(now)
    assert stale["ratio"] != collect(sink, RULES, now, SETTLE_SECONDS)["ratio"]
    for _ in range(30):
        now += 10
        write(sink, now - SETTLE_SECONDS, 10, 0, f"t{now}-")
        assert set(sliding.collect(now)) == {rule.name for rule in RULES}
    assert sliding.collect(now) == collect(sink, RULES, now, SETTLE_SECONDS)


def test_a_new_set_of_rules_keeps_the_sums_it_still_uses(sink: Any) -> None:
    """Rules changed (through the API): the windows both sets have go on
    from their running sums, a window new to the set (longer than any read
    so far) is read whole; the figures equal a fresh read at every step,
    late rows included."""
    for second in range(0, 7200, 30):
        write(sink, START + second, 10, second % 4, f"a{second}-")
    now = START + 7200
    sliding = SlidingFigures(sink, RULES, SETTLE_SECONDS)
    assert sliding.collect(now) == collect(sink, RULES, now, SETTLE_SECONDS)
    # The same rows as "ratio" (5 s buckets of the totals) over a longer window.
    longer = AlertRule(
        name="ratio_20m", input="error_ratio", operator=">", threshold=0.1, window="20m"
    )
    changed = [RULES[0], RULES[1], longer]
    moved = sliding.with_rules(changed)
    shared = [key for key in sliding._sums if key in moved._sums]
    assert len(shared) == 2 and all(moved._sums[k] is sliding._sums[k] for k in shared)
    for step in range(8):
        now += 10
        write(sink, now - SETTLE_SECONDS, 10, step % 3, f"n{step}-")
        if step == 4:  # a late worker, inside the minute read again every tick
            write(sink, now - SETTLE_SECONDS - 30, 30, 30, "late-")
        assert moved.collect(now) == collect(sink, changed, now, SETTLE_SECONDS), step
    # And back to the first set: the 15-minute window is new again.
    back = moved.with_rules(RULES)
    now += 10
    assert back.collect(now) == collect(sink, RULES, now, SETTLE_SECONDS)

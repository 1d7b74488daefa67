"""The alert service: one evaluator per app over a shared store, takeover
that resumes state, fencing, failures that change nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.service import LEASE_INTERVALS, AlertService
from aegis_mw.core.record import Batch, RequestRecord
from aegis_mw.core.rollup import RollupDelta
from tests.history.dataset import open_sink

from .timeline import START

RULE = AlertRule(
    name="errors", input="error_ratio", operator=">", threshold=0.1, window="1m", for_="20s",
    annotations={"summary": "$value_percent of requests fail"},
)  # fmt: skip
INTERVAL = 10.0


class Wall:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def write(sink: Any, at: float, requests: int, errors: int, tag: str) -> None:
    """``requests`` requests at ``at``, ``errors`` of them 500s, as one batch."""
    records, delta = [], RollupDelta()
    for n in range(requests):
        status = 500 if n < errors else 200
        records.append(
            RequestRecord(
                f"{tag}{n:08x}", at, "GET", "/pay", "/pay", status, 3.0, None, 0, 10, None, ""
            )
        )
        delta.add(at, "/pay", "GET", status, 3.0, status >= 500, 0, 10)
    delta.delta_id = tag
    sink.write(Batch(requests=records, rollups=delta))


@pytest.fixture(params=["sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def service(sink: Any, wall: Wall) -> AlertService:
    """A process's service (its own store object over the shared database)."""
    return AlertService([RULE], sink.alert_store(), sink, interval=INTERVAL, wall=wall)


def notices(sink: Any) -> list[tuple[str, str]]:
    return [
        (r["kind"], r["to_state"]) for r in sink.alert_store().history(100)[::-1] if r["notify"]
    ]


def test_one_evaluator_and_a_takeover_that_resumes(sink: Any) -> None:
    wall = Wall()
    a, b = service(sink, wall), service(sink, wall)
    for second in range(0, 120, 5):  # 30 % errors from START on
        write(sink, START + second, 20, 6, f"w{second}-")
    wall.now = START + 80  # the window [START + 10, START + 70) is settled
    a.tick()
    b.tick()
    assert (a.token, b.token) == (1, None)
    assert [x["state"] for x in a.view()] == ["pending"]
    assert b.view() == a.view()  # b shows what the store holds
    wall.now += INTERVAL
    a.tick()
    b.tick()
    wall.now += INTERVAL
    a.tick()  # 20 s pending: fires
    b.tick()
    assert notices(sink) == [("firing", "firing")]
    assert [x["state"] for x in b.view()] == ["firing"]
    assert b.view()[0]["message"] == "errors firing: 30 % of requests fail"
    # a dies without a word: b takes over once the lease has expired, and
    # resumes the firing episode (no second firing notice).
    wall.now += INTERVAL * LEASE_INTERVALS + 0.1
    b.tick()
    assert b.token == 2
    assert notices(sink) == [("firing", "firing")]
    # a comes back from its pause: fenced out, it writes nothing.
    a.tick()
    assert a.token is None
    # The errors stop; b resolves.
    for second in range(120, 220, 5):
        write(sink, START + second, 20, 0, f"ok{second}-")
    wall.now = START + 230
    b.tick()
    a.tick()
    assert notices(sink) == [("firing", "firing"), ("resolved", "resolved")]
    assert b.view() == a.view() == []


def test_a_clean_stop_hands_the_lease_on_at_once(sink: Any) -> None:
    wall = Wall()
    a, b = service(sink, wall), service(sink, wall)
    a.tick()
    a.stop()
    b.tick()
    assert b.token is not None


def test_a_store_that_fails_changes_nothing_and_is_logged_once(
    sink: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def claim(self, *args: Any) -> int:
            raise OSError("disk I/O error")

    wall = Wall()
    broken = AlertService([RULE], Broken(), sink, interval=INTERVAL, wall=wall)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="aegis_mw.alerts"):
        for _ in range(3):
            broken.tick()
    assert broken.failures == 3
    assert [r.getMessage() for r in caplog.records] == ["aegis_mw: alert evaluation failed"]


def test_a_failing_read_is_the_rules_health(sink: Any) -> None:
    class Unreadable:
        def read_rollups(self, *args: Any, **kwargs: Any) -> list[Any]:
            raise TimeoutError("read timed out")

    wall = Wall()
    evaluator = AlertService([RULE], sink.alert_store(), Unreadable(), interval=INTERVAL, wall=wall)
    evaluator.tick()
    assert evaluator.health == {"errors": "TimeoutError: read timed out"}
    assert sink.alert_store().history(10) == []

"""The flusher reports drops, survives errors of every kind, and force_flush keeps its word."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

import aegis_mw.core.flush_cycle as flush_cycle_module
from aegis_mw import Aegis
from aegis_mw.core.record import Batch
from tests.core.faulty_sinks import (
    WAIT,
    FaultySink,
    drop_lines,
    drops,
    frozen,
    http_item,
    offer_all,
    paths,
    sink_drops,
)

# -- 8. drop warnings ----------------------------------------------------------------


def test_drop_warnings_are_rate_limited_and_carry_counts_since_the_last(
    rig: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line per interval at most; the next line sums every drop since, by reason."""
    monkeypatch.setattr(flush_cycle_module, "DROP_REPORT_INTERVAL", 3600.0)
    caplog.set_level(logging.WARNING, logger="aegis_mw.flusher")
    sink = FaultySink("drop-lines")
    sink.down = True
    aegis = rig(sink, max_buffer=5, batch_size=100)
    with frozen(aegis):
        offer_all(aegis, paths(8, "/a"))  # 3 refused by the inbox
    assert aegis.force_flush(WAIT) is False
    first = "aegis dropped 3 records since the last report (buffer_full=3)"
    assert drop_lines(caplog) == [first]

    with frozen(aegis):
        offer_all(aegis, paths(7, "/b"))  # 2 refused; the 5 accepted overflow the backlog
    assert aegis.force_flush(WAIT) is False
    stats = aegis.stats()
    assert (stats.dropped, stats.sinks[0].dropped) == (
        drops(buffer_full=5),
        sink_drops(backlog_full=5),
    )
    assert drop_lines(caplog) == [first]

    assert aegis.shutdown(timeout=0.2) is False
    assert drop_lines(caplog) == [
        first,
        "aegis dropped 12 records since the last report "
        "(backlog_full@drop-lines=5, buffer_full=2, shutdown_timeout@drop-lines=5)",
    ]


def test_drop_warnings_report_only_new_drops(
    rig: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no rate limit: a line per cycle that saw new drops, with only those."""
    monkeypatch.setattr(flush_cycle_module, "DROP_REPORT_INTERVAL", 0.0)
    caplog.set_level(logging.WARNING, logger="aegis_mw.flusher")
    aegis = rig(FaultySink("drop-new"), max_buffer=5, batch_size=100)
    with frozen(aegis):
        offer_all(aegis, paths(8, "/a"))
    assert aegis.force_flush(WAIT) is True
    assert aegis.force_flush(WAIT) is True
    with frozen(aegis):
        offer_all(aegis, paths(6, "/b"))
    assert aegis.force_flush(WAIT) is True
    assert drop_lines(caplog) == [
        "aegis dropped 3 records since the last report (buffer_full=3)",
        "aegis dropped 1 records since the last report (buffer_full=1)",
    ]


def test_drop_warnings_resume_after_a_restart(
    rig: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After shutdown() and start(), new drops are reported again."""
    monkeypatch.setattr(flush_cycle_module, "DROP_REPORT_INTERVAL", 0.0)
    caplog.set_level(logging.WARNING, logger="aegis_mw.flusher")
    aegis = rig(FaultySink("drop-restart"), max_buffer=5, batch_size=100)
    with frozen(aegis):
        offer_all(aegis, paths(8, "/a"))
    assert aegis.shutdown() is True
    aegis.start()
    with frozen(aegis):
        offer_all(aegis, paths(9, "/b"))
    assert aegis.force_flush(WAIT) is True
    assert drop_lines(caplog) == [
        "aegis dropped 3 records since the last report (buffer_full=3)",
        "aegis dropped 4 records since the last report (buffer_full=4)",
    ]


# -- 10. the flusher survives --------------------------------------------------------


class ThirdPartyError(Exception):
    pass


class NotAnException(BaseException):
    pass


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(lambda: RuntimeError("boom"), "RuntimeError: boom", id="RuntimeError"),
        pytest.param(lambda: KeyError(), "KeyError", id="KeyError-no-message"),
        pytest.param(
            lambda: OSError(28, "No space left on device"),
            "OSError: [Errno 28] No space left on device",
            id="OSError",
        ),
        pytest.param(
            lambda: TimeoutError("socket timed out"),
            "TimeoutError: socket timed out",
            id="TimeoutError",
        ),
        pytest.param(lambda: ThirdPartyError("odd"), "ThirdPartyError: odd", id="custom"),
        pytest.param(lambda: NotAnException("worse"), "NotAnException: worse", id="BaseException"),
    ],
)
def test_flusher_survives_any_error_from_a_write(
    rig: Callable[..., Aegis], error: Callable[[], BaseException], expected: str
) -> None:
    """Whatever a write raises is counted as a sink error (not a timeout); records still flow."""
    sink = FaultySink("raising")
    sink.error = error
    sink.fail_next = 1
    aegis = rig(sink)
    offer_all(aegis, paths(3))
    assert aegis.force_flush(WAIT) is False
    stats = aegis.stats()
    [entry] = stats.sinks
    assert (entry.errors, entry.timeouts, entry.last_error) == (1, 0, expected)
    assert (stats.flusher_alive, stats.flusher_errors) == (True, 0)
    offer_all(aegis, paths(2, "/later"))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3) + paths(2, "/later")
    assert aegis.stats().flusher_errors == 0


def test_flusher_survives_a_sink_whose_close_raises(
    rig: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    """close() raising is logged; shutdown still succeeds and a restarted pipeline records."""
    sink = FaultySink("close-raises")
    sink.close_error = OSError("disk gone")
    aegis = rig(sink)
    offer_all(aegis, paths(3))
    assert aegis.shutdown() is True
    assert sink.close_calls == 1
    assert "aegis sink close-raises did not close cleanly: disk gone" in caplog.messages
    aegis.start()
    offer_all(aegis, paths(3, "/later"))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3) + paths(3, "/later")
    stats = aegis.stats()
    assert (stats.flusher_alive, stats.flusher_errors) == (True, 0)


def _status_none() -> list[Any]:
    item = http_item("/bad")
    item[3] = None
    return item


def _method_unhashable() -> list[Any]:
    item = http_item("/bad")
    item[0] = ["GET"]  # passes the realtime fold; the metric labels must skip it too
    return item


MALFORMED = [
    pytest.param("not an inbox item", id="string"),
    pytest.param(["GET"], id="short-list"),
    pytest.param(dict(enumerate(http_item("/dict"))), id="dict-not-sequence"),
    pytest.param(object(), id="object"),
    pytest.param(_status_none(), id="status-None"),
    pytest.param(_method_unhashable(), id="method-unhashable"),
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_flusher_survives_a_malformed_inbox_item(rig: Callable[..., Aegis], bad: Any) -> None:
    """An item the flusher cannot process is skipped and counted as dropped ("invalid");
    the flusher stays healthy and later records flow."""
    sink = FaultySink("malformed")
    aegis = rig(sink)
    aegis.recorder.offer(bad)
    assert aegis.force_flush(WAIT) is True
    stats = aegis.stats()
    assert (stats.flusher_alive, stats.flusher_errors, stats.dropped["invalid"]) == (True, 0, 1)
    offer_all(aegis, paths(3))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3)
    assert aegis.stats().dropped["invalid"] == 1


def test_a_malformed_item_does_not_lose_its_neighbours(rig: Callable[..., Aegis]) -> None:
    """Good records drained together with a malformed one are all stored; only the bad
    one is dropped (and counted), and the realtime figures count just the good ones."""
    sink = FaultySink("neighbours")
    aegis = rig(sink)
    aegis.recorder.offer(http_item("/before"))
    aegis.recorder.offer(_status_none())
    aegis.recorder.offer(http_item("/after"))
    assert aegis.force_flush(WAIT) is True
    stats = aegis.stats()
    assert sorted(sink.paths) == ["/after", "/before"]
    assert (stats.flusher_errors, stats.dropped["invalid"], stats.buffered) == (0, 1, 0)
    assert aegis.realtime().total_requests == 2


# -- 11. force_flush -----------------------------------------------------------------


def test_force_flush_returns_only_after_the_write(rig: Callable[..., Aegis]) -> None:
    """While the write of earlier records is blocked, force_flush is blocked too."""
    sink = FaultySink("blocking")
    gate = sink.hold()
    aegis = rig(sink, sink_timeout=30.0)
    offer_all(aegis, paths(4))
    result: list[bool] = []
    done = threading.Event()

    def flush() -> None:
        result.append(aegis.force_flush(30.0))
        done.set()

    flusher = threading.Thread(target=flush)
    flusher.start()
    try:
        assert sink.entered.wait(WAIT)
        assert not done.is_set()
    finally:
        gate.set()
        flusher.join(WAIT)
    assert result == [True]
    assert sink.paths == paths(4)


def test_force_flush_covers_records_offered_before_it_while_the_loop_runs(
    rig: Callable[..., Aegis],
) -> None:
    """With background cycles racing, each force_flush leaves every earlier record stored."""
    sink = FaultySink("racing-loop")
    aegis = rig(sink, flush_interval=0.001, batch_size=3)
    offered: list[str] = []
    for round_ in range(20):
        batch = paths(7, f"/round{round_}")
        offer_all(aegis, batch)
        offered += batch
        assert aegis.force_flush(WAIT) is True
        assert sink.paths == offered
    assert set(sink.deliveries.values()) == {1}


def test_force_flush_succeeds_although_traffic_arrives_during_it(
    rig: Callable[..., Aegis],
) -> None:
    """A record arriving while force_flush writes does not turn a full success into False."""
    sink = FaultySink("traffic")
    aegis = rig(sink)

    def arrive(batch: Batch) -> None:
        sink.on_write = None
        aegis.recorder.offer(http_item("/late"))

    sink.on_write = arrive
    offer_all(aegis, paths(3))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths[:3] == paths(3)
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == [*paths(3), "/late"]

"""Flow control by acknowledgement: the window, the stall deadline, and who
may acknowledge."""

from __future__ import annotations

import pytest

from aegis_mw.realtime.flow import AckError, Flow


def test_a_client_that_never_acknowledges_is_neither_held_nor_timed() -> None:
    flow = Flow(window=2, stall_timeout=5.0)
    for second in range(100):
        assert flow.window_open()
        flow.assign(float(second))
    assert flow.deadline() is None and not flow.stalled(1e9)


def test_once_it_acknowledges_the_window_holds_and_the_clock_runs() -> None:
    flow = Flow(window=2, stall_timeout=5.0)
    assert [flow.assign(0.0), flow.assign(0.0)] == [1, 2]
    assert flow.ack(1, 1.0) is True  # moved, and flow control is on
    assert flow.window_open()
    flow.assign(2.0)  # 2 and 3 outstanding
    assert not flow.window_open()
    assert flow.deadline() == 6.0  # 5 s after the acknowledgement last moved
    assert not flow.stalled(5.99) and flow.stalled(6.0)
    assert flow.ack(3, 5.5) is True
    assert flow.window_open() and flow.deadline() is None
    flow.assign(20.0)  # nothing was outstanding: the wait starts with this message
    assert flow.deadline() == 25.0


def test_repeated_or_first_acknowledgements() -> None:
    flow = Flow(window=4, stall_timeout=1.0)
    flow.assign(0.0)
    assert flow.ack(0, 0.5) is True  # the first, though it moves nothing: it turns flow control on
    assert flow.acking and flow.deadline() == 1.5
    assert flow.ack(0, 0.9) is False  # a repeat: no progress
    assert flow.deadline() == 1.5
    with pytest.raises(AckError, match="past the last message sent"):
        flow.ack(2, 1.0)


def test_pongs_acknowledge_until_the_client_does() -> None:
    flow = Flow(window=2, stall_timeout=1.0, acking=True)  # a server with pings
    flow.assign(0.0)
    flow.assign(0.0)
    assert not flow.window_open()  # held from the start: pongs are on the way
    assert flow.ack(2, 0.1, by_client=False) is True
    flow.assign(0.2)
    assert flow.ack(1, 0.3) is True  # the client's own: from now on only these count
    assert flow.client_acks
    assert flow.ack(3, 0.4, by_client=False) is False
    assert flow.acked == 2

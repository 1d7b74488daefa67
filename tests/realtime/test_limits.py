"""Connection and message-rate limits of /ws/metrics."""

from __future__ import annotations

import pytest

from aegis_mw.realtime.limits import CLOSE_POLICY, CLOSE_TRY_AGAIN, ConnectionLimits, MessageRate


def test_message_rate_allows_a_burst_then_the_rate() -> None:
    rate = MessageRate(per_second=2, burst=3)
    assert [rate.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert rate.allow(100.4) is False  # 0.8 of a token
    assert rate.allow(100.5) is True  # 1.0
    assert rate.allow(100.5) is False
    assert [rate.allow(200.0) for _ in range(4)] == [True, True, True, False]  # refilled to burst


@pytest.mark.parametrize(("per_second", "burst"), [(0, 5), (-1, 5), (1, 0.5)])
def test_message_rate_rejects_nonsense(per_second: float, burst: float) -> None:
    with pytest.raises(ValueError, match="per_second"):
        MessageRate(per_second=per_second, burst=burst)


def test_connection_limits_per_address_and_in_total() -> None:
    limits = ConnectionLimits(per_address=2, total=3)
    assert limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") is None
    code, reason = limits.admit("10.0.0.1") or (0, "")
    assert (code, reason) == (CLOSE_POLICY, "at most 2 connections per client address")
    assert limits.admit("10.0.0.2") is None
    code, reason = limits.admit("10.0.0.3") or (0, "")
    assert (code, reason) == (CLOSE_TRY_AGAIN, "server is at its limit of 3 connections")
    limits.release("10.0.0.1")
    assert limits.admit("10.0.0.3") is None
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limits.release(address)
    assert limits.open == 0 and limits.by_address == {}
    limits.release("never-admitted")  # harmless
    assert limits.open == 0

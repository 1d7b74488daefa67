"""Helpers for testing apps that use aegis_mw (ours and yours).

Example::

    from aegis_mw import Aegis, AegisMiddleware
    from aegis_mw.testing import MemorySink, recorded

    sink = MemorySink()
    aegis = Aegis(sink=sink)
    app.add_middleware(AegisMiddleware, aegis=aegis)
    client.get("/items/1")
    [record] = recorded(aegis)
    assert record.route == "/items/{item_id}"
"""

from __future__ import annotations

from .aegis import Aegis
from .core.record import RequestRecord, WebSocketSession
from .sinks.memory import MemorySink

__all__ = ["FakeClock", "MemorySink", "recorded", "recorded_sessions"]


class FakeClock:
    """A clock that moves only when told to; pass it as ``Aegis(clock=...)``."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += seconds


def _memory_sinks(aegis: Aegis) -> list[MemorySink]:
    sinks = [sink for sink in aegis.sinks if isinstance(sink, MemorySink)]
    if not sinks:
        raise ValueError("this Aegis has no memory sink; build it with sink='memory://'")
    return sinks


def recorded(aegis: Aegis, timeout: float = 10.0) -> list[RequestRecord]:
    """Flush, then return the request records held by the first memory sink."""
    if not aegis.force_flush(timeout):
        raise TimeoutError(f"aegis did not flush within {timeout} s: {aegis.stats()}")
    return _memory_sinks(aegis)[0].requests


def recorded_sessions(aegis: Aegis, timeout: float = 10.0) -> list[WebSocketSession]:
    """Flush, then return the WebSocket sessions held by the first memory sink."""
    if not aegis.force_flush(timeout):
        raise TimeoutError(f"aegis did not flush within {timeout} s: {aegis.stats()}")
    return _memory_sinks(aegis)[0].sessions

"""The two clocks the pipeline reads, behind one small object so tests can fake them."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """``monotonic`` times durations and the realtime ring; ``wall`` stamps records."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clocks: ``time.perf_counter`` and ``time.time``."""

    monotonic = staticmethod(time.perf_counter)
    wall = staticmethod(time.time)

"""The hub of ``/ws/metrics``: one snapshot per tick, shared by every client.

Each connection runs its own sender loop, which wakes at every tick
(``update_interval``) and asks the hub for the frame of its subscription.
The first loop to ask at a tick builds the snapshot, in a worker thread
(reading the aggregates takes their lock), holding the sections any client
subscribes to; every other loop of that tick waits for it. Each distinct
subscription's frame is encoded once per tick and the same text handed to
every client subscribed alike. Nothing runs while nobody listens: ticks
are driven by the connections themselves.

A client that reads slowly only delays its own loop. A loop whose client has
too many frames unacknowledged (:mod:`.flow`), or whose send has not
returned, sends nothing; when it may again, it sends the current tick's
frame: the newest replaces those the client missed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..core.record import isoformat
from ..endpoints.reads import RENDER
from . import protocol, sections
from .limits import ConnectionLimits

if TYPE_CHECKING:
    from ..aegis import Aegis


class Hub:
    """The state every ``/ws/metrics`` connection of one :class:`Aegis` shares.

    Example::

        hub = Hub(aegis)
        text = await hub.frame(hub.next_tick(), ("overview", "alerts"))
    """

    def __init__(self, aegis: Aegis, monotonic: Callable[[], float] = time.monotonic) -> None:
        settings = aegis.settings
        self.aegis = aegis
        self.interval = settings.update_interval / 1000
        self.monotonic = monotonic
        self.limits = ConnectionLimits(
            settings.ws_max_connections_per_client, settings.ws_max_connections
        )
        #: client id -> that client's subscription
        self.subscriptions: dict[str, protocol.Subscription] = {}
        self._ids = itertools.count(1)
        self._tick = -1
        self._snapshot: dict[str, Any] = {}
        self._timestamp = ""
        self._frames: dict[tuple[str, ...], str] = {}
        self._building: tuple[int, anyio.Event] | None = None
        #: Counters for tests and benchmarks: snapshots built, frames encoded.
        self.snapshots = 0
        self.encoded = 0

    def new_client_id(self) -> str:
        return f"{next(self._ids):x}-{int(self.monotonic() * 1000) & 0xFFFFFF:06x}"

    def next_tick(self) -> int:
        """The number of the next tick (ticks count intervals of the clock)."""
        return int(self.monotonic() / self.interval) + 1

    def current_tick(self) -> int:
        """The number of the tick under way (the newest frame's)."""
        return int(self.monotonic() / self.interval)

    def seconds_until(self, tick: int) -> float:
        return max(0.0, tick * self.interval - self.monotonic())

    def wanted(self) -> set[str]:
        """Every section some client subscribes to."""
        return {name for sub in self.subscriptions.values() for name, on in sub.items() if on}

    async def _build(self, names: Collection[str]) -> dict[str, Any]:
        """Sections read in one of our own render threads: never under the
        server's shared limiter, which the app's sync endpoints need."""
        limiter = self.aegis.reads.threads.limiter(RENDER)
        return await anyio.to_thread.run_sync(sections.build, self.aegis, names, limiter=limiter)

    async def frame(self, tick: int, names: tuple[str, ...]) -> str:
        """The ``metrics`` frame of ``names`` at ``tick`` (or a later one):
        built once per tick and encoded once per distinct ``names``."""
        while self._tick < tick:
            building = self._building
            if building is not None:
                # One build at a time: a slow one (a busy thread pool, say)
                # must not pile up more of itself behind it.
                await building[1].wait()
                continue
            done = anyio.Event()
            self._building = (tick, done)
            try:
                wanted = self.wanted() | set(names)
                snapshot = await self._build(wanted)
                if tick > self._tick:
                    self._tick, self._snapshot = tick, snapshot
                    self._timestamp = isoformat(self.aegis.clock.wall())
                    self._frames = {}
                    self.snapshots += 1
            finally:
                self._building = None
                done.set()
        # Read once: another tick may replace them while this one awaits.
        snapshot, timestamp, frames = self._snapshot, self._timestamp, self._frames
        missing = [name for name in names if name not in snapshot]
        if missing:  # subscribed since this tick's snapshot was taken
            extra = await self._build(missing)
            return self._encode(timestamp, {**snapshot, **extra}, names)
        text = frames.get(names)
        if text is None:
            text = frames[names] = self._encode(timestamp, snapshot, names)
        return text

    async def fresh_frame(self, names: Iterable[str]) -> str:
        """A frame built now for one client (after it subscribes)."""
        wanted = tuple(names)
        data = await self._build(wanted)
        return self._encode(isoformat(self.aegis.clock.wall()), data, wanted)

    def _encode(self, timestamp: str, data: dict[str, Any], names: Iterable[str]) -> str:
        self.encoded += 1
        return protocol.metrics(timestamp, {name: data[name] for name in names})

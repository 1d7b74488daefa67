"""A wake-up call for the tasks of one connection, set as often as needed."""

from __future__ import annotations

import math

import anyio


class Wakeup:
    """Wakes the tasks waiting for it, each time it is set."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self, at_most: float = math.inf) -> None:
        """Until the next :meth:`set`, or ``at_most`` seconds. The event is taken
        at the call: a task that checked its condition just before (with no
        await in between) cannot miss a set."""
        event = self._event
        with anyio.move_on_after(at_most):
            await event.wait()

"""A wake-up call for the tasks of one connection, set as often as needed."""

from __future__ import annotations

import math

import anyio


class Wakeup:
    """Wakes the tasks waiting for it, each time it is set."""

    def __init__(self) -> None:
        # Made when a task waits: most sets find nobody waiting and cost nothing.
        self._event: anyio.Event | None = None

    def set(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self, at_most: float = math.inf) -> None:
        """Until the next :meth:`set`, or ``at_most`` seconds. The event is taken
        at the call: a task that checked its condition just before (with no
        await in between) cannot miss a set."""
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        with anyio.move_on_after(at_most):
            await event.wait()

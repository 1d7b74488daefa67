"""Short slices of background work, so request threads get the GIL back quickly.

The pipeline's Python work (folding, finalizing, binding rows) holds the GIL.
A thread that wants it back (an event loop returning from ``epoll``, a
request thread of a WSGI server) waits until the holder lets go: at the next
blocking call, or after the interpreter's switch interval (5 ms by default),
and with several background threads busy it can lose that race more than
once. Under load every request crosses several such hand-overs, so a long
stretch of background work shows up as tail latency, not as CPU.

So the background work runs in slices of at most :data:`SLICE_SECONDS` and
then sleeps for :data:`PAUSE_SECONDS`. A sleep, not ``sleep(0)``: releasing
the GIL and taking it straight back can let the releasing thread win again
before a waiting thread on another core has even woken up. The switch
interval itself is the app's setting and is left alone.

The slice length is a trade: a pause is cheap in itself, but the work after
it runs on colder caches. Measured on a 2-core VM (the CPU of a flush of
5,000 records from ``bench/overhead.py``'s all-in app, medians of 8): slices
of 0.2 ms cost the pipeline 2.4 to 3.4 µs of CPU per record more than no
pauses, slices of 1 ms 0 to 0.5 µs. 0.5 ms lies between; it keeps a waiting
thread's delay a tenth of the switch interval.

Short pauses are not enough under load. An event loop that shares its core
with the pipeline (one worker pinned to a core, or a busy host) gets the GIL
back at each pause but only runs until the pipeline wants it again; a flush
of 5,000 records (several milliseconds of work for the flusher and as much
again of SQLite's in the sink's thread) then slows every request under way
to a fraction of its speed, a few times a second at 15,000 requests a second:
that was most of the p99 the middleware added in ``bench/tail_latency.py``.
So while the work keeps up, a pause lasts four slices, and the pipeline
takes at most a fifth of the core; when its backlog fills (a quarter of its
bound), pauses become short again, so it catches up rather than drop
records. Work paced this way takes longer, not more CPU: a flush that needs
5 ms of CPU ends about 25 ms after it began.

On Linux the pipeline's threads also run at a lower priority than the app's
(:func:`lower_thread_priority`): a slice that wakes while the event loop is
busy then waits for the loop's next idle moment or its own fair share,
instead of preempting the loop at once.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

#: Longest stretch of Python work between two pauses, in seconds (a slice
#: ends at the first check past it).
SLICE_SECONDS = 0.0005
#: How long a pause lets other threads run while the work keeps up (the
#: kernel rounds it up a little): four slices' worth, so background work takes
#: at most a fifth of the core it shares with an event loop, and a request
#: under way while the pipeline works is slowed by about that, not stopped.
#: Windows rounds any sleep up to its timer's tick (0.5 to 15.6 ms), which
#: would slow the pipeline down tens of times: there a pause only releases the
#: GIL (``sleep(0)``), which hands it over less reliably.
PAUSE_SECONDS = 0.0 if sys.platform == "win32" else 0.002
#: The pause while the work falls behind (its backlog a quarter full or more,
#: see :data:`BEHIND`): just long enough for a waiting thread to take the GIL,
#: so the pipeline catches up at nearly a whole core rather than drop records.
HURRIED_PAUSE_SECONDS = 0.0 if sys.platform == "win32" else 0.00005
#: The share of its bound a backlog holds when the work counts as behind.
BEHIND = 0.25
#: How many nice levels below the app's threads the flusher's and the sinks'
#: threads run by default (Linux; the ``background_niceness`` option). Under
#: saturating HTTP load (``bench/tail_latency.py``, beside the same code
#: without it) p99 went from 1.60 to 1.35 times the bare app's at 5 levels and
#: from 1.56 to 1.35 at 10, CPU the same. 5 weighs such a thread at a third of
#: a normal one (Linux's nice weights), so against one busy event loop it still
#: gets about a quarter of the core when it wants it: well above the tenth the
#: pipeline needs at the loop's full speed, so it keeps up instead of dropping
#: records. 10 would give it a tenth.
NICENESS = 5


def lower_thread_priority(niceness: int) -> None:
    """Run the calling thread ``niceness`` nice levels below the process (its
    main thread's level), on Linux, where each thread has its own; elsewhere a
    priority is the whole process's, the app's too, and is left alone. The
    level is set from the process's, not the thread's own, so a thread started
    by an already lowered one (a pipeline restarted from its own thread) ends
    at the same level, not lower still. A refusal (a sandbox without
    ``setpriority``) leaves it as it is: the pacing alone still applies."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + niceness)
        if os.getpriority(os.PRIO_PROCESS, thread) < target:
            os.setpriority(os.PRIO_PROCESS, thread, target)
    except (OSError, AttributeError):
        pass


class Slices:
    """Call :meth:`check` between small units of work; it pauses when the
    current slice has run :data:`SLICE_SECONDS`. One per thread.

    Example::

        slices = Slices()
        for part in parts:
            handle(part)
            slices.check()
    """

    __slots__ = ("_clock", "_since", "backlog", "budget", "hurried", "pause", "pauses")

    def __init__(
        self,
        budget: float = SLICE_SECONDS,
        pause: float = PAUSE_SECONDS,
        *,
        backlog: Callable[[], float] | None = None,
        hurried: float = HURRIED_PAUSE_SECONDS,
    ) -> None:
        self.budget = budget
        self.pause = pause
        #: The share of its bound the work's backlog holds (0 to 1), read at
        #: each pause: at :data:`BEHIND` or more, pauses are ``hurried``.
        self.backlog = backlog
        self.hurried = hurried
        #: Pauses taken so far.
        self.pauses = 0
        self._clock = time.perf_counter
        self._since = self._clock()

    def pause_seconds(self) -> float:
        """The next pause: ``pause``, or ``hurried`` while the work is behind."""
        return pause_for(self.backlog, self.pause, self.hurried)

    def begin(self) -> None:
        """Start a slice now (after the thread was blocked anyway)."""
        self._since = self._clock()

    def check(self) -> None:
        if self._clock() - self._since >= self.budget:
            time.sleep(self.pause_seconds())
            self.pauses += 1
            self._since = self._clock()


class Paced:
    """A sink whose writes pause between slices, paced by what ``Aegis``
    gives :meth:`pace_by`: the fuller of its inbox and the sink's backlog."""

    _backlog: Callable[[], float] | None = None

    def pace_by(self, backlog: Callable[[], float]) -> None:
        """Pace this sink's pauses by ``backlog`` (a share of its bound)."""
        self._backlog = backlog


def pause_for(
    backlog: Callable[[], float] | None,
    pause: float = PAUSE_SECONDS,
    hurried: float = HURRIED_PAUSE_SECONDS,
) -> float:
    """``pause``, or ``hurried`` while ``backlog`` says the work is behind."""
    if backlog is not None and backlog() >= BEHIND:
        return hurried
    return pause

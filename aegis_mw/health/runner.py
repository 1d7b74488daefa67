"""Running the checks: concurrently, each within its timeout, results cached.

Async checks run on the event loop; sync ones in worker threads (they may
block on a database). A check that outlives its timeout is ``unknown``; a
sync one keeps its thread until it returns, and is not started again while
it runs, so a hanging dependency cannot pile up threads. Results are cached
for ``cache_seconds`` and concurrent probes share one run, so probes cannot
stampede a dependency.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.labels import describe_error
from .checks import FAIL, UNKNOWN, CheckResult, HealthCheck, interpret, json_safe


class _Run:
    """One run of the checks, shared by the probes that arrive while it runs."""

    __slots__ = ("done", "results")

    def __init__(self, done: Any) -> None:
        self.done = done  # anyio.Event, set when the run ends (finished or cancelled)
        self.results: dict[str, CheckResult] | None = None  # None: it did not finish


class CheckRunner:
    """Runs a set of checks; ``run()`` is async (anyio: asyncio or trio)."""

    def __init__(
        self,
        checks: Callable[[], Sequence[HealthCheck]],
        *,
        cache_seconds: float,
        wall: Callable[[], float] = time.time,
        limiter: Callable[[], Any] | None = None,
    ) -> None:
        self._checks = checks
        # The CapacityLimiter of the running loop that sync checks run under:
        # never the server's default one, which the app's own calls need.
        self._limiter = limiter
        self.cache_seconds = cache_seconds
        self._wall = wall
        self._results: dict[str, CheckResult] = {}
        self._fresh_until = 0.0
        self._running: _Run | None = None  # the run in progress
        self._busy: set[str] = set()  # sync checks whose thread has not returned
        self._lock = threading.Lock()

    @property
    def last_results(self) -> Mapping[str, CheckResult]:
        """The latest result of each check (no run started)."""
        return dict(self._results)

    async def run(self) -> dict[str, CheckResult]:
        """The checks' results, from the cache while it is fresh."""
        import anyio

        while True:
            if time.monotonic() < self._fresh_until:
                return dict(self._results)
            shared: _Run | None = self._running
            if shared is None:
                break
            # Another probe started a run: share it. If that probe was cancelled
            # (a client gone, a timeout around it), its run has no results and
            # this one must not answer with stale or empty ones: go round again.
            await shared.done.wait()
            if shared.results is not None:
                return dict(shared.results)
        self._running = mine = _Run(anyio.Event())
        try:
            checks = list(self._checks())
            results: dict[str, CheckResult] = {}

            async def one(check: HealthCheck) -> None:
                results[check.name] = await self._run_one(check)

            async with anyio.create_task_group() as group:
                for check in checks:
                    group.start_soon(one, check)
            finished = {check.name: results[check.name] for check in checks}
            self._results = mine.results = finished
            self._fresh_until = time.monotonic() + self.cache_seconds
        finally:
            self._running = None
            mine.done.set()
        return dict(finished)

    async def _run_one(self, check: HealthCheck) -> CheckResult:
        import anyio
        import anyio.to_thread

        started = time.perf_counter()
        checked_at = self._wall()
        status, message = UNKNOWN, f"no answer within {check.timeout:g} s"
        details: Mapping[str, Any] = {}
        if check.name in self._busy:
            message = "the previous run has not returned yet"
        else:
            with anyio.move_on_after(check.timeout):
                try:
                    if check.is_async:
                        value = await check.function()
                    else:
                        value = await anyio.to_thread.run_sync(
                            self._call_sync,
                            check,
                            abandon_on_cancel=True,
                            limiter=None if self._limiter is None else self._limiter(),
                        )
                    if inspect.isawaitable(value):
                        value = await value
                    status, message, details = interpret(value)
                    # What a check returns is shown as JSON: made safe here, so
                    # an odd value cannot turn /health into a 500.
                    message, details = str(message), json_safe(details)
                except Exception as exc:
                    status, message, details = FAIL, describe_error(exc, 512), {}
        return CheckResult(
            name=check.name,
            status=status,
            message=message,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            critical=check.critical,
            details=details,
            checked_at=checked_at,
        )

    def _call_sync(self, check: HealthCheck) -> Any:
        """In a worker thread: marked busy until it returns, however long."""
        with self._lock:
            self._busy.add(check.name)
        try:
            return check.function()
        finally:
            with self._lock:
                self._busy.discard(check.name)

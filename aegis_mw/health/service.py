"""``aegis.health``: the registered checks and the three answers built on them.

- readiness (``/health/ready``): run the checks (cached); 200 when healthy or
  degraded (a non-critical check failing), 503 when a critical one fails or
  times out; ``application/health+json`` in the IETF draft's pass/warn/fail.
- liveness (``/health/live``): 200 unless the process is wedged (its event
  loop lagging beyond ``liveness_max_loop_lag``, or the flusher thread dead);
  it runs no check and says nothing but its status.
- ``/health``: the readiness report, plus liveness figures and the version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, overload

from ..endpoints.reads import CHECKS
from ..endpoints.response import Response
from .builtin import live_transport_health, spool_health
from .checks import FAIL, PASS, UNKNOWN, WARN, CheckResult, HealthCheck
from .loop_lag import LoopLagMonitor
from .runner import CheckRunner

if TYPE_CHECKING:
    from ..aegis import Aegis

HEALTH_JSON = "application/health+json"


def overall(results: Mapping[str, CheckResult]) -> str:
    """fail if a critical check failed or timed out; warn if any other did, or warned."""
    status = PASS
    for result in results.values():
        if result.status in (FAIL, UNKNOWN):
            if result.critical:
                return FAIL
            status = WARN
        elif result.status == WARN:
            status = WARN
    return status


class HealthService:
    """Owned by :class:`~aegis_mw.Aegis` as ``aegis.health``.

    Example::

        aegis.health.add("database", ping_database, timeout=1.0)

        @aegis.health.check("cache", critical=False)
        async def cache() -> bool:
            return await redis.ping()
    """

    def __init__(self, aegis: Aegis) -> None:
        settings = aegis.settings
        self._aegis = aegis
        self._checks: dict[str, HealthCheck] = {}
        self.loop_lag = LoopLagMonitor()
        #: Watch the event loop the probes come from for lag; off under WSGI,
        #: where each probe runs its checks in a short loop of its own.
        self.watch_loop = True
        self.max_loop_lag = settings.liveness_max_loop_lag
        threads = aegis.reads.threads
        self.runner = CheckRunner(
            lambda: list(self._checks.values()),
            cache_seconds=settings.health_cache_seconds,
            limiter=lambda: threads.limiter(CHECKS),
        )
        aegis.metrics.health_reading = self._gauge
        if any(runner.spool is not None for runner in aegis.flusher.runners):
            self.add(spool_health(aegis))  # its figures in /health/ready's details
        if aegis.metrics.link is not None or any(
            hasattr(sink, "hosts_seen") for sink in aegis.sinks
        ):
            self.add(live_transport_health(aegis))

    # -- registration ---------------------------------------------------------
    @overload
    def add(self, check: HealthCheck, /) -> HealthCheck: ...

    @overload
    def add(
        self, name: str, check: Any, /, *, timeout: float = 2.0, critical: bool = True
    ) -> HealthCheck: ...

    def add(
        self,
        name: str | HealthCheck,
        check: Any = None,
        /,
        *,
        timeout: float = 2.0,
        critical: bool = True,
    ) -> HealthCheck:
        """Register a check (a callable, sync or async, or an object with ``check()``),
        or a ready :class:`HealthCheck`; a name registered again is replaced."""
        entry = (
            name if isinstance(name, HealthCheck) else HealthCheck(name, check, timeout, critical)
        )
        self._checks[entry.name] = entry
        return entry

    def check(
        self, name: str, *, timeout: float = 2.0, critical: bool = True
    ) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`."""

        def register(function: Any) -> Any:
            self.add(name, function, timeout=timeout, critical=critical)
            return function

        return register

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    @property
    def checks(self) -> tuple[HealthCheck, ...]:
        return tuple(self._checks.values())

    # -- answers --------------------------------------------------------------
    async def results(self) -> dict[str, CheckResult]:
        """Run the checks (or take the cached run). From a coroutine on the loop."""
        if self.watch_loop:
            self.loop_lag.start_here()
        return await self.runner.run()

    async def readiness(self) -> Response:
        results = await self.results()
        status = overall(results)
        body = {"status": status, "checks": {n: [r.to_json()] for n, r in results.items()}}
        return Response.json(503 if status == FAIL else 200, body, HEALTH_JSON)

    async def report(self) -> Response:
        from .. import __version__

        results = await self.results()
        status = overall(results)
        alive, lag = self._alive()
        body = {
            "status": status,
            "version": __version__,
            "checks": {name: [result.to_json()] for name, result in results.items()},
            "liveness": {
                "status": PASS if alive else FAIL,
                "eventLoopLagSeconds": round(lag, 6),
                "flusherAlive": self._aegis.flusher.alive,
            },
        }
        return Response.json(503 if status == FAIL else 200, body, HEALTH_JSON)

    def liveness(self) -> Response:
        """No check runs and nothing is revealed: just whether the process works."""
        if self.watch_loop:
            self.loop_lag.start_here()
        alive, _ = self._alive()
        return Response.json(
            200 if alive else 503, {"status": PASS if alive else FAIL}, HEALTH_JSON
        )

    def _alive(self) -> tuple[bool, float]:
        aegis = self._aegis
        lag = self.loop_lag.lag()
        # A pipeline shut down on purpose is not a dead flusher.
        flusher_ok = aegis.flusher.alive or aegis.recorder.closed
        return flusher_ok and lag <= self.max_loop_lag, lag

    def _gauge(self) -> dict[str, int]:
        return {
            name: 1 if result.status in (PASS, WARN) else 0
            for name, result in self.runner.last_results.items()
        }

    def stop(self) -> None:
        self.loop_lag.stop()

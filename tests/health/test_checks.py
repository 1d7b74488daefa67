"""Running health checks: results, timeouts, concurrency, caching, stampedes, flapping."""

from __future__ import annotations

import datetime
import json
import math
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aegis_mw import Aegis
from aegis_mw.health import (
    CheckOutcome,
    HealthCheck,
    disk_space,
    process_memory,
    sink_health,
)
from aegis_mw.health.service import overall
from tests.core.faulty_sinks import FaultySink

pytestmark = pytest.mark.anyio


async def run(aegis: Aegis) -> dict[str, Any]:
    return await aegis.health.results()


async def test_what_a_check_returns_decides_its_status(make_aegis: Callable[..., Aegis]) -> None:
    class Pinger:
        def check(self) -> dict[str, int]:
            return {"replicas": 3}

    class AsyncPinger:
        async def check(self) -> CheckOutcome:
            return CheckOutcome("warn", "replica lag 12 s", {"lag": 12})

    async def async_false() -> bool:
        return False

    def raises() -> None:
        raise ConnectionRefusedError("db:5432 refused")

    aegis = make_aegis()
    health = aegis.health
    health.add("none", lambda: None)
    health.add("object", Pinger())
    health.add("async_object", AsyncPinger())
    health.add("false", async_false)
    health.add("raises", raises)
    results = await run(aegis)
    outcome = {name: (r.status, r.message, dict(r.details)) for name, r in results.items()}
    assert outcome == {
        "none": ("pass", "", {}),
        "object": ("pass", "", {"replicas": 3}),
        "async_object": ("warn", "replica lag 12 s", {"lag": 12}),
        "false": ("fail", "check returned False", {}),
        "raises": ("fail", "ConnectionRefusedError: db:5432 refused", {}),
    }
    assert list(results) == ["none", "object", "async_object", "false", "raises"]


async def test_a_hanging_check_is_unknown_at_its_timeout(make_aegis: Callable[..., Aegis]) -> None:
    """Async and sync checks that never answer: unknown after their timeout, while the
    others still report; a hanging sync check is not started again while it hangs."""
    release = threading.Event()
    calls = {"sync": 0}

    def hangs() -> None:
        calls["sync"] += 1
        release.wait(30)

    async def hangs_async() -> None:
        await anyio.sleep_forever()

    aegis = make_aegis(health_cache_seconds=0)
    aegis.health.add("sync", hangs, timeout=0.1)
    aegis.health.add("async", hangs_async, timeout=0.1, critical=False)
    aegis.health.add("fine", lambda: True)
    try:
        first = await run(aegis)
        assert {n: r.status for n, r in first.items()} == {
            "sync": "unknown", "async": "unknown", "fine": "pass",
        }  # fmt: skip
        assert first["sync"].message == "no answer within 0.1 s"
        second = await run(aegis)
        assert second["sync"].status == "unknown"
        assert second["sync"].message == "the previous run has not returned yet"
        assert calls["sync"] == 1
    finally:
        release.set()


async def test_checks_run_concurrently(make_aegis: Callable[..., Aegis]) -> None:
    """Each of these checks waits for the other one to start: they only pass together."""
    async_started = [anyio.Event(), anyio.Event()]
    thread_started = [threading.Event(), threading.Event()]

    def waiting_async(mine: int) -> Any:
        async def check() -> bool:
            async_started[mine].set()
            with anyio.fail_after(5):
                await async_started[1 - mine].wait()
            return True

        return check

    def waiting_thread(mine: int) -> Callable[[], bool]:
        def check() -> bool:
            thread_started[mine].set()
            return thread_started[1 - mine].wait(5)

        return check

    aegis = make_aegis()
    for index in range(2):
        aegis.health.add(f"async{index}", waiting_async(index), timeout=10)
        aegis.health.add(f"thread{index}", waiting_thread(index), timeout=10)
    results = await run(aegis)
    assert {r.status for r in results.values()} == {"pass"}


async def test_concurrent_probes_share_one_run_and_results_are_cached(
    make_aegis: Callable[..., Aegis],
) -> None:
    calls = 0
    gate = anyio.Event()

    async def counted() -> bool:
        nonlocal calls
        calls += 1
        await gate.wait()
        return True

    aegis = make_aegis(health_cache_seconds=3600)
    aegis.health.add("counted", counted)
    statuses: list[int] = []

    async def probe() -> None:
        statuses.append((await aegis.health.readiness()).status)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(probe)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert statuses == [200] * 20
    assert calls == 1
    await aegis.health.readiness()  # within the cache time: no new run
    assert calls == 1


async def test_a_flapping_check_is_followed_run_by_run_without_cache(
    make_aegis: Callable[..., Aegis],
) -> None:
    answers = iter([True, False, True, False])
    aegis = make_aegis(health_cache_seconds=0)
    aegis.health.add("flaps", lambda: next(answers))
    statuses = [(await aegis.health.readiness()).status for _ in range(4)]
    assert statuses == [200, 503, 200, 503]


def test_overall_status_rules() -> None:
    from aegis_mw.health.checks import CheckResult

    def result(status: str, critical: bool) -> CheckResult:
        return CheckResult("c", status, "", 1.0, critical, {}, 0.0)

    assert overall({}) == "pass"
    assert overall({"a": result("pass", True), "b": result("warn", True)}) == "warn"
    assert overall({"a": result("fail", False)}) == "warn"  # degraded, not down
    assert overall({"a": result("unknown", False)}) == "warn"
    assert overall({"a": result("unknown", True)}) == "fail"
    assert overall({"a": result("fail", True), "b": result("pass", False)}) == "fail"


def test_bad_registrations_are_refused(make_aegis: Callable[..., Aegis]) -> None:
    health = make_aegis().health
    with pytest.raises(ValueError, match="needs a name"):
        health.add(" ", lambda: True)
    with pytest.raises(TypeError, match="not callable"):
        health.add("x", 42)
    with pytest.raises(ValueError, match="timeout"):
        health.add("x", lambda: True, timeout=0)
    with pytest.raises(ValueError, match="status"):
        CheckOutcome("unknown")


async def test_built_in_checks(make_aegis: Callable[..., Aegis], tmp_path: Any) -> None:
    sink = FaultySink("flaky")
    sink.down = True
    aegis = make_aegis(
        sink=sink, retry_backoff_initial=0.01, retry_backoff_max=0.02, health_cache_seconds=0
    )
    aegis.recorder.offer(["GET", "/r", "/r", 200, 1.0, 1.0, 1.5, 0, 0, None, None, "", False, None])
    assert await anyio.to_thread.run_sync(aegis.force_flush, 5) is False
    health = aegis.health
    health.add(sink_health(aegis))
    health.add(disk_space(str(tmp_path), min_free_ratio=0.0))
    health.add(HealthCheck("full_disk", disk_space(str(tmp_path), min_free_ratio=0.99999).check))
    health.add(process_memory(max_rss_bytes=1 << 50))
    health.add(HealthCheck("tiny_memory", process_memory(max_rss_bytes=1).check))
    results = await run(aegis)
    assert results["sinks"].status == "fail"
    assert results["sinks"].message.startswith("flaky: ")
    assert results["disk"].status == "pass"
    assert results["disk"].details["total_bytes"] > 0
    assert results["full_disk"].status == "fail"
    assert results["memory"].status == "pass"
    assert results["tiny_memory"].status == "fail"

    sink.heal()
    assert await anyio.to_thread.run_sync(aegis.force_flush, 5) is True
    assert (await run(aegis))["sinks"].status == "pass"


async def test_a_probe_sharing_a_cancelled_run_waits_for_real_results(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The probe that started a run goes away (cancelled) while another shares the run:
    the other one runs the checks itself instead of answering from no results."""
    calls = 0
    gate, second_call = anyio.Event(), anyio.Event()

    async def failing() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            second_call.set()
        await gate.wait()
        return False

    aegis = make_aegis(health_cache_seconds=3600)
    aegis.health.add("failing", failing)
    first_scope = anyio.CancelScope()
    answers: list[int] = []

    async def first() -> None:
        with first_scope:
            await aegis.health.readiness()

    async def second() -> None:
        answers.append((await aegis.health.readiness()).status)

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.wait_all_tasks_blocked()  # the first probe's run is in the check
        group.start_soon(second)
        await anyio.wait_all_tasks_blocked()  # the second one shares that run
        first_scope.cancel()
        with anyio.fail_after(5):  # ... and then runs the check itself
            await second_call.wait()
        gate.set()
    assert answers == [503]


async def test_what_a_check_returns_is_always_shown_as_json(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Details JSON cannot carry (dates, tuple keys, sets, NaN, objects) are shown as
    text; neither readiness nor the report becomes an error."""

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    aegis = make_aegis()
    aegis.health.add("date", lambda: {"when": datetime.date(2024, 5, 1)})
    aegis.health.add("keys", lambda: {(1, 2): 3, 4: {5}})
    aegis.health.add("nan", lambda: CheckOutcome("warn", "odd", {"lag": math.nan}))
    aegis.health.add("object", lambda: {"it": Opaque(), "nested": [[{"x": math.inf}]]})

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    for answer in (aegis.health.readiness, aegis.health.report):
        response = await answer()
        assert response.status == 200
        checks = json.loads(response.body, parse_constant=refuse)["checks"]
        assert checks["date"][0]["details"] == {"when": "datetime.date(2024, 5, 1)"}
        assert checks["keys"][0]["details"] == {"(1, 2)": 3, "4": [5]}
        assert checks["nan"][0]["details"] == {"lag": "nan"}
        assert checks["object"][0]["details"] == {"it": "<opaque>", "nested": [[{"x": "inf"}]]}

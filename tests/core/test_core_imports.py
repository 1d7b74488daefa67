"""Import hygiene: the core needs only the standard library, and no state is shared.

The import checks run in a fresh interpreter (``sys.executable``) and compare
``sys.modules`` before and after the import against ``sys.stdlib_module_names``,
so whatever this test process already imported cannot hide anything.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import types
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import MemorySink, recorded, recorded_sessions
from tests.harness import Exchange, call, http_scope, websocket_scope

# Runs in the child: import the statement given in argv[1] and print every module it
# pulled in that is neither standard library nor aegis_mw.
PROBE = """
import json, sys
before = set(sys.modules)
exec(sys.argv[1])
stdlib = sys.stdlib_module_names
def foreign(name):
    top = name.partition(".")[0]
    # _sysconfigdata_<abi>_<platform>: the standard library's build settings
    # (sysconfig reads them), named per platform, so not in the list.
    return top not in stdlib and top != "aegis_mw" and not top.startswith("_sysconfigdata_")
new = sorted(set(sys.modules) - before)
print(json.dumps({
    "foreign": [m for m in new if foreign(m)],
    "aegis": [m for m in new if m.partition(".")[0] == "aegis_mw"],
    "all": new,
}))
"""


def imported_by(statement: str, cwd: Path) -> dict[str, list[str]]:
    """Modules a statement imports in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, statement],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_probe_sees_third_party_imports(tmp_path: Path) -> None:
    """The probe itself works: importing a third-party package is reported."""
    result = imported_by("import yaml", tmp_path)
    assert "yaml" in result["foreign"]


def test_core_imports_only_the_standard_library(tmp_path: Path) -> None:
    """import aegis_mw.core loads aegis_mw and standard-library modules only."""
    result = imported_by("import aegis_mw.core", tmp_path)
    assert result["foreign"] == []
    assert "aegis_mw.core" in result["aegis"]
    assert "aegis_mw.core.aggregates" in result["aegis"]


def test_alerts_import_only_the_standard_library(tmp_path: Path) -> None:
    """The alert rules and their evaluation are standard library only, as the core."""
    result = imported_by("import aegis_mw.alerts", tmp_path)
    assert result["foreign"] == []
    assert "aegis_mw.alerts.evaluator" in result["aegis"]


def test_package_import_pulls_in_no_third_party_module(tmp_path: Path) -> None:
    """import aegis_mw imports no starlette, fastapi, anyio, yaml or sqlite driver besides
    the standard library's sqlite3: in fact no third-party module at all.
    """
    result = imported_by("import aegis_mw", tmp_path)
    assert result["foreign"] == []
    for absent in ("starlette", "fastapi", "anyio", "yaml", "tomli", "apsw", "pysqlite2"):
        assert absent not in result["all"], absent


def test_testing_helpers_import_no_third_party_module(tmp_path: Path) -> None:
    """aegis_mw.testing is usable in an app's tests without extra packages."""
    assert imported_by("import aegis_mw.testing", tmp_path)["foreign"] == []


def test_running_a_pipeline_imports_no_third_party_module(tmp_path: Path) -> None:
    """Building, feeding, flushing and shutting down an SQLite-backed pipeline stays
    within the standard library (sqlite3 is the only driver).
    """
    statement = (
        "from aegis_mw import Aegis\n"
        "aegis = Aegis(sink='sqlite:///probe.db', environ={})\n"
        "aegis.recorder.offer(['GET', '/r', '/r', 200, 1.0, 1.0, 1.5, 0, 0, None, None, '', False, None])\n"
        "assert aegis.force_flush(30)\n"
        "assert aegis.shutdown(30)\n"
    )
    result = imported_by(statement, tmp_path)
    assert result["foreign"] == []
    assert "sqlite3" in result["all"]
    assert (tmp_path / "probe.db").exists()


# -- no shared state --------------------------------------------------------------


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.anyio
async def test_two_pipelines_share_nothing(make_aegis: Callable[..., Aegis]) -> None:
    """Recording into one Aegis leaves a second one, built the same way, empty."""
    first = make_aegis(max_routes=1)
    second = make_aegis(max_routes=1)
    busy = AegisMiddleware(ok_app, aegis=first)
    AegisMiddleware(ok_app, aegis=second)  # built, never called
    first.exclude("/only-first")
    for path in ("/a", "/b", "/only-first"):
        await call(busy, http_scope(path, route=path))
    await call(busy, websocket_scope("/ws"), Exchange([{"type": "websocket.connect"}]))

    assert len(recorded(first)) == 2
    assert len(recorded_sessions(first)) == 1
    assert first.realtime().total_requests == 2
    # max_routes=1: "/a" is kept; "/b" and the session's "<unmatched>" overflow.
    assert sorted(r.route for r in recorded(first)) == ["/a", "<overflow>"]
    assert first.finalizer.routes.overflowed == 2

    assert recorded(second) == []
    assert recorded_sessions(second) == []
    assert second.realtime() == make_aegis().realtime()
    stats = second.stats()
    assert (stats.offered, stats.sampled_out, stats.route_overflow) == (0, 0, 0)
    assert all(count == 0 for count in stats.dropped.values())
    assert second.finalizer.routes.known == set()
    assert second.finalizer.sequence == 0
    assert not second.excluded_paths.excluded("/only-first")
    assert second.recorder.inbox is not first.recorder.inbox
    assert second.aggregates.ring is not first.aggregates.ring
    assert second.finalizer.id_prefix != first.finalizer.id_prefix
    assert second.client_addresses._trusted_cache is not first.client_addresses._trusted_cache


def test_memory_sinks_share_nothing() -> None:
    """Two MemorySink objects keep separate records."""
    one, other = MemorySink(), MemorySink()
    assert one.requests is not other.requests
    aegis = Aegis(sink=one, environ={})
    try:
        aegis.recorder.offer(
            ["GET", "/r", "/r", 200, 1.0, 1.0, 1.5, 0, 0, None, None, "", False, None]
        )
        assert aegis.force_flush(10)
    finally:
        assert aegis.shutdown(timeout=5)
    assert (len(one.requests), len(other.requests)) == (1, 0)


MUTABLE = (list, dict, set, bytearray, deque)


def module_state() -> dict[str, Any]:
    """Deep copies of every mutable module-level container in the loaded aegis_mw modules."""
    state: dict[str, Any] = {}
    for name, module in sorted(sys.modules.items()):
        if not isinstance(module, types.ModuleType):
            continue
        if name != "aegis_mw" and not name.startswith("aegis_mw."):
            continue
        for attribute, value in vars(module).items():
            if attribute.startswith("__") or not isinstance(value, MUTABLE):
                continue
            state[f"{name}.{attribute}"] = copy.deepcopy(value)
    return state


@pytest.mark.anyio
async def test_recording_leaves_module_state_unchanged(make_aegis: Callable[..., Aegis]) -> None:
    """Building pipelines and recording through them mutates no module-level container."""
    before = module_state()
    aegis = make_aegis(trusted_proxies=["10.0.0.0/8"], exclude_paths=["/skip/*"])
    middleware = AegisMiddleware(ok_app, aegis=aegis)
    for path in ("/a", "/skip/x", "/b/1"):
        scope = http_scope(path, client=("10.0.0.2", 1), headers=[(b"x-forwarded-for", b"9.9.9.9")])
        await call(middleware, scope)
    await call(middleware, websocket_scope("/ws"), Exchange([{"type": "websocket.connect"}]))
    aegis.exclude("/later")
    assert len(recorded(aegis)) == 2
    aegis.realtime()
    aegis.stats()
    assert aegis.shutdown(timeout=5)
    assert module_state() == before

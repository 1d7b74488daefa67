"""Shared fixtures: pipelines that are always shut down, backends for anyio."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aegis_mw import Aegis, speedups
from tests.harness import OPEN_MONITORING

#: Set in CI: a test that needs a service (PostgreSQL, Redis, ...) fails
#: instead of skipping when the service is missing.
REQUIRE_SERVICES = os.environ.get("REQUIRE_TEST_SERVICES") == "1"

#: Set in CI: the compiled request path must have been built, so the tests of
#: it fail instead of skipping when it was not.
REQUIRE_COMPILED = os.environ.get("REQUIRE_COMPILED_HOT_PATH") == "1"


@pytest.fixture
def make_aegis() -> Iterator[Callable[..., Aegis]]:
    """Build pipelines (memory sink unless told otherwise) that are shut down after the test.

    The environment is not consulted (``environ={}``), so an ``AEGIS_*``
    variable on the machine cannot change what a test sees. The monitoring
    data is opened (``OPEN_MONITORING``) unless the test passes ``access``:
    tests that read it are not about access control; those that are pass
    their own rules, or ``access={}`` for the private default.
    """
    created: list[Aegis] = []

    def factory(**options: Any) -> Aegis:
        options.setdefault("sink", "memory://")
        options.setdefault("environ", {})
        options.setdefault("access", OPEN_MONITORING)
        aegis = Aegis(**options)
        created.append(aegis)
        return aegis

    yield factory
    for aegis in created:
        aegis.shutdown(timeout=5)


@pytest.fixture(params=["compiled", "python"])
def hot_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Middlewares built in the test take the compiled HTTP path, or the pure-Python
    one. Both must record exactly the same; tests of the request path use this
    fixture (``pytestmark = pytest.mark.usefixtures("hot_path")``) to run on both."""
    if request.param == "python":
        monkeypatch.setattr(speedups, "load", lambda: None)
    else:
        compiled_module()
    return str(request.param)


def compiled_module() -> ModuleType:
    """The compiled module; the test skips where it was not built (fails in CI)."""
    module = speedups.load()
    if module is None:
        if REQUIRE_COMPILED:
            pytest.fail("the compiled hot path (aegis_mw/_hotpath_c/) was not built")
        pytest.skip("the compiled hot path was not built here")
    return module


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs on asyncio and on trio."""
    return str(request.param)


POSTGRES_URL = os.environ.get(
    "AEGIS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A ``postgresql://`` URL whose tables live in a fresh schema, dropped after
    the test. Skips without a server, fails instead under REQUIRE_TEST_SERVICES."""
    try:
        import psycopg
    except ImportError:
        if REQUIRE_SERVICES:
            pytest.fail("psycopg is not installed (pip install 'aegis_mw[postgres]')")
        pytest.skip("psycopg is not installed")
    schema = f"aegis_test_{os.getpid()}_{os.urandom(4).hex()}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store several processes share: a SQLite file, the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def history_sink_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A sink URL of each kind that keeps history (the request log, events,
    incidents) and reads it back: memory, a SQLite file, the real PostgreSQL."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aegis.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


REDIS_URL = os.environ.get("AEGIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def live_group() -> str:
    """A live group of the test's own on a shared transport."""
    return f"t-{os.getpid()}-{os.urandom(4).hex()}"


@pytest.fixture
def redis_url(live_group: str) -> Iterator[str]:
    """The test Redis server's URL; the test's live group's keys are removed
    afterwards. Skips without a server, fails instead under REQUIRE_TEST_SERVICES."""
    try:
        import redis
    except ImportError:
        if REQUIRE_SERVICES:
            pytest.fail("redis-py is not installed (pip install 'aegis_mw[redis]')")
        pytest.skip("redis-py is not installed")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not reachable: {exc}")
    try:
        yield REDIS_URL
    finally:
        client.delete(f"aegis:live:{live_group}")
        client.close()


# Other worker processes for the multi-process tests: one that lives while the
# test runs, and one that has exited (its pid is free).
@pytest.fixture
def living_pid() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    yield child.pid
    assert child.stdin is not None
    child.stdin.close()
    child.wait(30)


@pytest.fixture
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    return child.pid


@pytest.fixture
def span_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real OTLP/HTTP receiver (tests/sinks/otlp_receiver.py) that the
    OTEL_* variables point a ``tracing`` pipeline's exporter at, with service
    name ``shop``; no other OTEL_* variable of the machine's is seen."""
    from opentelemetry import trace

    from tests.sinks.otlp_receiver import Receiver
    from tests.tracing import OTEL_VARIABLES

    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # No global provider: one an earlier test of the process set (the docs'
    # examples do) is not the app's here, and would take the spans.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    made = Receiver().start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{made.port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop")
    yield made
    made.stop()


@pytest.fixture
def exporter() -> Iterator[Any]:
    """(provider, spans): OpenTelemetry's SDK keeping the spans it ends in
    memory (tests/tracing.py), shut down after the test."""
    from tests.tracing import recording_provider

    provider, spans = recording_provider()
    yield provider, spans
    provider.shutdown()

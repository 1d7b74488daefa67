"""Shared fixtures: pipelines that are always shut down, backends for anyio."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.asgi import compiled

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
    variable on the machine cannot change what a test sees.
    """
    created: list[Aegis] = []

    def factory(**options: Any) -> Aegis:
        options.setdefault("sink", "memory://")
        options.setdefault("environ", {})
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
        monkeypatch.setattr(compiled, "load", lambda: None)
    elif compiled.load() is None:
        if REQUIRE_COMPILED:
            pytest.fail("the compiled hot path (aegis_mw/asgi/_hotpath_c/) was not built")
        pytest.skip("the compiled hot path was not built here")
    return str(request.param)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs on asyncio and on trio."""
    return str(request.param)

"""Shared fixtures: pipelines that are always shut down, backends for anyio."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aegis_mw import Aegis

#: Set in CI: a test that needs a service (PostgreSQL, Redis, ...) fails
#: instead of skipping when the service is missing.
REQUIRE_SERVICES = os.environ.get("REQUIRE_TEST_SERVICES") == "1"


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


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs on asyncio and on trio."""
    return str(request.param)

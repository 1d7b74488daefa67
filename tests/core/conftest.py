"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aegis_mw import Aegis
from tests.core.faulty_sinks import FaultySink, wait_in_flight

#: Nothing happens in the background: the flusher waits for force_flush.
QUIET: dict[str, Any] = {
    "flush_interval": 3600.0,
    "batch_size": 1000,
    "retry_backoff_initial": 60.0,
    "retry_backoff_max": 60.0,
}


@pytest.fixture
def rig(make_aegis: Callable[..., Aegis]) -> Iterator[Callable[..., Aegis]]:
    """Pipelines over FaultySinks; the sinks are healed before the pipelines shut down."""
    built: list[tuple[Aegis, tuple[FaultySink, ...]]] = []

    def factory(*sinks: FaultySink, **options: Any) -> Aegis:
        for key, value in QUIET.items():
            options.setdefault(key, value)
        aegis = make_aegis(sink=list(sinks), **options)
        built.append((aegis, sinks))
        return aegis

    yield factory
    for aegis, sinks in built:
        for sink in sinks:
            sink.heal()
        wait_in_flight(aegis)

"""Fixtures shared by the sinks' tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aegis_mw.sinks import SQLiteSink


@pytest.fixture
def sink_factory() -> Iterator[Callable[[Path | str], SQLiteSink]]:
    """SQLite sinks closed after the test."""
    created: list[SQLiteSink] = []

    def factory(path: Path | str) -> SQLiteSink:
        sink = SQLiteSink(str(path))
        created.append(sink)
        return sink

    yield factory
    for sink in created:
        sink.close()

"""Fixtures shared by the sinks' tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aegis_mw.sinks import SQLiteSink

if TYPE_CHECKING:
    from aegis_mw.sinks.postgres import PostgresSink


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


@pytest.fixture
def sinks() -> Iterator[Callable[[str], PostgresSink]]:
    """PostgreSQL sinks closed after the test."""
    # Imported here: the other sinks' tests run without psycopg.
    from aegis_mw.sinks.postgres import PostgresSink

    created: list[PostgresSink] = []

    def factory(url: str) -> PostgresSink:
        sink = PostgresSink(url)
        created.append(sink)
        return sink

    yield factory
    for sink in created:
        sink.close()

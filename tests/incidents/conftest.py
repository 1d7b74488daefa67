"""Fixtures shared by the incidents' tests: an incident store of each kind
(memory, a real SQLite file, the real PostgreSQL), and incidents built with
the times and ids a test gives, so every store can be fed the same."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.incidents.model import Incident, opening
from aegis_mw.incidents.store import MemoryIncidentStore

#: A wall time the store tests start at (whole seconds: exact in every store).
T0 = 1_700_000_000.0

KINDS = ("memory", "sqlite", "postgresql")


def make_incident(incident_id: str, at: float, actor: str = "alice", **fields: Any) -> Incident:
    """An incident as ``Incidents.open`` builds it: its fields checked, with
    the id and time given."""
    fields.setdefault("title", f"incident {incident_id}")
    checked = opening(fields)
    return Incident(
        incident_id, checked["title"], checked["description"], checked["severity"],
        checked["status"], checked["assignee"], checked["root_cause"],
        checked["correlation_key"], at, at, None, actor,
    )  # fmt: skip


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aegis.db'}"


def open_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Any]:
    """A fresh store of ``kind``, and the sink holding it (None for memory)."""
    from aegis_mw.sinks import SQLiteSink, build_sink

    if kind == "memory":
        return MemoryIncidentStore(), None
    if kind == "sqlite":
        sink: Any = SQLiteSink(str(tmp_path / "aegis.db"))
    else:
        sink = build_sink(request.getfixturevalue("postgres_url"))
    return sink.incident_store(), sink


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty incident store of each kind, its sink closed after the test."""
    made, sink = open_store(request.param, request, tmp_path)
    try:
        yield made
    finally:
        if sink is not None:
            sink.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A store several connections share, a SQLite file or the real PostgreSQL:
    its URL, and a sink of it, closed after the test."""
    from aegis_mw.sinks import build_sink

    url = (
        sqlite_url(tmp_path)
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    sink = build_sink(url)
    try:
        yield url, sink
    finally:
        sink.close()


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """What ``query`` reads in the store of ``url`` itself (a SQLite file, or
    PostgreSQL), on a connection of its own."""
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
            return list(connection.execute(query))
    import psycopg

    with psycopg.connect(url) as connection:
        return list(connection.execute(query))

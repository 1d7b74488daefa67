"""Fixtures shared by the events' tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A sink URL of each kind that stores events and reads them back."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aegis.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url

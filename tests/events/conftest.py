"""Fixtures shared by the events' tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def store(history_sink_url: str) -> str:
    """A sink URL of each kind that stores events and reads them back (the
    shared ``history_sink_url``, by the name the events' tests use)."""
    return history_sink_url

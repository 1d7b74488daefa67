"""History: rollups and the request log read back, for the JSON API and the CLI."""

from __future__ import annotations

from ..core.history import HistorySource, RequestQuery
from .queries import HistoryQueries
from .ranges import RANGES, QueryError, TimeRange, horizons

__all__ = [
    "RANGES",
    "HistoryQueries",
    "HistorySource",
    "QueryError",
    "RequestQuery",
    "TimeRange",
    "horizons",
]

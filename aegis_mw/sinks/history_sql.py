"""SQL text for history, shared by the SQLite and PostgreSQL sinks.

Every statement is built here, once, from constants: what comes from a user
(a route filter, a time range, a limit) is always a bound parameter, never
part of the text. The two dialects differ only in the placeholder and in the
names of the two-argument minimum and maximum.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..core.custom_history import CustomRow, custom_row, stored_metric
from ..core.custom_metrics import MetricSnapshot
from ..core.events import EventQuery
from ..core.history import RequestQuery
from ..core.record import EventRecord, RequestRecord
from ..core.rollup import RollupRow, decode_histogram
from .event_rows import EVENT_COLUMNS, event_from_row
from .sqlite_schema import REQUEST_COLUMNS

ROLLUP_KEY = ("resolution", "bucket", "route", "method", "status_class")
TOTAL_KEY = ("resolution", "bucket", "status_class")
ROLLUP_VALUES = (
    "count", "errors", "rate_limited", "duration_sum", "duration_min", "duration_max",
    "request_bytes", "response_bytes", "histogram",
)  # fmt: skip
_ADDED = ("count", "errors", "rate_limited", "duration_sum", "request_bytes", "response_bytes")


@dataclass(frozen=True)
class Dialect:
    placeholder: str
    least: str
    greatest: str
    #: Where a histogram goes, as the sink encodes it (see ``encode_histogram``).
    histogram: str
    #: An event row holds a tag: its JSON array's elements, one bound text.
    has_tag: str


SQLITE = Dialect(
    "?", "min", "max", "?", "EXISTS (SELECT 1 FROM json_each(tags) WHERE json_each.value = ?)"
)
# The histogram is sent as array text ('{7,3,0,1}') and cast by the server:
# psycopg's generic list dumper costs ~80 µs per histogram, checking each
# element's type and size.
POSTGRES = Dialect(
    "%s", "LEAST", "GREATEST", "%s::bigint[]",
    "EXISTS (SELECT 1 FROM jsonb_array_elements_text(tags::jsonb) AS tag (value) "
    "WHERE tag.value = %s)",
)  # fmt: skip


def upsert(dialect: Dialect, table: str, key: tuple[str, ...]) -> str:
    """Add one row of deltas to a rollup table (insert, or add on conflict)."""
    columns = (*key, *ROLLUP_VALUES)
    marks = ", ".join([dialect.placeholder] * (len(columns) - 1) + [dialect.histogram])
    updates = [f"{name} = {table}.{name} + excluded.{name}" for name in _ADDED]
    updates.append(f"duration_min = {dialect.least}({table}.duration_min, excluded.duration_min)")
    updates.append(
        f"duration_max = {dialect.greatest}({table}.duration_max, excluded.duration_max)"
    )
    updates.append(f"histogram = aegis_histogram_merge({table}.histogram, excluded.histogram)")
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(updates)}"
    )


CUSTOM_KEY = ("resolution", "metric", "bucket", "labels_key")
CUSTOM_COLUMNS = (
    "resolution", "bucket", "metric", "labels", "labels_key", "total", "count", "low", "high",
    "first_sample", "last_sample", "counts",
)  # fmt: skip


@functools.cache
def upsert_custom(dialect: Dialect) -> str:
    """Add one row of the app's own metrics' changes (see
    :mod:`aegis_mw.core.custom_history`): sums added, the least ``low`` and
    the greatest ``high`` kept (either may be NULL), the bucket counts added
    element by element, the earliest first and latest last sample kept."""
    table = "aegis_custom_rollups"
    marks = ", ".join([dialect.placeholder] * (len(CUSTOM_COLUMNS) - 1) + [dialect.histogram])
    low = f"coalesce({dialect.least}({table}.low, excluded.low), {table}.low, excluded.low)"
    high = f"coalesce({dialect.greatest}({table}.high, excluded.high), {table}.high, excluded.high)"
    first = (
        f"coalesce({dialect.least}({table}.first_sample, excluded.first_sample), "
        f"{table}.first_sample, excluded.first_sample)"
    )
    last = (
        f"coalesce({dialect.greatest}({table}.last_sample, excluded.last_sample), "
        f"{table}.last_sample, excluded.last_sample)"
    )
    return (
        f"INSERT INTO {table} ({', '.join(CUSTOM_COLUMNS)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(CUSTOM_KEY)}) DO UPDATE SET "
        f"total = {table}.total + excluded.total, count = {table}.count + excluded.count, "
        f"low = {low}, high = {high}, first_sample = {first}, last_sample = {last}, "
        f"counts = aegis_counts_add({table}.counts, excluded.counts)"
    )


@functools.cache
def upsert_custom_metric(dialect: Dialect) -> str:
    """A custom metric's description, as the latest writer declared it."""
    mark = dialect.placeholder
    return (
        "INSERT INTO aegis_custom_metrics (name, kind, help, labels, bounds, mode, updated_at) "
        f"VALUES ({', '.join([mark] * 7)}) ON CONFLICT (name) DO UPDATE SET "
        "kind = excluded.kind, help = excluded.help, labels = excluded.labels, "
        "bounds = excluded.bounds, mode = excluded.mode, updated_at = excluded.updated_at"
    )


@functools.cache
def select_custom(dialect: Dialect) -> str:
    """One metric's rows of one resolution with ``start <= bucket < end``, at
    most a bound number of them."""
    mark = dialect.placeholder
    return (
        "SELECT bucket, labels, total, count, low, high, counts, first_sample, last_sample "
        "FROM aegis_custom_rollups "
        f"WHERE resolution = {mark} AND metric = {mark} AND bucket >= {mark} AND bucket < {mark} "
        f"ORDER BY bucket, labels LIMIT {mark}"  # as the memory sink answers
    )


SELECT_CUSTOM_METRICS = (
    "SELECT name, kind, help, labels, bounds, mode FROM aegis_custom_metrics ORDER BY name"
)


@functools.cache
def select_rollups(dialect: Dialect, *, by_route: bool) -> str:
    """Rows of one resolution with ``start <= bucket < end``."""
    mark = dialect.placeholder
    values = ", ".join(ROLLUP_VALUES)
    if by_route:
        return (
            f"SELECT bucket, route, method, status_class, {values} FROM aegis_rollups "
            f"WHERE resolution = {mark} AND bucket >= {mark} AND bucket < {mark}"
        )
    return (
        f"SELECT bucket, '', '', status_class, {values} FROM aegis_rollup_totals "
        f"WHERE resolution = {mark} AND bucket >= {mark} AND bucket < {mark}"
    )


#: The condition of the partial index of server errors on both databases
#: (``aegis_requests_errors``); a query holds this very term to use it.
ERRORS_TERM = "status >= 500"


def errors_only(query: RequestQuery) -> bool:
    """Whether ``query`` asks for server errors only (the events' merge does)."""
    return query.status_from is not None and query.status_from >= 500


def one_trace(query: RequestQuery) -> bool:
    """Whether ``query`` asks for one trace's requests: its ``trace_id = ?``
    implies the condition of the partial index of traced rows on both
    databases (``aegis_requests_trace``), so the planner reads that index."""
    return query.trace_id is not None


def request_filters(
    dialect: Dialect, query: RequestQuery, prefix: str = ""
) -> tuple[list[str], list[object]]:
    """The clauses of ``query``'s filters on request rows (columns named
    with ``prefix``), and their bound values."""
    mark = dialect.placeholder
    clauses: list[str] = []
    params: list[object] = []
    for clause, value in (
        (f"{prefix}route = {mark}", query.route),
        (f"{prefix}method = {mark}", query.method),
        (f"{prefix}status >= {mark}", query.status_from),
        (f"{prefix}status < {mark}", query.status_to),
        (f"{prefix}duration_ms >= {mark}", query.min_duration_ms),
        (f"{prefix}timestamp >= {mark}", query.since),
        (f"{prefix}timestamp < {mark}", query.until),
        (f"{prefix}trace_id = {mark}", query.trace_id),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return clauses, params


def select_requests(dialect: Dialect, query: RequestQuery) -> tuple[str, list[object]]:
    """The request-log query for ``query``: fixed clauses, bound values."""
    mark = dialect.placeholder
    clauses, params = request_filters(dialect, query)
    if errors_only(query):
        # Spelled as the partial index of server errors is: the planner then
        # reads that index (a few rows) instead of the whole log.
        clauses.insert(0, ERRORS_TERM)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.extend((query.limit, query.offset))
    return (
        f"SELECT {', '.join(REQUEST_COLUMNS)} FROM aegis_requests{where} "
        f"ORDER BY timestamp DESC, request_id DESC LIMIT {mark} OFFSET {mark}",
        params,
    )


def select_events(dialect: Dialect, query: EventQuery) -> tuple[str, list[object]]:
    """The events query for ``query``: fixed clauses, bound values."""
    mark = dialect.placeholder
    clauses: list[str] = []
    params: list[object] = []
    for column, values in (("type", query.types), ("level", query.levels)):
        if values:
            clauses.append(f"{column} IN ({', '.join([mark] * len(values))})")
            params.extend(values)
    for clause, value in (
        (f"source = {mark}", query.source),
        (f"trace_id = {mark}", query.trace_id),
        (f"timestamp >= {mark}", query.since),
        (f"timestamp < {mark}", query.until),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    for tag in query.tags:
        clauses.append(dialect.has_tag)
        params.append(tag)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.extend((query.limit, query.offset))
    return (
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM aegis_events{where} "
        f"ORDER BY timestamp DESC, event_id DESC LIMIT {mark} OFFSET {mark}",
        params,
    )


class RowReader:
    """``read_rollups`` and ``read_requests`` for a database reader: the
    subclass sets ``dialect`` and lends, from ``_connection``, anything with
    ``execute(sql, params)`` returning something with ``fetchall()`` (a
    connection or a cursor), waiting at most ``timeout`` seconds for the
    store (a pooled connection, a lock); ``unavailable`` tells the errors
    that mean the store cannot be reached from those of a read gone wrong."""

    dialect: Dialect
    #: Seconds a read waits for the store; ``Aegis`` sets its ``read_timeout``.
    timeout: float = 2.0

    def _connection(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def unavailable(self, error: Exception) -> bool:
        return isinstance(error, OSError)

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        sql = select_rollups(self.dialect, by_route=by_route)
        with self._connection() as connection:
            rows = connection.execute(sql, (resolution, start, end)).fetchall()
        return [RollupRow._make((*row[:-1], decode_histogram(row[-1]))) for row in rows]

    def read_custom_rollups(
        self, metric: str, resolution: int, start: int, end: int, limit: int = 2**62
    ) -> list[CustomRow]:
        sql = select_custom(self.dialect)
        with self._connection() as connection:
            rows = connection.execute(sql, (resolution, metric, start, end, limit)).fetchall()
        return [custom_row(row) for row in rows]

    def read_custom_metrics(self) -> list[MetricSnapshot]:
        with self._connection() as connection:
            rows = connection.execute(SELECT_CUSTOM_METRICS).fetchall()
        return [stored_metric(row) for row in rows]

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        sql, params = select_requests(self.dialect, query)
        with self._connection() as connection:
            rows = connection.execute(sql, params).fetchall()
        return [RequestRecord._make(row) for row in rows]

    def count_events(self, since: float) -> tuple[int, int]:
        mark = self.dialect.placeholder
        sql = (
            "SELECT count(*), coalesce(sum(CASE WHEN timestamp >= "
            f"{mark} THEN 1 ELSE 0 END), 0) FROM aegis_events"
        )
        with self._connection() as connection:
            row = connection.execute(sql, (since,)).fetchone()
        return int(row[0]), int(row[1])

    def read_events(self, query: EventQuery) -> list[EventRecord]:
        sql, params = select_events(self.dialect, query)
        with self._connection() as connection:
            rows = connection.execute(sql, params).fetchall()
        return [event_from_row(row) for row in rows]


class ReaderBacked:
    """The read side of a database sink: handed to its :class:`RowReader`
    (``_reader``), whose connections are not the writer's."""

    _reader: RowReader

    def set_read_timeout(self, seconds: float) -> None:
        """How long a read waits for the store before it fails."""
        self._reader.timeout = seconds

    def read_unavailable(self, error: Exception) -> bool:
        """Whether a read's ``error`` means the store cannot be reached (see
        :func:`aegis_mw.history.breaker.unavailable`)."""
        return self._reader.unavailable(error)

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        return self._reader.read_rollups(resolution, start, end, by_route=by_route)

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        return self._reader.read_requests(query)

    def read_custom_rollups(
        self, metric: str, resolution: int, start: int, end: int, limit: int = 2**62
    ) -> list[CustomRow]:
        """The app's own metric ``metric``'s stored changes, one resolution
        (the first ``limit``, by bucket and labels)."""
        return self._reader.read_custom_rollups(metric, resolution, start, end, limit)

    def read_custom_metrics(self) -> list[MetricSnapshot]:
        """The app's own metrics the history holds, as last declared."""
        return self._reader.read_custom_metrics()

    def read_events(self, query: EventQuery) -> list[EventRecord]:
        """The stored events ``query`` asks for (not the request log's errors)."""
        return self._reader.read_events(query)

    def count_events(self, since: float) -> tuple[int, int]:
        """How many events are stored, and how many of them at or after ``since``."""
        return self._reader.count_events(since)

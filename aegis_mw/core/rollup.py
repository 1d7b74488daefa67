"""Time-bucketed rollups: what history queries read instead of the request log.

The flusher folds every finished HTTP request (sampled out of the log or
not) into a :class:`RollupDelta`, keyed by 5-second bucket, route, method
and status class. Each history sink adds a delta to its stored rollups at
every resolution in :data:`LEVELS`, per route and in total, in the same
transaction as the records. Since counts are added, a delta carries an id
and a sink applies each id once: a retried write (after a timeout whose
write in fact completed) never counts twice.

A cell is one flat list (cheap to build in the flusher, a parameter row
once its key is prepended)::

    [count, errors, rate_limited, duration_sum_ms, duration_min_ms,
     duration_max_ms, request_bytes, response_bytes, histogram]

``errors`` counts 5xx responses and requests whose app raised, as the
realtime figures do; ``histogram`` maps :mod:`.histogram` bucket indexes to
counts, so percentiles merge exactly across buckets, routes and processes.
Stored, a histogram is :func:`dense`: ``[first_index, count, ...]``.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

from . import histogram
from .custom_history import CustomCell, CustomKey, copy_custom, merge_custom
from .custom_metrics import MetricSnapshot
from .gil_slices import Slices

#: Stored resolutions in seconds; each divides the next.
LEVELS = (5, 60, 300, 3600)
FINEST = LEVELS[0]
COUNT, ERRORS, RATE_LIMITED, DURATION_SUM, DURATION_MIN, DURATION_MAX = 0, 1, 2, 3, 4, 5
REQUEST_BYTES, RESPONSE_BYTES, HISTOGRAM = 6, 7, 8
#: Cells a sink may owe before new ones are refused (counted, never silent);
#: the app's own metrics' cells have a bound of their own, so a store outage
#: with many gauges (a cell each every 5 seconds) never crowds out requests'.
MAX_PENDING_CELLS = 50_000
MAX_PENDING_CUSTOM_CELLS = 50_000

Cell = list[Any]
Key = tuple[int, str, str, int]


def status_class(status: int) -> int:
    """1..5 for the five HTTP classes; anything outside folds into 5."""
    value = status // 100
    return value if 0 < value < 6 else 5


def dense(counts: dict[int, int]) -> list[int]:
    """``{index: count}`` as stored: ``[first_index, count, count, ...]`` from
    the lowest to the highest index held (``[]`` when empty). Dense is what
    makes reading cheap: a stored row decodes to one list and adds to a
    running total slice by slice, where ``{index: count}`` costs a dict and a
    key conversion per bucket."""
    if not counts:
        return []
    first = min(counts)
    out = [0] * (max(counts) - first + 2)
    out[0] = first
    for index, count in counts.items():
        out[index - first + 1] = count
    return out


def encode_histogram(counts: dict[int, int]) -> str:
    """JSON array text of :func:`dense`, as SQLite stores it: what
    ``json.dumps(..., separators=(",", ":"))`` writes for a list of ints, at a
    fifth of its cost (it builds an encoder on every call)."""
    return dense_text(dense(counts))


def dense_text(values: list[int]) -> str:
    """A list of ints as compact JSON array text."""
    return "[" + ",".join(map(str, values)) + "]"


def encode_histogram_array(counts: dict[int, int]) -> str:
    """PostgreSQL array text of :func:`dense` (``{7,3,0,1}``), cast to
    ``bigint[]`` by the statement."""
    return "{" + ",".join(map(str, dense(counts))) + "}"


Encode = Callable[[dict[int, int]], str]
Merge = Callable[[str | None, str | None], str]


def histogram_functions(compiled: Any) -> tuple[Encode, Encode, Merge]:
    """:func:`encode_histogram`, :func:`encode_histogram_array` and
    :func:`merge_histogram_text`, each through the compiled module's version
    where it has one (``aegis_mw/_hotpath_c/histogram_text.c``: the same
    text for what it takes, and None for the rest, which these functions
    then handle). For histograms of 60 to 70 buckets, through these
    wrappers: 1.3 µs to encode against 8.3 in Python, 1.2 µs to merge
    against 20.2."""
    text = getattr(compiled, "histogram_text", None)
    merge = getattr(compiled, "histogram_merge_text", None)
    if text is None or merge is None:
        return encode_histogram, encode_histogram_array, merge_histogram_text

    def encode(counts: dict[int, int]) -> str:
        out: str | None = text(counts, False)
        return encode_histogram(counts) if out is None else out

    def encode_array(counts: dict[int, int]) -> str:
        out: str | None = text(counts, True)
        return encode_histogram_array(counts) if out is None else out

    def merged(left: str | None, right: str | None) -> str:
        out: str | None = merge(left, right)
        return merge_histogram_text(left, right) if out is None else out

    return encode, encode_array, merged


def decode_histogram(value: str | list[int] | dict[str, int] | None) -> list[int]:
    """A stored histogram, from text (SQLite) or an integer array
    (PostgreSQL), in the :func:`dense` layout. The ``{"index": count}`` form
    of schema version 2 is converted too: a process still running the older
    version may write one after another has migrated the database."""
    if not value:
        return []
    data = json.loads(value) if isinstance(value, str) else value
    if isinstance(data, dict):
        return dense({int(index): int(count) for index, count in data.items()})
    return data


def merge_dense(left: list[int], right: list[int]) -> list[int]:
    """Two :func:`dense` histograms added."""
    if not left:
        return list(right)
    if not right:
        return list(left)
    first = min(left[0], right[0])
    out = [0] * (max(left[0] + len(left), right[0] + len(right)) - first - 1)
    for part in (left, right):
        start = part[0] - first
        end = start + len(part) - 1
        out[start:end] = map(operator.add, out[start:end], islice(part, 1, None))
    return [first, *out]


def merge_histogram_text(left: str | None, right: str | None) -> str:
    """Two stored histograms added; the SQLite upsert calls this on conflict."""
    return dense_text(merge_dense(decode_histogram(left), decode_histogram(right)))


def add_dense(total: list[int], part: list[int]) -> None:
    """Add a :func:`dense` histogram into ``total``, a list of
    :data:`.histogram.COUNT` counters indexed by bucket. Indexes outside it
    (a row from a future version, say) are ignored, never raised on."""
    if not part:
        return
    start = part[0]
    end = start + len(part) - 1
    if start >= 0 and end <= len(total):
        total[start:end] = map(operator.add, total[start:end], islice(part, 1, None))
        return
    for index, count in enumerate(islice(part, 1, None), start):
        if 0 <= index < len(total):
            total[index] += count


def merge_cell(into: Cell, other: Cell) -> None:
    """Add ``other`` into ``into`` (histogram included)."""
    into[COUNT] += other[COUNT]
    into[ERRORS] += other[ERRORS]
    into[RATE_LIMITED] += other[RATE_LIMITED]
    into[DURATION_SUM] += other[DURATION_SUM]
    if other[DURATION_MIN] < into[DURATION_MIN]:
        into[DURATION_MIN] = other[DURATION_MIN]
    if other[DURATION_MAX] > into[DURATION_MAX]:
        into[DURATION_MAX] = other[DURATION_MAX]
    into[REQUEST_BYTES] += other[REQUEST_BYTES]
    into[RESPONSE_BYTES] += other[RESPONSE_BYTES]
    counts = into[HISTOGRAM]
    for index, count in other[HISTOGRAM].items():
        counts[index] = counts.get(index, 0) + count


def copy_cell(cell: Cell) -> Cell:
    copied = cell[:HISTOGRAM]
    copied.append(dict(cell[HISTOGRAM]))
    return copied


class RollupDelta:
    """Rollup cells for requests not yet stored, keyed by
    ``(bucket_start, route, method, status_class)`` at :data:`FINEST` seconds.

    Example::

        delta = RollupDelta()
        delta.add(time.time(), "/items/{id}", "GET", 200, 12.5, False, 0, 512)
    """

    __slots__ = ("cells", "custom", "delta_id", "metrics", "requests")

    def __init__(self) -> None:
        self.cells: dict[Key, Cell] = {}
        #: Requests folded in; what is lost if the delta is dropped.
        self.requests = 0
        #: Set when a sink first takes the delta; the same on every retry.
        self.delta_id = ""
        #: The app's own metrics' changes (see :mod:`.custom_history`), and
        #: the metrics they are of, by name (their figures left out).
        self.custom: dict[CustomKey, CustomCell] = {}
        self.metrics: dict[str, MetricSnapshot] = {}

    def __len__(self) -> int:
        return len(self.cells) + len(self.custom)

    def holds_anything(self) -> bool:
        return bool(self.cells or self.custom)

    def add(
        self,
        timestamp: float,
        route: str,
        method: str,
        status: int,
        duration_ms: float,
        failed: bool,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        bucket = int(timestamp // FINEST) * FINEST
        klass = status // 100
        key = (bucket, route, method, klass if 0 < klass < 6 else 5)
        index = histogram.bucket_index(duration_ms)
        self.requests += 1
        cell = self.cells.get(key)
        if cell is None:
            self.cells[key] = [
                1, int(failed), int(status == 429), duration_ms, duration_ms, duration_ms,
                request_bytes, response_bytes, {index: 1},
            ]  # fmt: skip
            return
        cell[COUNT] += 1
        if failed:
            cell[ERRORS] += 1
        if status == 429:
            cell[RATE_LIMITED] += 1
        cell[DURATION_SUM] += duration_ms
        if duration_ms < cell[DURATION_MIN]:
            cell[DURATION_MIN] = duration_ms
        if duration_ms > cell[DURATION_MAX]:
            cell[DURATION_MAX] = duration_ms
        cell[REQUEST_BYTES] += request_bytes
        cell[RESPONSE_BYTES] += response_bytes
        counts = cell[HISTOGRAM]
        counts[index] = counts.get(index, 0) + 1

    def absorb(
        self,
        other: RollupDelta,
        limit: int = MAX_PENDING_CELLS,
        custom_limit: int = MAX_PENDING_CUSTOM_CELLS,
    ) -> tuple[int, int]:
        """Add a copy of ``other``'s cells; returns the requests refused
        because this delta already held ``limit`` request cells, and the
        custom metrics' cells refused because it held ``custom_limit`` of
        those (the caller counts them)."""
        refused = 0
        cells = self.cells
        for key, cell in other.cells.items():
            mine = cells.get(key)
            if mine is not None:
                merge_cell(mine, cell)
            elif len(cells) < limit:
                cells[key] = copy_cell(cell)
            else:
                refused += cell[COUNT]
        self.requests += other.requests - refused
        refused_custom = 0
        custom = self.custom
        for custom_key, part in other.custom.items():
            held = custom.get(custom_key)
            if held is not None:
                merge_custom(held, part)
            elif len(custom) < custom_limit:
                custom[custom_key] = copy_custom(part)
            else:
                refused_custom += 1
        self.metrics.update(other.metrics)
        return refused, refused_custom


class RollupRow(NamedTuple):
    """One stored rollup, as sinks give it back. ``route`` and ``method`` are
    empty in the per-resolution totals."""

    bucket: int
    route: str
    method: str
    status_class: int
    requests: int
    errors: int
    rate_limited: int
    duration_sum: float
    duration_min: float
    duration_max: float
    request_bytes: int
    response_bytes: int
    #: In the :func:`dense` layout.
    histogram: list[int]


def expand(
    delta: RollupDelta, slices: Slices | None = None
) -> tuple[dict[tuple[Any, ...], Cell], dict[tuple[Any, ...], Cell]]:
    """The delta at every level: ``(level, bucket, route, method, class)`` cells
    and ``(level, bucket, class)`` totals, ready to be added to storage. With
    ``slices``, the writing thread pauses between cells when its slice is
    spent (a 5-second delta of a busy app is a millisecond or more of Python:
    see :mod:`.gil_slices`)."""
    routes: dict[tuple[Any, ...], Cell] = {}
    totals: dict[tuple[Any, ...], Cell] = {}
    for (bucket, route, method, klass), cell in delta.cells.items():
        if slices is not None:
            slices.check()
        for level in LEVELS:
            start = bucket - bucket % level
            for table, key in (
                (routes, (level, start, route, method, klass)),
                (totals, (level, start, klass)),
            ):
                mine = table.get(key)
                if mine is None:
                    table[key] = copy_cell(cell)
                else:
                    merge_cell(mine, cell)
    return routes, totals


def parameter_rows(
    cells: dict[tuple[Any, ...], Cell],
    encode: Callable[[dict[int, int]], Any] = encode_histogram,
    slices: Slices | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Key + cell as one row, histogram as ``encode`` gives it (JSON text by
    default; PostgreSQL takes :func:`encode_histogram_array`), sorted by
    key so that concurrent writers lock rows in one order (no deadlocks).

    Made as they are taken: ``executemany`` takes one row at a time, so the
    encoding alternates with the statements (which release the GIL), and
    with ``slices`` the thread also pauses when its slice is spent."""
    for key, cell in sorted(cells.items()):
        yield (*key, *cell[:HISTOGRAM], encode(cell[HISTOGRAM]))
        if slices is not None:
            slices.check()


def rows_from(cells: Iterable[tuple[tuple[Any, ...], Cell]]) -> Iterator[RollupRow]:
    """Rows from in-memory cells keyed ``(bucket, route, method, class)``."""
    for (bucket, route, method, klass), cell in cells:
        yield RollupRow._make(
            (bucket, route, method, klass, *cell[:HISTOGRAM], dense(cell[HISTOGRAM]))
        )

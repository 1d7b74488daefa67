"""The app's own metrics: counters, gauges and histograms with declared labels.

Declared on the pipeline (``aegis.counter(...)``, ``aegis.gauge(...)``,
``aegis.histogram(...)``) and recorded from any thread, sync or async code::

    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    orders.labels(region="eu").inc()

Recording is O(1), takes no lock and does no I/O: every series keeps one small
list per thread that records into it (its *cell*), which only that thread ever
writes, so an update is a plain addition that no other thread can interleave
with; a reader adds the cells up. The threads of a pool reuse their cells, and
a thread that ends leaves its cell's figures in place (a new thread may take
over its identifier, and with it the cell, which is as good).

Label values are bounded per metric (``max_series``): past the bound, new
label sets are folded into one series whose every value is ``<overflow>``,
and counted. Readings are :class:`MetricSnapshot` tuples, which ``/metrics``
renders and which several processes' snapshot files add up (see
:mod:`aegis_mw.core.custom_merge`).
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
import sys
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from threading import get_ident
from typing import Any

from .record import OVERFLOW_ROUTE

#: Prometheus' rules for metric and label names.
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
#: The longest metric name (alert rules name them with the same bound).
MAX_NAME = 200
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: The value of every label of the series that label sets past ``max_series`` go to.
OVERFLOW = OVERFLOW_ROUTE
KINDS = ("counter", "gauge", "histogram")
#: How a gauge's values of several processes make one (``multiprocess_mode``).
GAUGE_MODES = ("sum", "max", "min")
DEFAULT_MAX_SERIES = 1000
_INF = math.inf
_MAX = sys.float_info.max
#: The largest amount the fast checks let through, ints and floats alike: ints
#: up to it add up exactly and can never sum past a float's range (that would
#: take 2**970 of them). Anything else takes :func:`_real` (bool, numeric types
#: such as Fraction or numpy's, ints past it, large floats).
_EXACT = 2**53
_PLAIN = (int, float)
#: Label sets past ``max_series`` remembered with their ``<overflow>`` series,
#: so that each is counted once and found again without the lock.
MAX_FOLDED = 10_000
#: prometheus-client's default registry's own metrics, shown on /metrics after ours.
_REGISTRY_PREFIXES = ("process_", "python_")
#: Suffixes the exposition gives a family's samples: a name ending in one would
#: be read as another family's sample.
_RESERVED_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_info")


@dataclass(frozen=True, slots=True)
class MetricSnapshot:
    """One custom metric's figures at a moment.

    ``series`` maps label values (in ``labels`` order) to a number, or for a
    histogram to a list: one count per bucket (``bounds`` and +Inf), then the
    sum of the observed values.
    """

    name: str  # a counter's without its ``_total``
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]  # a histogram's bucket bounds; () otherwise
    mode: str  # a gauge's multiprocess mode; "" otherwise
    series: dict[tuple[str, ...], Any]
    overflowed: int  # label sets folded into the <overflow> series

    def same_shape(self, other: MetricSnapshot) -> bool:
        """Declared alike (kind, labels, buckets, mode), so their figures add up."""
        return (self.kind, self.labels, self.bounds, self.mode) == (
            other.kind,
            other.labels,
            other.bounds,
            other.mode,
        )


def _real(value: Any, what: str) -> float:
    """``value`` as an int or a float (a real number of any type; an int past a
    float's range refused), or a TypeError naming ``what``."""
    if isinstance(value, numbers.Integral):
        number = int(value)
        if -_EXACT <= number <= _EXACT:
            return number
        if not -_MAX <= number <= _MAX:
            digits = int(number.bit_length() * math.log10(2))  # no str(): it has a limit
            raise ValueError(f"{what} is beyond a float's range (about 10**{digits})")
        return float(number)
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # a Fraction past a float's range, say
            raise ValueError(f"{what} is beyond a float's range") from None
    raise TypeError(f"{what} must be a real number, not {type(value).__name__}")


def _counted(amount: Any, what: str) -> float:
    """A counter's or a histogram's amount, checked: finite or not, never negative."""
    number = _real(amount, what)
    if not number >= 0:  # NaN too
        raise ValueError(f"{what} must be 0 or more, not {amount!r}")
    return number


class CounterSeries:
    """One label set of a counter: :meth:`inc` only goes up."""

    __slots__ = ("_cells",)

    def __init__(self) -> None:
        self._cells: dict[int, list[float]] = {}

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (finite, not negative)."""
        if not (type(amount) in _PLAIN and 0 <= amount <= _EXACT):
            amount = _counted(amount, "a counter's amount")
            if amount == _INF:
                raise ValueError("a counter goes up by a finite amount, not inf")
        try:
            self._cells[get_ident()][0] += amount
        except KeyError:
            self._cells[get_ident()] = [amount]

    def value(self) -> float:
        # list() copies the cells in one step: a thread adding its cell meanwhile
        # does not upset the iteration.
        return _exact(sum(cell[0] for cell in list(self._cells.values())))

    def reset(self) -> None:
        self._cells = {}


def _exact(total: float) -> float:
    """A sum as a reading shows it: an int only while a float holds it exactly,
    so that every reader (another process's JSON, the exposition) takes it."""
    if type(total) is int and not -_EXACT <= total <= _EXACT:
        return float(total)
    return total


class GaugeSeries:
    """One label set of a gauge: :meth:`set`, :meth:`inc`, :meth:`dec`.

    The value is the last :meth:`set` (its *epoch*), plus the changes every
    thread made since. A thread's cell is ``[change, epoch]``: a change made
    in an earlier epoch is left out, so :meth:`set` is O(1) and the value is
    then exactly what was set. An ``inc`` racing a ``set`` from another thread
    counts as made before it or after it, as with a lock.
    """

    __slots__ = ("_cells", "_epochs", "_state")

    def __init__(self) -> None:
        self._cells: dict[int, list[float]] = {}
        self._epochs = itertools.count(1)  # next() is one step: no two sets share one
        #: (the value set, its epoch), replaced as one tuple.
        self._state: tuple[float, int] = (0, 0)

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (finite, either sign)."""
        if not (type(amount) in _PLAIN and -_EXACT <= amount <= _EXACT):
            amount = _real(amount, "a gauge's amount")
            if not -_INF < amount < _INF:
                raise ValueError(f"a gauge moves by a finite amount, not {amount!r}")
        epoch = self._state[1]
        try:
            cell = self._cells[get_ident()]
        except KeyError:
            self._cells[get_ident()] = [amount, epoch]
            return
        if cell[1] == epoch:
            cell[0] += amount
        else:  # the first change since a set: the cell's earlier changes are gone
            cell[0] = amount
            cell[1] = epoch

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount`` (finite, either sign)."""
        self.inc(-amount)

    def set(self, value: float) -> None:
        """Make the value ``value`` (any float, NaN and infinities included)."""
        if not (type(value) in _PLAIN and -_EXACT <= value <= _EXACT):
            value = _real(value, "a gauge's value")
        self._state = (value, next(self._epochs))

    def value(self) -> float:
        base, epoch = self._state
        return _exact(
            base + sum(cell[0] for cell in list(self._cells.values()) if cell[1] == epoch)
        )

    def reset(self) -> None:
        self._cells = {}
        self._state = (0, next(self._epochs))


class HistogramSeries:
    """One label set of a histogram: :meth:`observe`."""

    __slots__ = ("_bounds", "_cells", "_width")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._width = len(bounds) + 2  # the buckets, +Inf, then the sum
        self._cells: dict[int, list[Any]] = {}

    def observe(self, value: float) -> None:
        """Count ``value`` (0 or more) in its bucket: the first whose bound is at least it."""
        if not (type(value) in _PLAIN and 0 <= value <= _EXACT):
            value = _counted(value, "an observed value")
        index = bisect_left(self._bounds, value)
        try:
            cell = self._cells[get_ident()]
        except KeyError:
            cell = self._cells[get_ident()] = [0] * self._width
        cell[index] += 1
        cell[-1] += value

    def value(self) -> list[Any]:
        totals: list[Any] = [0] * self._width
        for cell in list(self._cells.values()):
            for index, count in enumerate(cell):
                totals[index] += count
        totals[-1] = _exact(totals[-1])
        return totals

    def reset(self) -> None:
        self._cells = {}


class Metric:
    """A declared metric: its label sets' series, bounded by ``max_series``.

    A metric declared without labels records itself (``metric.inc()``); one
    with labels records through :meth:`labels`.
    """

    kind = ""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...],
        max_series: int,
        bounds: tuple[float, ...] = (),
        mode: str = "",
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels
        self.max_series = max_series
        self.bounds = bounds
        self.mode = mode
        self._series: dict[tuple[str, ...], Any] = {}
        #: Label sets past ``max_series`` -> the ``<overflow>`` series (MAX_FOLDED at most).
        self._folded: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()  # taken only to add a series
        self._overflowed = 0
        if not labels:
            self._series[()] = only = self._new_series()
            # The recording methods of the one series, called without a hop.
            for method in ("inc", "dec", "set", "observe"):
                if hasattr(type(self), method):
                    setattr(self, method, getattr(only, method))

    def _new_series(self) -> Any:
        raise NotImplementedError

    def labels(self, /, *values: Any, **named: Any) -> Any:
        """The series of these label values, by position or by name (values are
        made text: a str's own text, ``str()`` of anything else). Keep it to
        record into it again cheaply."""
        if named:
            values = self._by_name(values, named)
        try:
            series = self._series.get(values) or self._folded.get(values)
        except TypeError:  # an unhashable value: its text is the label
            series = None
        if series is None:
            series = self._add_series(values)
        return series

    def _by_name(self, values: tuple[Any, ...], named: dict[str, Any]) -> tuple[Any, ...]:
        if values:
            raise TypeError("give the label values by position or by name, not both")
        names = self.label_names
        try:
            ordered = tuple([named[name] for name in names])
        except KeyError:
            ordered = ()
        if len(ordered) != len(names) or len(named) != len(names):
            raise ValueError(f"{self.name} has the labels {list(names)}, not {sorted(named)}")
        return ordered

    def _add_series(self, values: tuple[Any, ...]) -> Any:
        """The series of label values not found as given: made text, then
        looked up again, or added (the only step that takes a lock)."""
        if len(values) != len(self.label_names) or not self.label_names:
            raise ValueError(
                f"{self.name} has the labels {list(self.label_names)}: "
                f"{len(self.label_names)} values, not {len(values)}"
            )
        key = _texts(values)
        series = self._series.get(key) or self._folded.get(key)
        if series is not None:
            return series
        with self._lock:
            series = self._series.get(key) or self._folded.get(key)
            if series is not None:
                return series
            if len(self._series) < self.max_series:
                # Readers copy the dict in one step (list(items())): adding is safe.
                series = self._series[key] = self._new_series()
                return series
            # Past the bound: counted once, remembered while there is room.
            self._overflowed += 1
            folded = (OVERFLOW,) * len(self.label_names)
            series = self._series.get(folded)
            if series is None:
                series = self._series[folded] = self._new_series()
            if len(self._folded) < MAX_FOLDED:
                self._folded[key] = series
            return series

    def _needs_labels(self, *_: Any) -> None:
        raise ValueError(
            f"{self.name} is declared with the labels {list(self.label_names)}: "
            f"record through .labels(...)"
        )

    def snapshot(self) -> MetricSnapshot:
        return MetricSnapshot(
            name=self.name,
            kind=self.kind,
            help=self.help,
            labels=self.label_names,
            bounds=self.bounds,
            mode=self.mode,
            series={key: series.value() for key, series in list(self._series.items())},
            overflowed=self._overflowed,
        )

    def reset(self) -> None:
        for series in self._series.values():
            series.reset()
        self._overflowed = 0
        self._folded = {}


def _texts(values: Iterable[Any]) -> tuple[str, ...]:
    """Label values as text. A str subclass (a str Enum, say) by its own text,
    not its ``str()``: it is equal to that text, so the lookup by value and this
    one must find the same series."""
    return tuple(
        value if type(value) is str else str.__str__(value) if isinstance(value, str)
        else str(value)
        for value in values
    )  # fmt: skip


class Counter(Metric):
    kind = "counter"
    inc = Metric._needs_labels

    def _new_series(self) -> CounterSeries:
        return CounterSeries()


class Gauge(Metric):
    kind = "gauge"
    inc = dec = set = Metric._needs_labels

    def _new_series(self) -> GaugeSeries:
        return GaugeSeries()


class Histogram(Metric):
    kind = "histogram"
    observe = Metric._needs_labels

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self.bounds)


_CLASSES: dict[str, type[Metric]] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class CustomMetrics:
    """The app's declared metrics (``aegis.custom_metrics``).

    ``reserved_prefix`` is the namespace of our own families (``aegis_``):
    names under it are refused. ``buckets`` are the request latency's bounds,
    a histogram's unless it is given its own.
    """

    def __init__(
        self,
        reserved_prefix: str,
        buckets: tuple[float, ...],
        constant_labels: Iterable[str] = (),
        taken: Callable[[str], bool] = lambda family: False,
    ) -> None:
        self.reserved_prefix = reserved_prefix
        self.buckets = buckets
        #: Labels every series gets (``metrics_labels``): a metric may not declare them too.
        self.constant_labels = frozenset(constant_labels)
        #: Whether a family of that name is on /metrics already (the app's registry).
        self.taken = taken
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def declare(
        self,
        kind: str,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        *,
        max_series: int = DEFAULT_MAX_SERIES,
        buckets: Sequence[float] | None = None,
        mode: str = "",
    ) -> Any:
        """The metric ``name``, declared now or the same one declared before
        alike; a ValueError naming the problem for anything else."""
        family = _family_name(kind, name)
        label_names = _label_names(name, kind, labels)
        if not isinstance(help_text, str) or not help_text.strip():
            raise ValueError(f"{name}: help must be a non-empty text")
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
            raise ValueError(f"{name}: max_series must be a positive integer, not {max_series!r}")
        bounds = _bounds(name, buckets) if kind == "histogram" else ()
        if kind == "histogram" and buckets is None:
            bounds = self.buckets
        if kind == "gauge":
            mode = mode or "sum"
            if mode not in GAUGE_MODES:
                raise ValueError(f"{name}: multiprocess_mode must be one of {list(GAUGE_MODES)}")
        elif mode:
            raise ValueError(f"{name}: multiprocess_mode is for gauges only")
        self._check_shared_names(name, family, label_names)
        with self._lock:
            known = self._metrics.get(family)
            if known is not None:
                declared = (known.kind, known.help, known.label_names, known.bounds, known.mode,
                            known.max_series)  # fmt: skip
                if declared != (kind, help_text, label_names, bounds, mode, max_series):
                    raise ValueError(
                        f"{name} is declared already, as a {known.kind} with the labels "
                        f"{list(known.label_names)}: a second declaration must be the same"
                    )
                return known
            if self.taken(family):
                raise ValueError(
                    f"{name}: the app's prometheus-client registry has a metric of that name, "
                    "which /metrics shows too; choose another name"
                )
            metric = _CLASSES[kind](family, help_text, label_names, max_series, bounds, mode)
            self._metrics = {**self._metrics, family: metric}
            return metric

    def _check_shared_names(self, name: str, family: str, labels: tuple[str, ...]) -> None:
        """Names /metrics shows beside the app's own: ours, prometheus-client's, and
        the labels every series gets."""
        for prefix in (self.reserved_prefix, *_REGISTRY_PREFIXES):
            if family.startswith(prefix):
                raise ValueError(
                    f"{name}: names starting with {prefix!r} are taken (metrics_namespace, "
                    "and prometheus-client's process and platform metrics); choose another name"
                )
        clash = sorted(self.constant_labels.intersection(labels))
        if clash:
            raise ValueError(f"{name}: {clash} are labels of every series already (metrics_labels)")

    def admits(self, metric: MetricSnapshot) -> bool:
        """Whether another process's ``metric`` (read from its snapshot file) could
        have been declared here: the same rules, so that nothing read from a file
        can put a series /metrics cannot carry on it."""
        if not well_formed(metric):
            return False
        try:
            self._check_shared_names(metric.name, metric.name, metric.labels)
        except ValueError:
            return False
        return True

    def read(self) -> tuple[MetricSnapshot, ...]:
        """Every declared metric's figures now, by name."""
        return tuple(metric.snapshot() for _, metric in sorted(self._metrics.items()))

    def reset_after_fork(self) -> None:
        """A forked child starts at zero: the parent's figures are the parent's."""
        self._lock = threading.Lock()
        for metric in self._metrics.values():
            metric._lock = threading.Lock()
            metric.reset()


def well_formed(metric: MetricSnapshot) -> bool:
    """Whether ``metric`` follows the declaration rules of names, labels and
    buckets (a snapshot read from a file, say)."""
    try:
        if _family_name(metric.kind, metric.name) != metric.name:
            return False  # a counter's family name never ends in _total
        _label_names(metric.name, metric.kind, metric.labels)
        if metric.kind == "histogram":
            _bounds(metric.name, metric.bounds)
        elif metric.bounds:
            return False
    except ValueError:
        return False
    return (metric.mode in GAUGE_MODES) if metric.kind == "gauge" else metric.mode == ""


def _family_name(kind: str, name: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"a metric's kind is one of {list(KINDS)}, not {kind!r}")
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a metric name: letters, digits, '_' and ':', not starting "
            "with a digit"
        )
    if len(name) > MAX_NAME:
        # Part of the stored history's keys: PostgreSQL's index rows are bounded.
        raise ValueError(f"{name[:40]}...: a metric name has at most {MAX_NAME} characters")
    family = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
    if not family or family.endswith(_RESERVED_SUFFIXES) or family.endswith("_total"):
        raise ValueError(
            f"{name}: a name may not end in {', '.join(_RESERVED_SUFFIXES)} or a second "
            "'_total' (the exposition adds those)"
        )
    return family


def _label_names(name: str, kind: str, labels: Any) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise ValueError(f"{name}: labels is a sequence of names, such as ('region',)")
    names = tuple(labels)
    for label in names:
        if not isinstance(label, str) or not LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"{name}: {label!r} is not a label name")
        if kind == "histogram" and label == "le":
            raise ValueError(f"{name}: 'le' is the histogram's own label")
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: a label is named twice in {list(names)}")
    return names


def _bounds(name: str, buckets: Sequence[float] | None) -> tuple[float, ...]:
    if buckets is None:
        return ()
    try:
        bounds = tuple(float(bound) for bound in buckets)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: buckets must be numbers") from None
    if bounds and bounds[-1] == _INF:
        bounds = bounds[:-1]  # +Inf is always the last bucket
    if not bounds or any(not math.isfinite(bound) for bound in bounds):
        raise ValueError(f"{name}: buckets must be finite numbers (+Inf is added)")
    if bounds[0] < 0:
        raise ValueError(
            f"{name}: buckets must be 0 or more (a histogram counts values of 0 or more)"
        )
    if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise ValueError(f"{name}: buckets must increase")
    return bounds

"""What Grafana does to a PostgreSQL panel's SQL before the database runs it,
in the order it does it:

1. the dashboard's variables, in the browser, formatted by the SQL data
   source: a variable that allows several values or "All" becomes quoted
   literals (``'a','b'``, quotes doubled); "All" is the custom all value as
   written, when the variable has one, else every value;
2. the substitutions of every SQL data source (``sqleng.Interpolate``):
   ``$__interval_ms``, ``$__interval``, ``$__unixEpochFrom()``,
   ``$__unixEpochTo()``;
3. the PostgreSQL macros (``pkg/tsdb/grafana-postgresql-datasource/macros.go``):
   every ``$name(arguments)`` left, an unknown name an error, as in Grafana.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_VARIABLE = re.compile(r"\$(?:\{([a-zA-Z_][a-zA-Z0-9_]*)\}|([a-zA-Z_][a-zA-Z0-9_]*))")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


@dataclass(frozen=True)
class Query:
    """A panel query's time range (seconds since the epoch) and interval."""

    start: float
    end: float
    interval_ms: int


def quoted(values: Sequence[str]) -> str:
    """Values of a multi-value variable, as the SQL data sources write them."""
    return ",".join("'" + value.replace("'", "''") + "'" for value in values)


def all_of(variable: Mapping[str, Any], values: Sequence[str]) -> str:
    """A variable set to "All": its custom all value (not quoted), or every value."""
    custom = variable.get("allValue")
    return str(custom) if custom else quoted(values)


def interpolated(sql: str, variables: Mapping[str, str], query: Query) -> str:
    """``sql`` as the database receives it."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.startswith("__"):
            return match.group()  # Grafana's own, replaced below
        if name not in variables:
            raise AssertionError(f"${name} is not a variable of the dashboard")
        return variables[name]

    text = _VARIABLE.sub(value, sql)
    text = text.replace("$__interval_ms", str(query.interval_ms))
    text = text.replace("$__interval", _format_interval(query.interval_ms))
    text = text.replace("$__unixEpochFrom()", str(int(query.start)))
    text = text.replace("$__unixEpochTo()", str(int(query.end)))
    return _MACRO.sub(lambda match: _macro(match, query), text)


def _macro(match: re.Match[str], query: Query) -> str:
    name = match.group(1)
    args = [arg.strip() for arg in match.group(2).split(",")]
    start, end = int(query.start), int(query.end)
    if name == "__time":
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{_rfc3339(query.start)}' AND '{_rfc3339(query.end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339(query.start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339(query.end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        seconds = _go_float(_seconds(args[1]))
        group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
        return group + (' AS "time"' if name.endswith("Alias") else "")
    if name == "__unixEpochFilter":
        return f"{args[0]} >= {start} AND {args[0]} <= {end}"
    if name in ("__unixEpochGroup", "__unixEpochGroupAlias"):
        seconds = _go_float(_seconds(args[1]))
        group = f"floor(({args[0]})/{seconds})*{seconds}"
        return group + (' AS "time"' if name.endswith("Alias") else "")
    raise AssertionError(f"Grafana has no macro ${name}(): {match.group()}")


def _seconds(interval: str) -> float:
    match = _DURATION.match(interval.strip("'"))
    assert match, f"not an interval Grafana parses: {interval!r}"
    return int(match.group(1)) * _UNITS[match.group(2)]


def _format_interval(milliseconds: int) -> str:
    """Go's ``gtime.FormatInterval``: the largest whole unit."""
    for unit in ("y", "d", "h", "m", "s"):
        size = int(_UNITS[unit] * 1000)
        if milliseconds >= size:
            return f"{milliseconds // size}{unit}"
    return f"{max(milliseconds, 1)}ms"


def _go_float(value: float) -> str:
    """A float as Go's ``%v`` writes it (60, 0.5)."""
    return f"{value:g}"


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")

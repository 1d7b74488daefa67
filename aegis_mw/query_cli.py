"""``aegis-mw query``: the history queries from a terminal, as a table or JSON.

The same parameters, checks and answers as the JSON API (one code path),
read straight from the database a running app writes::

    aegis-mw query overview --range 1h --db sqlite:///aegis.db
    aegis-mw query top-endpoints --range 24h --sort p95 --json
    aegis-mw query requests --status 5xx --since 15m --db aegis.db
    aegis-mw query requests --trace-id 4bf92f3577b34da6a3ce929d0e0e4736 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .cli_args import missing_directory, moment, sqlite_path

QUERIES = (
    "overview", "request-rate", "latency", "status-distribution", "top-endpoints", "requests",
    "custom-metric-history",
)  # fmt: skip
#: option -> the API parameter it sets
OPTIONS = {
    "range": "range", "from_": "from", "to": "to", "limit": "limit", "sort": "sort",
    "route": "route", "method": "method", "status": "status",
    "min_duration_ms": "min_duration_ms", "since": "since", "until": "until", "offset": "offset",
    "name": "name", "by": "by", "trace_id": "trace_id",
}  # fmt: skip


def add_parser(commands: Any) -> None:
    query = commands.add_parser(
        "query",
        help="query the stored history (overview, latency, top endpoints, ...)",
        description="Read the history an app with the middleware stored, as a table or JSON.",
    )
    query.add_argument("query", choices=QUERIES, help="what to show")
    query.add_argument(
        "--db",
        default="sqlite:///aegis.db",
        help="the database the app writes: a SQLite file path, sqlite:///path or "
        "postgresql://... (default: %(default)s)",
    )
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.add_argument("--range", help="5m, 15m, 1h, 6h, 24h, 7d or 30d (default 1h)")
    when = "an ISO 8601 time, or a duration before now (30s, 15m, 2h, 7d)"
    query.add_argument("--from", dest="from_", metavar="TIME", type=moment, help=f"start: {when}")
    query.add_argument("--to", metavar="TIME", type=moment, help=f"end: {when} (default now)")
    query.add_argument("--limit", help="rows to show (top-endpoints, requests)")
    query.add_argument("--sort", help="count, p95 or errors (top-endpoints)")
    for name in ("route", "method", "status", "offset"):
        query.add_argument(f"--{name}", help=f"{name} filter (requests)")
    for name in ("since", "until"):
        query.add_argument(
            f"--{name}", metavar="TIME", type=moment, help=f"{name} filter (requests): {when}"
        )
    query.add_argument("--min-duration-ms", dest="min_duration_ms", help="slowest only (requests)")
    query.add_argument(
        "--trace-id", dest="trace_id", metavar="ID",
        help="one trace's requests: its id, 32 lowercase hex digits (requests)",
    )  # fmt: skip
    query.add_argument("--name", help="the app's own metric to chart (custom-metric-history)")
    query.add_argument("--by", help="its label names, one series per value (custom-metric-history)")


def _open(url: str) -> Any:
    from .core.errors import ConfigError
    from .sinks import SQLiteSink, build_sink

    path = sqlite_path(url)
    if path is None:
        sink = build_sink(url)
    else:
        # Checked first: the sink would create a missing directory and file,
        # and a query of an empty new file would look like "no traffic".
        directory = missing_directory(path)
        if directory is not None:
            raise ConfigError("--db", url, f"the directory {directory} does not exist")
        if not os.path.isfile(path):
            raise ConfigError("--db", url, "an existing database file (nothing is stored there)")
        sink = SQLiteSink(path, url)
    if not callable(getattr(sink, "read_rollups", None)):
        raise ConfigError("--db", url, "a sink that keeps history: sqlite:/// or postgresql://")
    return sink


def with_history(db: str, needs: str, what: str, work: Callable[[Any], int]) -> int:
    """Run ``work`` on the history sink ``db`` names, when it has the method
    ``needs`` (else "keeps no ``what``"), and close it; every failure of the
    database (locked, unreachable, not ours) is an error message and exit
    status 2, never a traceback."""
    from .core.errors import ConfigError

    try:
        sink = _open(db)
    except (ConfigError, ImportError) as exc:
        print(f"aegis-mw: error: {exc}", file=sys.stderr)
        return 2
    try:
        if not callable(getattr(sink, needs, None)):
            print(f"aegis-mw: error: {db} keeps no {what}", file=sys.stderr)
            return 2
        return work(sink)
    except Exception as exc:
        print(f"aegis-mw: error: {db}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        sink.close()


def run_query(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .core.errors import ConfigError
    from .endpoints.api import PARAMETERS, answer, custom_history_answer
    from .history import HistoryQueries, QueryError

    params = {
        parameter: str(value)
        for option, parameter in OPTIONS.items()
        if (value := getattr(args, option)) is not None
    }
    for parameter in params:
        if parameter not in PARAMETERS[args.query]:
            print(f"aegis-mw: error: --{parameter} does not apply to {args.query}", file=sys.stderr)
            return 2
    try:
        sink = _open(args.db)
    except (ConfigError, ImportError) as exc:
        print(f"aegis-mw: error: {exc}", file=sys.stderr)
        return 2
    try:
        queries = HistoryQueries(sink)
        if args.query == "custom-metric-history":
            found = custom_history_answer(queries, sink, params)
            assert found is not None  # the sink is the source
            data = found
        else:
            data = answer(queries, args.query, params)
    except QueryError as exc:
        print(f"aegis-mw: error: {exc.parameter}: {exc.message}", file=sys.stderr)
        return 2
    finally:
        sink.close()
    out = sys.stdout if out is None else out
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        out.write(render(args.query, data))
    return 0


# -- tables --------------------------------------------------------------------
_OVERVIEW_FIGURES = (
    "total", "successful", "failed", "client_errors", "error_rate", "requests_per_second",
    "rate_limited", "request_bytes", "response_bytes",
)  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)]) + "\n"


def render(query: str, data: dict[str, Any]) -> str:
    """The table for one query's data."""
    span = data.get("range")
    head = f"{span['from']} .. {span['to']} (step {span['step_seconds']} s)\n\n" if span else ""
    if query == "overview":
        latency = data["latency_ms"]
        rows: list[tuple[Any, ...]] = [
            (key.replace("_", " "), data[key]) for key in _OVERVIEW_FIGURES
        ]
        rows += [(f"latency {key} (ms)", value) for key, value in latency.items()]
        rows += [(f"status {key}", value) for key, value in data["status"].items()]
        return head + table(("figure", "value"), rows)
    if query == "top-endpoints":
        rows = [
            (e["route"], e["method"], e["requests"], e["errors"], e["requests_per_second"],
             e["latency_ms"]["avg"], e["latency_ms"]["p95"], e["latency_ms"]["p99"])
            for e in data["endpoints"]
        ]  # fmt: skip
        headers = ("route", "method", "requests", "errors", "req/s", "avg ms", "p95 ms", "p99 ms")
        return head + table(headers, rows)
    if query == "custom-metric-history":
        return head + _custom_table(data)
    if query == "requests":
        rows = [
            (r["timestamp"], r["method"], r["route"], r["path"], r["status"], r["duration_ms"],
             r["error"])
            for r in data["requests"]
        ]  # fmt: skip
        return table(("time", "method", "route", "path", "status", "ms", "error"), rows)
    points = data["points"]
    columns = [key for key in points[0] if key != "timestamp"] if points else []
    rows = [(p["timestamp"], *(p[key] for key in columns)) for p in points]
    return head + table(("time", *columns), rows)


#: The figures of a custom metric's points, by its kind.
_CUSTOM_FIGURES = {
    "counter": ("increase", "rate"),
    "gauge": ("value", "low", "high"),
    "histogram": ("count", "rate", "avg", "p50", "p95", "p99"),
}


def _custom_table(data: dict[str, Any]) -> str:
    """A row per step and series (all label sets added up, or one per value
    of ``by``), steps with nothing left out."""
    figures = _CUSTOM_FIGURES[data["kind"]]
    rows = []
    for series in data["series"]:
        labels = ", ".join(f"{k}={v}" for k, v in series["labels"].items()) or "(all)"
        for point in series["points"]:
            values = [point.get(key) for key in figures]
            # A step with figures (a gauge of 0 too); one with nothing recorded is left out.
            if any(value is not None for value in values) and (
                data["kind"] == "gauge" or any(values)
            ):
                rows.append((point["timestamp"], labels, *values))
    title = f"{data['name']} ({data['kind']})\n"
    if data["left_out"]:
        title += f"{data['left_out']} more series not shown (--limit)\n"
    return title + table(("time", "series", *figures), rows)

"""``aegis-mw events``: the app's events from a terminal, listed or added.

The same filters and checks as ``GET``/``POST {api_path}/events``, straight
on the database the app writes::

    aegis-mw events list --level error,critical --since 2h --db aegis.db
    aegis-mw events create "deployed 2.4.1" --tag deploy --id deploy-2.4.1 --db aegis.db
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from .cli_args import moment

#: option -> the API parameter it sets (``list``)
_FILTERS = {
    "type": "type", "level": "level", "source": "source", "tags": "tags",
    "trace_id": "trace_id", "since": "since", "until": "until", "limit": "limit",
    "offset": "offset",
}  # fmt: skip


def add_parser(commands: Any) -> None:
    events = commands.add_parser(
        "events",
        help="list the app's events (with the request log's errors), or add one",
        description="The events an app with the middleware stored, and a way to add one.",
    )
    actions = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="events, newest first", description="Stored events, newest first."
    )
    create = actions.add_parser(
        "create", help="store one event", description="Store one event in the app's database."
    )
    for parser in (listing, create):
        parser.add_argument(
            "--db",
            default="sqlite:///aegis.db",
            help="the database the app writes: a SQLite file path, sqlite:///path or "
            "postgresql://... (default: %(default)s)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    when = "an ISO 8601 time, or a duration before now (30s, 15m, 2h, 7d)"
    listing.add_argument("--type", help="any of log, metric, trace, alert (comma-separated)")
    listing.add_argument("--level", help="any of debug, info, warning, error, critical")
    listing.add_argument("--source", help="only this source (the request log's errors: app)")
    listing.add_argument("--tags", help="events with every one of these tags (comma-separated)")
    listing.add_argument("--trace-id", dest="trace_id", help="only this trace")
    for name in ("since", "until"):
        listing.add_argument(f"--{name}", metavar="TIME", type=moment, help=f"{name}: {when}")
    listing.add_argument("--limit", help="rows to show (1-1000, default 100)")
    listing.add_argument("--offset", help="rows to skip")
    create.add_argument("message", help="what happened")
    create.add_argument("--type", default="log", help="log, metric, trace or alert (default log)")
    create.add_argument("--level", default="info", help="debug .. critical (default info)")
    create.add_argument("--source", default="app", help="who says so (default app)")
    create.add_argument("--tag", action="append", dest="tags", help="a tag (repeat for more)")
    create.add_argument("--payload", help="a JSON object")
    create.add_argument("--id", dest="event_id", help="the event's id: stored once per id")
    create.add_argument("--trace-id", dest="trace_id", help="32 lowercase hex digits")
    create.add_argument("--timestamp", metavar="TIME", type=moment, help=f"when: {when}")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .query_cli import with_history

    shown = sys.stdout if out is None else out

    def work(sink: Any) -> int:
        if args.action == "create":
            return _create(args, sink, shown)
        return _list(args, sink, shown)

    return with_history(args.db, "read_events", "events", work)


def _list(args: argparse.Namespace, sink: Any, out: TextIO) -> int:
    from .core.events import read_merged
    from .endpoints.api import _integer, _time, check_text
    from .endpoints.events import event_query, events_answer
    from .history import QueryError

    params = {
        parameter: str(value)
        for option, parameter in _FILTERS.items()
        if (value := getattr(args, option)) is not None
    }
    try:
        for name, value in params.items():
            check_text(name, value)
        query = event_query(params, _integer, _time)
    except QueryError as exc:
        option = exc.parameter.replace("_", "-")
        print(f"aegis-mw: error: --{option}: {exc.message}", file=sys.stderr)
        return 2
    data = events_answer(read_merged(query, sink.read_events, sink.read_requests), query)
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
        return 0
    from .query_cli import table

    rows = [
        (e["timestamp"], e["level"], e["type"], e["source"], ",".join(e["tags"]),
         e["message"].splitlines()[0] if e["message"] else "", e["id"])
        for e in data["events"]
    ]  # fmt: skip
    out.write(table(("time", "level", "type", "source", "tags", "message", "id"), rows))
    return 0


def _create(args: argparse.Namespace, sink: Any, out: TextIO) -> int:
    import time

    from .core.events import EventError, build_event
    from .core.record import Batch
    from .history.ranges import parse_time

    payload = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except (ValueError, RecursionError) as exc:
            print(f"aegis-mw: error: --payload: not JSON: {exc}", file=sys.stderr)
            return 2
    try:
        event = build_event(
            args.message, type=args.type, level=args.level, source=args.source, tags=args.tags,
            payload=payload, event_id=args.event_id,
            timestamp=None if args.timestamp is None else parse_time("timestamp", args.timestamp),
            trace_id=args.trace_id, now=time.time,
        )  # fmt: skip
    except EventError as exc:
        if exc.field.startswith("tags"):
            option = f"--tag: {exc.field}"
        else:
            option = "message" if exc.field == "message" else f"--{exc.field.replace('_', '-')}"
        print(f"aegis-mw: error: {option}: {exc.message}", file=sys.stderr)
        return 2
    # Stored by its id once: running the command again stores nothing more.
    sink.write(Batch(events=[event]))
    if args.json:
        json.dump({"data": event.to_json()}, out, indent=2)
        out.write("\n")
    else:
        out.write(f"{event.event_id}\n")
    return 0

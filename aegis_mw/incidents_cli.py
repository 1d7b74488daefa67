"""``aegis-mw incidents``: list, show, open and change incidents from a terminal.

The same checks as the API, straight on the database the app writes::

    aegis-mw incidents list --status active --db aegis.db
    aegis-mw incidents show inc-3f2a9c01d4e7 --timeline --db aegis.db
    aegis-mw incidents create "checkout errors" --severity critical --db aegis.db
    aegis-mw incidents update inc-3f2a9c01d4e7 --status resolved --root-cause "bad deploy"
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any, TextIO

_FIELDS = ("title", "description", "severity", "status", "assignee", "root_cause")


def add_parser(commands: Any) -> None:
    incidents = commands.add_parser(
        "incidents",
        help="list, show, open and change incidents",
        description="The incidents an app with the middleware keeps, and their timelines.",
    )
    actions = incidents.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="incidents, newest first")
    show = actions.add_parser("show", help="one incident, its updates, summary and timeline")
    create = actions.add_parser("create", help="open an incident")
    update = actions.add_parser("update", help="change an incident, or add a note")
    for parser in (listing, show, create, update):
        parser.add_argument(
            "--db", default="sqlite:///aegis.db",
            help="the database the app writes: a SQLite file path, sqlite:///path or "
            "postgresql://... (default: %(default)s)",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.add_argument("--status", help="statuses, comma-separated, or active")
    listing.add_argument("--severity", help="severities, comma-separated")
    listing.add_argument("--limit", help="rows to show (1-1000, default 100)")
    listing.add_argument("--offset", help="rows to skip")
    show.add_argument("id", help="the incident's id")
    show.add_argument("--timeline", action="store_true", help="with what happened around it")
    show.add_argument("--limit", help="timeline items (1-1000, default 100)")
    show.add_argument("--offset", help="timeline items to skip")
    create.add_argument("title", help="what is wrong")
    create.add_argument("--correlation-key", dest="correlation_key",
                        help="one active incident per key: a second opening attaches")  # fmt: skip
    update.add_argument("id", help="the incident's id")
    update.add_argument("--title")
    update.add_argument("--note", help="a note added to its timeline")
    for parser in (create, update):
        parser.add_argument("--description")
        parser.add_argument("--severity", help="critical, high, medium or low")
        parser.add_argument(
            "--status", help="open, investigating, identified, monitoring, resolved"
        )
        parser.add_argument("--assignee")
        parser.add_argument("--unassign", action="store_true", help="no one is assigned")
        parser.add_argument("--root-cause", dest="root_cause")
        parser.add_argument("--as", dest="actor", help="who does it (default: the user's name)")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .query_cli import with_history

    shown = sys.stdout if out is None else out
    return with_history(
        args.db, "incident_store", "incidents", lambda sink: _run(args, _service(sink), shown)
    )


def _service(sink: Any) -> Any:
    import time

    from .core.events import read_merged
    from .history import HistoryQueries
    from .incidents.service import Incidents

    alerts = sink.alert_store() if callable(getattr(sink, "alert_store", None)) else None
    return Incidents(
        sink.incident_store(), time.time,
        events=lambda query: read_merged(query, sink.read_events, sink.read_requests),
        queries=HistoryQueries(sink), alerts=lambda: alerts,
    )  # fmt: skip


def _run(args: argparse.Namespace, incidents: Any, out: TextIO) -> int:
    from .endpoints.api import _integer, check_text
    from .endpoints.incidents import incidents_answer
    from .history import QueryError
    from .incidents.model import IncidentError
    from .incidents.store import Conflict

    actor = f"{getattr(args, 'actor', None) or _user()} via cli"
    try:
        if args.action in ("list", "show"):
            params = {
                name: str(value)
                for name in ("status", "severity", "limit", "offset")
                if (value := getattr(args, name, None)) is not None
            }
            endpoint = "incidents"
            if args.action == "show":
                params["id"] = args.id
                endpoint = "incident-timeline" if args.timeline else "incident"
            for name, value in params.items():
                check_text(name, value)
            answer = incidents_answer(incidents, endpoint, params, _integer)
            body = json.loads(answer.body)
            if answer.status != 200:
                print(f"aegis-mw: error: {body['error']['message']}", file=sys.stderr)
                return 2
            return _print(args, endpoint, body["data"], out)
        data: dict[str, Any] = {
            name: value for name in _FIELDS if (value := getattr(args, name, None)) is not None
        }
        if args.unassign:
            data["assignee"] = None
        if args.action == "create":
            data["title"] = args.title
            if args.correlation_key is not None:
                data["correlation_key"] = args.correlation_key
            incident, created = incidents.open(data, actor)
            if args.json:
                return _print_json({"incident": incident.to_json(), "created": created}, out)
            out.write(f"{incident.incident_id}{'' if created else ' (attached)'}\n")
            return 0
        if args.note is not None:
            data["note"] = args.note
        changed = incidents.change(args.id, data, actor)
        if changed is None:
            print(f"aegis-mw: error: no incident has the id {args.id}", file=sys.stderr)
            return 2
        if args.json:
            return _print_json({"incident": changed.to_json()}, out)
        out.write(f"{changed.incident_id} {changed.status}\n")
        return 0
    except QueryError as exc:
        option = exc.parameter.replace("_", "-")
        print(f"aegis-mw: error: --{option}: {exc.message}", file=sys.stderr)
        return 2
    except IncidentError as exc:
        print(f"aegis-mw: error: {exc.field.replace('_', '-')}: {exc.message}", file=sys.stderr)
        return 2
    except Conflict as exc:
        print(f"aegis-mw: error: {exc}", file=sys.stderr)
        return 2


def _print_json(data: dict[str, Any], out: TextIO) -> int:
    json.dump(data, out, indent=2)
    out.write("\n")
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container, say)
        return "cli"


def _print(args: argparse.Namespace, endpoint: str, data: dict[str, Any], out: TextIO) -> int:
    from .query_cli import table

    if args.json:
        return _print_json(data, out)
    if endpoint == "incidents":
        rows = [
            (i["id"], i["status"], i["severity"], i["created_at"], i["assignee"], i["title"])
            for i in data["incidents"]
        ]
        out.write(table(("id", "status", "severity", "opened", "assignee", "title"), rows))
        return 0
    incident = data["incident"]
    out.write(f"{incident['id']}  {incident['title']}\n")
    out.write(f"  {incident['status']}, {incident['severity']}, opened {incident['created_at']}"
              f" by {incident['created_by']}\n")  # fmt: skip
    if endpoint == "incident":
        for update in data["updates"]:
            what = ""
            if update["kind"] == "changed":
                changed = update["changes"].items()
                what = ", ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in changed)
            note = f" {update['note']!r}" if update["note"] else ""
            out.write(f"  {update['at']}  {update['actor']}: {update['kind']} {what}{note}\n")
        return 0
    lines = [(item["at"], item["kind"], _headline(item)) for item in data["items"]]
    out.write(table(("time", "kind", "what"), lines))
    return 0


def _headline(item: dict[str, Any]) -> str:
    if item["kind"] == "incident":
        update = item["update"]
        return f"{update['actor']}: {update['kind']} {update['note']}".strip()
    if item["kind"] == "alert":
        transition = item["transition"]
        return f"{transition['rule']}: {transition['from_state']} -> {transition['to_state']}"
    event = item["event"]
    return f"[{event['level']}] {event['message'].splitlines()[0] if event['message'] else ''}"

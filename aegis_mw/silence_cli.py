"""``aegis-mw alerts silence``: add, list and expire silences in the app's store.

A silence written here is read by every process of the app at its next
evaluation tick (see :mod:`aegis_mw.alerts.service`); every change is
audited with its author (``--author``, by default the user running the
command: whoever can write the database can write silences)::

    aegis-mw alerts silence add 'alertname="checkout_errors"' 'route=~"/api/.*"' \\
        --duration 2h --comment "deploying the fix" --db sqlite:///aegis.db
    aegis-mw alerts silence list --db sqlite:///aegis.db
    aegis-mw alerts silence expire 3f2a... --db sqlite:///aegis.db
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
import uuid
from typing import Any, TextIO

_DB_HELP = "the database the app writes: a SQLite file path, sqlite:///path or postgresql://..."


def _author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this user id
        return "unknown"


def add_parser(actions: Any) -> None:
    silence = actions.add_parser(
        "silence", help="add, list or expire silences",
        description="Silences hold back the notices of the alerts their label matchers match.",
    )  # fmt: skip
    steps = silence.add_subparsers(dest="silence_action", required=True, metavar="ACTION")
    add = steps.add_parser("add", help="add a silence; prints its id")
    add.add_argument(
        "matchers", nargs="+", metavar="MATCHER",
        help='label matchers, all of which an alert must meet: alertname="x", route=~"/api/.*", '
        'severity!="info"',
    )  # fmt: skip
    add.add_argument("--comment", required=True, help="why (shown with the silence)")
    add.add_argument("--duration", default="2h", help="how long: 30m, 2h, 1d (default: 2h)")
    add.add_argument("--starts", help="when it starts: RFC 3339 with an offset (default: now)")
    add.add_argument(
        "--until", help="when it ends: RFC 3339 with an offset (instead of --duration)"
    )
    listing = steps.add_parser("list", help="the silences not yet ended, and the latest changes")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    expire = steps.add_parser("expire", help="end a silence now")
    expire.add_argument("id", help="the silence's id")
    for step in (add, listing, expire):
        step.add_argument("--db", default="sqlite:///aegis.db", help=_DB_HELP)
    for step in (add, expire):
        step.add_argument("--author", default=_author(), help="who, for the audit (default: you)")


def run(args: argparse.Namespace, out: TextIO, error: Any, open_store: Any) -> int:
    """One silence command; ``error`` reports a problem (exit 2),
    ``open_store`` opens the store of ``--db``."""
    from .alerts.rules import parse_duration
    from .alerts.silences import parse_time, silence_from_mapping
    from .core.errors import ConfigError

    now = time.time()
    try:
        if args.silence_action == "add":
            starts = now if args.starts is None else parse_time(args.starts)
            ends = (
                parse_time(args.until) if args.until is not None
                else starts + parse_duration(args.duration)
            )  # fmt: skip
            silence = silence_from_mapping({
                "id": uuid.uuid4().hex, "matchers": list(args.matchers), "starts_at": starts,
                "ends_at": ends, "created_by": args.author, "comment": args.comment,
            })  # fmt: skip
        sink, store = open_store(args.db)
    except (ConfigError, ValueError, ImportError) as exc:
        return int(error(str(exc)))
    try:
        if args.silence_action == "add":
            store.put_silence(silence, args.author, now)
            out.write(silence.id + "\n")
        elif args.silence_action == "expire":
            if not store.expire_silence(args.id, args.author, now):
                return int(error(f"no silence {args.id!r} that has not ended"))
            out.write(f"expired {args.id}\n")
        else:
            _list(store, now, args.json, out)
    except Exception as exc:  # the store's own fault: named, not a traceback
        return int(error(f"the silences could not be written or read: {type(exc).__name__}: {exc}"))
    finally:
        sink.close()
    return 0


def _list(store: Any, now: float, as_json: bool, out: TextIO) -> None:
    from .query_cli import table

    silences = [{**s.to_mapping(), "state": s.state(now)} for s in store.silences(now)]
    audit = store.audit(20, "silence")
    if as_json:
        json.dump({"silences": silences, "audit": audit}, out, indent=2)
        out.write("\n")
        return
    from .core.record import isoformat

    rows = [
        (s["id"], s["state"], " ".join(s["matchers"]), isoformat(s["starts_at"]),
         isoformat(s["ends_at"]), s["created_by"], s["comment"])
        for s in silences
    ]  # fmt: skip
    headers = ("id", "state", "matchers", "starts", "ends", "by", "comment")
    out.write("Silences\n\n" + (table(headers, rows) if rows else "none\n"))
    changes = [(isoformat(a["at"]), a["actor"], a["action"], a["object"]) for a in audit]
    titles = ("time", "by", "action", "what")
    out.write("\nChanges\n\n" + (table(titles, changes) if changes else "none\n"))

"""The ``aegis-mw`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, alerts_cli, events_cli, export_cli, incidents_cli, query_cli
from .cli_args import demo_database


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis-mw", description="Self-hosted request monitoring middleware."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a demo app with the middleware and synthetic traffic",
        description=(
            "Serve a small FastAPI app with AegisMiddleware on 127.0.0.1, send it "
            "synthetic traffic, print live figures, and store every request in SQLite."
        ),
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    demo.add_argument(
        "--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    demo.add_argument(
        "--db",
        type=demo_database,
        default="aegis-demo.db",
        help="SQLite file for the records: a path or sqlite:///path, in an existing "
        "directory (default: %(default)s)",
    )
    demo.add_argument(
        "--rate",
        type=_positive_float,
        default=50.0,
        help="synthetic requests per second (default: %(default)s)",
    )
    demo.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.add_argument(
        "--open", action="store_true", help="open the dashboard in the default web browser"
    )
    query_cli.add_parser(commands)
    alerts_cli.add_parser(commands)
    events_cli.add_parser(commands)
    incidents_cli.add_parser(commands)
    export_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(
            host=args.host,
            port=args.port,
            db=args.db,
            rate=args.rate,
            duration=args.duration,
            open_page=args.open,
        )
    if args.command == "query":
        return query_cli.run_query(args)
    if args.command == "alerts":
        return alerts_cli.run(args)
    if args.command == "events":
        return events_cli.run(args)
    if args.command == "incidents":
        return incidents_cli.run(args)
    if args.command == "export":
        return export_cli.run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

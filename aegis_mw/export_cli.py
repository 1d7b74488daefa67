"""``aegis-mw export``: the Grafana dashboards and Prometheus recording rules
shipped in :mod:`aegis_mw.grafana`, to standard output or a file::

    aegis-mw export --grafana-dashboard > aegis-prometheus.json
    aegis-mw export --grafana-postgresql-dashboard -o aegis-postgresql.json
    aegis-mw export --recording-rules --namespace shop_api -o aegis-rules.yml
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

#: option destination -> the export it prints
_CHOICES = {
    "grafana_dashboard": "prometheus-dashboard",
    "grafana_postgresql_dashboard": "postgresql-dashboard",
    "recording_rules": "recording-rules",
}


def add_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="print a Grafana dashboard or Prometheus recording rules",
        description="Print one of the Grafana dashboards or the Prometheus recording rules "
        "that ship with aegis_mw, to import into Grafana or load into Prometheus.",
    )
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--grafana-dashboard", action="store_true",
        help="the Grafana dashboard over the Prometheus series of /metrics (JSON)",
    )  # fmt: skip
    what.add_argument(
        "--grafana-postgresql-dashboard", action="store_true",
        help="the Grafana dashboard over the history a postgresql:// sink stores (JSON)",
    )  # fmt: skip
    what.add_argument(
        "--recording-rules", action="store_true",
        help="Prometheus recording rules for the dashboard's heavier queries (YAML)",
    )  # fmt: skip
    export.add_argument(
        "--namespace", default="aegis",
        help="the app's metrics_namespace, which the Prometheus series names start with "
        "(default: %(default)s)",
    )  # fmt: skip
    export.add_argument(
        "-o", "--output", metavar="FILE", help="write it here (default: standard output)"
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .grafana import exported

    out = sys.stdout if out is None else out
    name = next(export for option, export in _CHOICES.items() if getattr(args, option))
    try:
        text = exported(name, namespace=args.namespace)
    except ValueError as exc:
        return _error(str(exc))
    if not args.output:
        out.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        return _error(f"{exc.filename}: {exc.strerror}")
    print(f"wrote the {name.replace('-', ' ')} to {args.output}", file=sys.stderr)
    return 0


def _error(message: str) -> int:
    print(f"aegis-mw: error: {message}", file=sys.stderr)
    return 2

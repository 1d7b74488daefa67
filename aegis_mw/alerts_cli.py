"""``aegis-mw alerts``: the alerts from a terminal, a test notice, and the
rules as Prometheus alerting rules.

``list`` and ``history`` read the alert state straight from the database a
running app writes (read only, as ``aegis-mw query`` reads); ``test`` and
``export`` load the rules and channels from the settings the app loads
(``AEGIS_CONFIG`` and ``AEGIS_*`` variables, or ``--config``)::

    aegis-mw alerts list --db sqlite:///aegis.db
    aegis-mw alerts history --limit 20 --json
    aegis-mw alerts test ops --config aegis.toml
    aegis-mw alerts export --prometheus-rules -o aegis-rules.yml --tests aegis-rules.test.yml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from . import alerts_dry_run_cli, silence_cli
from .query_cli import table

_DB_HELP = (
    "the database the app writes: a SQLite file path, sqlite:///path or postgresql://... "
    "(default: %(default)s)"
)
_CONFIG_HELP = "a settings file (TOML or YAML) to read instead of the one AEGIS_CONFIG names"
#: The states ``list`` shows: the alerts, and the instances without data.
_LISTED = ("firing", "pending", "nodata")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"from 1 to 10000, not {value}")
    return value


def add_parser(commands: Any) -> None:
    alerts = commands.add_parser(
        "alerts",
        help="list alerts and their history, send a test notice, export Prometheus rules",
        description="The alert state an app with the middleware stored, its channels and rules.",
    )
    actions = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the alerts firing, pending, and without data",
        description="The current alert instances (firing, pending, nodata) in the app's store.",
    )  # fmt: skip
    history = actions.add_parser(
        "history", help="the latest transitions and notices",
        description="The latest alert transitions and the notices sent of them, newest first.",
    )  # fmt: skip
    for reader in (listing, history):
        reader.add_argument("--db", default="sqlite:///aegis.db", help=_DB_HELP)
        reader.add_argument("--json", action="store_true", help="print JSON instead of a table")
    history.add_argument(
        "--limit", type=_limit, default=50, help="rows of each kind (default: %(default)s)"
    )
    test = actions.add_parser(
        "test", help="send a test notice through one channel",
        description="Send one test notice (alertname aegis_test) through a configured channel "
        "and print 'delivered' or 'failed: <why>'; exit 0 when delivered, 1 when not.",
    )  # fmt: skip
    test.add_argument("channel", help="the channel's name in alert_channels")
    test.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    export = actions.add_parser(
        "export", help="write the alert rules as Prometheus alerting rules",
        description="Write the configured alert rules as a Prometheus rule file over the "
        "series of /metrics (check it with promtool check rules).",
    )  # fmt: skip
    export.add_argument(
        "--prometheus-rules", action="store_true", required=True,
        help="the format: Prometheus alerting rules (YAML)",
    )  # fmt: skip
    export.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    export.add_argument(
        "-o", "--output", metavar="FILE", help="write the rules here (default: standard output)"
    )
    export.add_argument(
        "--tests", metavar="FILE",
        help="also write a promtool test file (promtool test rules FILE); needs -o",
    )  # fmt: skip
    silence_cli.add_parser(actions)
    alerts_dry_run_cli.add_parser(actions)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    if args.action in ("list", "history"):
        return _read(args, out)
    if args.action == "test":
        return _test(args, out)
    if args.action == "silence":
        return silence_cli.run(args, out, _error, _open_store)
    if args.action == "dry-run":
        return alerts_dry_run_cli.run(args, out)
    return _export(args, out)


def _error(message: str) -> int:
    print(f"aegis-mw: error: {message}", file=sys.stderr)
    return 2


# -- list, history ---------------------------------------------------------------
def _open_store(url: str) -> tuple[Any, Any]:
    from .core.errors import ConfigError
    from .query_cli import _open

    sink = _open(url)  # the same checks as query: an existing file, a history sink
    make_store = getattr(sink, "alert_store", None)
    if not callable(make_store):
        sink.close()
        raise ConfigError("--db", url, "a sink that keeps alert state: sqlite:/// or postgresql://")
    return sink, make_store()


def _read(args: argparse.Namespace, out: TextIO) -> int:
    from .core.errors import ConfigError

    try:
        sink, store = _open_store(args.db)
    except (ConfigError, ImportError) as exc:
        return _error(str(exc))
    try:
        if args.action == "list":
            data: dict[str, Any] = {"alerts": alert_rows(store.instances())}
        else:
            data = {"transitions": store.history(args.limit), "notices": store.notices(args.limit)}
    except Exception as exc:  # the store's own fault: named, not a traceback
        return _error(f"the alert state could not be read: {type(exc).__name__}: {exc}")
    finally:
        sink.close()
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
    elif args.action == "list":
        out.write(render_alerts(data["alerts"]))
    else:
        out.write(render_history(data["transitions"], data["notices"]))
    return 0


def alert_rows(instances: Sequence[Any]) -> list[dict[str, Any]]:
    """The instances ``list`` shows, firing first, as JSON-ready rows."""
    order = {state: index for index, state in enumerate(_LISTED)}
    shown = sorted(
        (i for i in instances if i.state in order),
        key=lambda i: (order[i.state], i.rule, i.group),
    )
    return [
        {
            "rule": i.rule,
            "state": i.state,
            "group": dict(i.group),
            "value": i.value,
            "since": i.fired_at if i.state == "firing" else i.active_at,
            "episode": i.episode,
            "flapping": i.flapping,
        }
        for i in shown
    ]


def _time(value: Any) -> str | None:
    from .core.record import isoformat

    return None if value is None else isoformat(float(value))


def _group(group: Mapping[str, str]) -> str | None:
    return ", ".join(f"{key}={value}" for key, value in group.items()) or None


def render_alerts(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "no alerts firing, pending or without data\n"
    headers = ("state", "rule", "group", "value", "since", "flapping")
    return table(
        headers,
        [
            (r["state"], r["rule"], _group(r["group"]), r["value"], _time(r["since"]),
             "yes" if r["flapping"] else "")
            for r in rows
        ],
    )  # fmt: skip


_TRANSITIONS = ("time", "rule", "group", "kind", "change", "value", "notified")
_NOTICES = ("created", "channel", "state", "attempts", "last error", "done")


def render_history(
    transitions: Sequence[Mapping[str, Any]], notices: Sequence[Mapping[str, Any]]
) -> str:
    rows: list[tuple[Any, ...]] = [
        (_time(t["at"]), t["rule"], _group(t["group"]), t["kind"],
         f"{t['from_state']} -> {t['to_state']}", t["value"], "yes" if t["notify"] else "")
        for t in transitions
    ]  # fmt: skip
    text = "Transitions\n\n" + (table(_TRANSITIONS, rows) if rows else "none\n")
    rows = [
        (_time(n["created_at"]), n["channel"], n["state"], n["attempts"], n["last_error"] or None,
         _time(n["done_at"]))
        for n in notices
    ]  # fmt: skip
    return text + "\nNotices\n\n" + (table(_NOTICES, rows) if rows else "none\n")


# -- settings ------------------------------------------------------------------------
def _settings(config: str | None) -> Any:
    """The app's settings as the app loads them: ``AEGIS_*`` variables over the
    ``AEGIS_CONFIG`` file (``--config`` instead, when given)."""
    from .core.settings import CONFIG_ENV, AegisSettings

    environ = dict(os.environ)
    if config is not None:
        environ[CONFIG_ENV] = config
    return AegisSettings.load(environ)


def _test(args: argparse.Namespace, out: TextIO) -> int:
    from .core.errors import ConfigError

    try:
        settings = _settings(args.config)
    except (ConfigError, ImportError) as exc:
        return _error(str(exc))
    channels = settings.alert_channels
    channel = channels.get(args.channel)
    if channel is None:
        try:
            channel, written = _api_channel(settings, args.channel)
        except ConfigError as exc:  # never a secret's value: those show as "(not shown)"
            return _error(str(exc))
        except Exception as exc:  # the store down: the driver's words may name its address
            return _error(f"the API's channels could not be read: {type(exc).__name__}")
        if channel is None:
            known = ", ".join(sorted(channels)) or "none (alert_channels is empty)"
            through = f"; through the API: {', '.join(written)}" if written else ""
            return _error(
                f"no channel {args.channel!r} in alert_channels; configured: {known}{through}"
            )
    from .alerts.outbox import send_test

    result = send_test(channel, time.time(), "aegis-mw alerts test")
    out.write("delivered\n" if result.delivered else f"failed: {result.error}\n")
    return 0 if result.delivered else 1


def _api_channel(settings: Any, name: str) -> tuple[Any, list[str]]:
    """The channel ``name`` written through the API, from the store of the
    settings' sink (as the app builds it: alert_api_networks, its env:
    references read here), and the names written; (None, []) without a
    store to read."""
    from .alerts.api_channels import api_channel
    from .alerts.store import CHANNEL
    from .core.client_address import parse_networks
    from .core.errors import ConfigError

    urls = [sink for sink in settings.sink if isinstance(sink, str)]
    if not urls:
        return None, []
    try:
        sink, store = _open_store(urls[0])
    except ConfigError:  # no database yet, or a sink that keeps no alert state
        return None, []
    try:
        rows = {row.name: row for row in store.api_items(CHANNEL)[1]}
    finally:
        sink.close()
    row = rows.get(name)
    if row is None:
        return None, sorted(rows)
    networks = parse_networks(settings.alert_api_networks)
    return api_channel(name, row.data, networks, where=f"the API's channel {name}"), [name]


# -- export --------------------------------------------------------------------------
def _export(args: argparse.Namespace, out: TextIO) -> int:
    from .alerts.prometheus_rules import prometheus_rules, promtool_tests
    from .core.errors import ConfigError

    if args.tests and not args.output:
        return _error("--tests needs -o FILE: the test file names the rule file it tests")
    try:
        settings = _settings(args.config)
    except (ConfigError, ImportError) as exc:
        return _error(str(exc))
    rules, namespace = settings.alert_rules, settings.metrics_namespace
    buckets = settings.metrics_buckets
    text = prometheus_rules(rules, namespace=namespace, buckets=buckets)
    if not args.output:
        out.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        if args.tests:
            where = os.path.dirname(os.path.abspath(args.tests))
            rule_file = os.path.relpath(os.path.abspath(args.output), where)
            tests = promtool_tests(rules, rule_file, namespace=namespace, buckets=buckets)
            with open(args.tests, "w", encoding="utf-8") as handle:
                handle.write(tests)
    except OSError as exc:
        return _error(f"{exc.filename}: {exc.strerror}")
    written = f" and their tests to {args.tests}" if args.tests else ""
    print(f"wrote {len(rules)} rule(s) to {args.output}{written}", file=sys.stderr)
    return 0

"""``aegis-mw alerts dry-run``: would the rules fire now, and when would they
have fired over the last hours?

The rules are the app's (the settings ``alerts export`` loads), some of them
(``--rule NAME``), or rules given as JSON (``--rule-json``); they are
replayed over the rollups stored in ``--db`` (see
:func:`aegis_mw.alerts.dry_run.replay`). Nothing is written, nobody is
notified::

    aegis-mw alerts dry-run --db sqlite:///aegis.db --config aegis.toml --hours 24
    aegis-mw alerts dry-run --db sqlite:///aegis.db --step 10s --json \\
        --rule-json '{"name": "errors", "input": "error_ratio", "operator": ">", "threshold": 0.05}'
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any, TextIO

_DB_HELP = (
    "the database the app writes: a SQLite file path, sqlite:///path or postgresql://... "
    "(default: %(default)s)"
)


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of hours, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"more than 0 hours, not {text}")
    return value


def _step(text: str) -> float:
    from .alerts.rules import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"more than 0 seconds, not {text!r}")
    return value


def _end(text: str) -> float:
    from .alerts.silences import parse_time

    try:
        try:
            return parse_time(float(text))
        except ValueError:
            return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def add_parser(actions: Any) -> None:
    dry = actions.add_parser(
        "dry-run", help="replay rules over the stored traffic: would they fire, and when",
        description="Replay alert rules over the rollups stored in the database, as the app "
        "would have evaluated them every --step over the last --hours, and print per rule "
        "whether it would fire now and its firing periods. Writes nothing, notifies nobody.",
    )  # fmt: skip
    dry.add_argument("--db", default="sqlite:///aegis.db", help=_DB_HELP)
    dry.add_argument(
        "--config", metavar="FILE",
        help="a settings file (TOML or YAML) to read instead of the one AEGIS_CONFIG names",
    )  # fmt: skip
    dry.add_argument(
        "--rule", action="append", default=[], metavar="NAME",
        help="only this rule of the settings (repeat for more)",
    )  # fmt: skip
    dry.add_argument(
        "--rule-json", action="append", default=[], metavar="JSON",
        help="a rule (or a list of rules) as JSON, with the fields of alert_rules; "
        "without --rule, the settings' rules are then not replayed",
    )  # fmt: skip
    dry.add_argument(
        "--hours", type=_hours, default=24.0, help="how far back (default: %(default)g)"
    )
    dry.add_argument(
        "--step", type=_step, default=60.0,
        help="the time between evaluations: 10s, 1m (default: 60s; the app's is alert_interval)",
    )  # fmt: skip
    dry.add_argument(
        "--end", type=_end, default=None, metavar="TIME",
        help="replay up to this time, RFC 3339 with an offset or seconds since the epoch "
        "(default: now)",
    )  # fmt: skip
    dry.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace, out: TextIO) -> int:
    from .alerts.figures import SETTLE_SECONDS
    from .alerts.rules import RuleError, rules_from_config
    from .alerts_cli import _error, _settings
    from .core.errors import ConfigError
    from .core.settings import AegisSettings
    from .query_cli import _open

    given: list[Any] = []
    for text in args.rule_json:
        try:
            data = json.loads(text)
        except ValueError as exc:
            return _error(f"--rule-json is not JSON: {exc}")
        given.extend(data if isinstance(data, list) else [data])
    flush_interval = AegisSettings.flush_interval
    chosen: list[Any] = []
    if args.rule or not given:
        try:
            settings = _settings(args.config)
        except (ConfigError, ImportError) as exc:
            return _error(str(exc))
        flush_interval = settings.flush_interval
        configured = {rule.name: rule for rule in settings.alert_rules}
        unknown = [name for name in args.rule if name not in configured]
        if unknown:
            known = ", ".join(sorted(configured)) or "none (alert_rules is empty)"
            return _error(f"no rule {unknown[0]!r} in alert_rules; configured: {known}")
        chosen = [configured[name] for name in dict.fromkeys(args.rule)] or list(
            configured.values()
        )
    try:
        rules = rules_from_config([*chosen, *given], "--rule-json")
    except RuleError as exc:
        return _error(str(exc))
    if not rules:
        return _error("no alert rules to replay: none in the settings; give --rule-json")
    end = time.time() if args.end is None else args.end
    start = end - args.hours * 3600.0
    try:
        sink = _open(args.db)
    except (ConfigError, ImportError) as exc:
        return _error(str(exc))
    from .alerts.dry_run import evaluation_times, replay

    try:
        evaluations = len(evaluation_times(start, end, args.step))
        # The app's own settle: its rollups are written every flush_interval.
        settle = SETTLE_SECONDS + flush_interval
        replays = replay(sink, rules, start=start, end=end, step=args.step, settle=settle)
    except ValueError as exc:
        return _error(str(exc))
    finally:
        sink.close()
    data = {
        "from": start, "to": end, "step": args.step, "evaluations": evaluations,
        "rules": [r.to_mapping() for r in replays],
    }  # fmt: skip
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        out.write(render(replays, start, end, args.step))
    return 0


def render(replays: Sequence[Any], start: float, end: float, step: float) -> str:
    """Per rule: whether it would fire now, and its firing periods as a table."""
    from .alerts_cli import _group, _time
    from .query_cli import table

    lines = [f"{_time(start)} .. {_time(end)}, every {step:g} s\n"]
    for item in replays:
        rule = item.rule
        lines.append(
            f"\n{rule.name}: {rule.input} {rule.operator} {rule.threshold:g} over "
            f"{rule.window:g} s" + (f", for {rule.for_:g} s" if rule.for_ else "")
            + (f", keep firing for {rule.keep_firing_for:g} s" if rule.keep_firing_for else "")
            + "\n"
        )  # fmt: skip
        if item.health:
            failed = f" ({item.failed} evaluation(s))" if item.failed else ""
            lines.append(f"  health: {item.health}{failed}\n")
        lines.append(f"  would fire now: {_now(item)}\n")
        if not item.periods:
            lines.append("  no firing periods\n")
            continue
        rows = [
            (_group(dict(p.group)) or "all", _time(p.start), _time(p.end) or "still firing",
             _lasted((end if p.end is None else p.end) - p.start))
            for p in item.periods
        ]  # fmt: skip
        text = table(("group", "from", "to", "lasted"), rows)
        lines.append("".join(f"  {line}\n" for line in text.splitlines()))
    return "".join(lines)


def _now(item: Any) -> str:
    def value(state: Any) -> str:
        return "no data" if state.value is None else f"{state.value:.4g}"

    def where(state: Any) -> str:
        group = ", ".join(f"{k}={v}" for k, v in state.group)
        return f"{group} ({value(state)})" if group else value(state)

    firing = item.firing_now
    if firing:
        return "yes: " + "; ".join(where(state) for state in firing)
    pending = [s for s in item.now if s.state == "pending"]
    if pending:
        return "no, pending: " + "; ".join(where(state) for state in pending)
    if not item.rule.group_by and item.now:
        return f"no ({value(item.now[0])})"
    return "no"


def _lasted(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (
        (f"{hours}h" if hours else "")
        + (f"{minutes}m" if minutes else "")
        + (f"{secs}s" if secs or not whole else "")
    )

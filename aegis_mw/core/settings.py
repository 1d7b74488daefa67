"""One validated settings object, and where its values come from.

Precedence: keyword arguments > ``AEGIS_*`` environment variables > a TOML or
YAML file named by ``AEGIS_CONFIG`` > defaults. Every value is checked here,
at start, and a bad one raises :class:`ConfigError` naming the option, the
value, where it came from and what is allowed.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import itertools
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .access_rules import AccessRule, parse_access
from .client_address import parse_networks, split_entries
from .config_file import load_config_file
from .errors import ConfigError
from .labeled import DEFAULT_BUCKETS

ENV_PREFIX = "AEGIS_"
CONFIG_ENV = "AEGIS_CONFIG"
DEFAULT_SINK = "sqlite:///aegis.db"


def _number(kind: type, low: float, high: float, *, low_open: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise TypeError
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError
        if value < low or value > high or (low_open and value == low):
            raise ValueError
        return kind(value)

    return check


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise TypeError
    return tuple(value)


def _glob_list(value: Any) -> tuple[str, ...]:
    patterns = _string_list(value)
    for pattern in patterns:
        if not pattern.startswith(("/", "*")):
            raise ValueError  # could never match a request path
        re.compile(fnmatch.translate(pattern))
    return patterns


def _cidr_list(value: Any) -> tuple[str, ...]:
    entries = _string_list(value)
    for network in parse_networks(split_entries(entries)[1]):
        if network.prefixlen == 0:
            warnings.warn(
                f"trusted_proxies includes {network}: every peer is trusted, so any client "
                "can set its own client_ip with a forwarded-for header",
                AegisConfigWarning,
                stacklevel=2,
            )
    return entries


#: The cloud metadata addresses (AWS, GCP, Azure; AWS over IPv6): a
#: channel that reaches them can read the host's cloud credentials.
_METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))


def _network_list(value: Any) -> tuple[str, ...]:
    entries = _string_list(value)
    for network in parse_networks(entries):  # ValueError for one not in CIDR form
        if network.prefixlen == 0 or any(
            address.version == network.version and address in network for address in _METADATA
        ):
            warnings.warn(
                f"alert_api_networks includes {network}: the API's alert channels can then "
                "reach every address of it, the cloud metadata service among them",
                AegisConfigWarning,
                stacklevel=2,
            )
    return entries


_TRUE_TEXT = frozenset({"1", "true", "yes", "on"})
_FALSE_TEXT = frozenset({"0", "false", "no", "off"})


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _bool_text(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE_TEXT:
        return True
    if lowered in _FALSE_TEXT:
        return False
    raise ValueError


_GLOB = frozenset("*?[")
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Label names our series use, or that Prometheus reserves.
_RESERVED_LABELS = frozenset(
    {"method", "route", "status", "close_code", "reason", "buffer", "sink", "check", "le",
     "quantile", "job", "instance", "state", "path", "metric"}
)  # fmt: skip


def _mount_path(value: Any) -> str:
    """A path the middleware answers itself; empty switches the route off."""
    if not isinstance(value, str):
        raise TypeError
    path: str = value.strip()
    if path and (not path.startswith("/") or _GLOB & set(path) or " " in path):
        raise ValueError
    return path


_TRACE_FIELD = re.compile(r"\{([^{}]*)\}")


def _trace_url(value: Any) -> str:
    """A link to a tracing UI: http(s), with {trace_id} (and maybe {span_id})."""
    if not isinstance(value, str):
        raise TypeError
    url: str = value.strip()
    if not url:
        return url
    fields = set(_TRACE_FIELD.findall(url))
    rest = _TRACE_FIELD.sub("", url)  # no brace may stand outside a placeholder
    if (
        not url.startswith(("http://", "https://"))
        or "trace_id" not in fields
        or not fields <= {"trace_id", "span_id"}
        or any(character in url for character in ' "<>\\`')
        or "{" in rest
        or "}" in rest
    ):
        raise ValueError
    return url


def _namespace(value: Any) -> str:
    if not isinstance(value, str) or not _METRIC_NAME.fullmatch(value):
        raise ValueError
    return value


def _constant_labels(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError
        value = {name.strip(): label.strip() for name, _, label in pairs}
    elif isinstance(value, (list, tuple)) and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in value
    ):
        value = dict(value)  # the checked form, ((name, value), ...)
    if not isinstance(value, Mapping):
        raise TypeError
    for name, label in value.items():
        if not isinstance(name, str) or not isinstance(label, str):
            raise TypeError
        if not _METRIC_NAME.fullmatch(name) or name.startswith("__") or name in _RESERVED_LABELS:
            raise ValueError
    return tuple(sorted(value.items()))


def _buckets(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [float(part) for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError
    bounds = []
    for bound in value:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise TypeError
        if not math.isfinite(bound) or bound <= 0:
            raise ValueError
        bounds.append(float(bound))
    if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise ValueError
    return tuple(bounds)


def _directory_text(value: Any) -> str:
    """Only the form here; whether it exists is checked where it is used."""
    if not isinstance(value, str):
        raise TypeError
    return value.strip()


def _registry(value: Any) -> Any:
    if isinstance(value, str):
        if value.lower() not in ("default", "none"):
            raise ValueError
        return value.lower()
    if value is None:
        return "none"
    if not callable(getattr(value, "collect", None)):
        raise TypeError
    return value


_LIVE_SCHEMES = ("redis", "rediss", "unix", "postgresql", "postgres")
_LIVE_GROUP = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _live_transport(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    text = value.strip()
    if text in ("", "sink"):
        return text
    scheme, separator, rest = text.partition("://")
    if not separator or scheme.lower() not in _LIVE_SCHEMES or not rest:
        raise ValueError
    return text


def _live_group(value: Any) -> str:
    if not isinstance(value, str) or not _LIVE_GROUP.fullmatch(value.strip()):
        raise ValueError
    return value.strip()


class _Explained(ValueError):
    """A check's own words about what is wrong (used instead of the generic text)."""


def _access(value: Any) -> tuple[tuple[str, AccessRule], ...]:
    try:
        return parse_access(value)
    except json.JSONDecodeError as exc:
        raise _Explained(f"AEGIS_ACCESS is not valid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise _Explained(str(exc)) from None


def _access_token(value: Any) -> str:
    # It travels in an Authorization header, a cookie and a URL: printable
    # ASCII without spaces or separators, and long enough not to be guessed.
    if not isinstance(value, str):
        raise TypeError
    if value and not re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,256}", value):
        raise ValueError
    return value


#: Options whose values an error message must never show.
_SECRET = ("access", "access_token", "alert_channels", "live_transport")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in allowed:
            raise ValueError
        return value.lower()

    return check


def _sinks(value: Any) -> tuple[Any, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    result: list[Any] = []
    for item in items:
        if isinstance(item, str):
            result.extend(part.strip() for part in item.split(",") if part.strip())
        elif callable(item) or (hasattr(item, "write") and hasattr(item, "close")):
            result.append(item)
        else:
            raise TypeError
    return tuple(result)


_HOOK_ALLOWED = "a callable, or 'module:name' naming one in text ('' for none)"
#: ``package.module:object.attribute``: imported when tracing is set up.
_HOOK_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _hook(value: object) -> Callable[..., Any] | str | None:
    if value is None or callable(value):
        return value
    if isinstance(value, str) and _HOOK_NAME.fullmatch(value):
        return value  # imported with the pipeline (server_spans.tracing_hooks)
    raise TypeError


def _hook_text(text: str) -> str | None:
    return text or None


@dataclass(frozen=True)
class _Rule:
    check: Callable[[Any], Any]
    allowed: str
    from_text: Callable[[str], Any] | None = None


def _float_text(text: str) -> float:
    return float(text)


def _int_text(text: str) -> int:
    return int(text.replace("_", ""))


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_text(text: str) -> float:
    """Seconds, or a number with a unit: '90d', '12h', '30m', '45s'."""
    unit = _DURATION_UNITS.get(text[-1:].lower())
    if unit is None:
        return float(text)
    return float(text[:-1]) * unit


_MOUNT_OPTIONS = (
    "metrics_path", "health_path", "liveness_path", "readiness_path", "api_path", "ws_path",
    "dashboard_path",
)  # fmt: skip
_ORIGIN = re.compile(r"https?://[^/\s?#@]+")


def _host(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(
        r"[A-Za-z0-9.:\-]+|\[[0-9A-Fa-f:.]+\]", value
    ):
        raise ValueError
    return value


def _origin_list(value: Any) -> tuple[str, ...]:
    """Browser origins (scheme, host and port, as the Origin header sends
    them), lower-cased, or '*' alone for any."""
    origins = tuple(origin.lower().rstrip("/") for origin in _string_list(value))
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError
    return origins


def _alert_rules(value: Any) -> tuple[Any, ...]:
    """Rules as objects or mappings (a settings file's ``[[alert_rules]]``
    tables), or JSON text of such a list (an environment variable)."""
    # Imported here: the alerts package imports the core.
    from ..alerts.rules import RuleError, rules_from_config

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise _Explained(f"JSON text of a list of rules ({exc})") from None
    try:
        return rules_from_config(value)
    except RuleError as exc:
        raise _Explained(str(exc)) from None
    except (TypeError, ValueError, OverflowError) as exc:  # a value no check foresaw
        raise _Explained(f"a list of valid rules ({type(exc).__name__}: {exc})") from None


def _policy_list(kind: str) -> Callable[[Any], tuple[Any, ...]]:
    """A list of mute windows or inhibit rules (objects, mappings, or JSON
    text of a list of mappings), each checked by aegis_mw.alerts.silences."""

    def check(value: Any) -> tuple[Any, ...]:
        from ..alerts import silences

        made, parse = {
            "mute window": (silences.MuteWindow, silences.mute_window_from_mapping),
            "inhibit rule": (silences.InhibitRule, silences.inhibit_rule_from_mapping),
        }[kind]
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise _Explained(f"JSON text of a list of {kind}s ({exc})") from None
        if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
            raise _Explained(f"a list of {kind}s")
        try:
            items = tuple(
                item if isinstance(item, made) else parse(item, f"[{index}]")
                for index, item in enumerate(value)
            )
        except ConfigError as exc:
            raise _Explained(str(exc)) from None
        return items

    return check


def _alert_channels(value: Any) -> Mapping[str, Any]:
    """Channel names to their settings, or JSON text of that mapping; each
    checked (and its secrets read) by aegis_mw.alerts.channels."""
    from ..alerts.channels import channels_from_config

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise _Explained(f"JSON text of a mapping of channels ({exc.msg})") from None
    try:
        return channels_from_config(value)
    except ConfigError as exc:
        raise _Explained(f"{exc.option}: {exc.allowed}") from None


_PATH_ALLOWED = "a path starting with '/' (no glob characters), or '' to switch the route off"

_RULES: dict[str, _Rule] = {
    "sink": _Rule(
        _sinks,
        "a sink URL (memory://, sqlite:///path, postgresql://..., jsonl:///path), "
        "a sink object, a callable taking a Batch, or a list of these",
    ),
    "flush_interval": _Rule(
        _number(float, 0, 3600, low_open=True), "seconds, > 0 and <= 3600", _float_text
    ),
    "batch_size": _Rule(_number(int, 1, 1_000_000), "an integer from 1 to 1000000", _int_text),
    "max_buffer": _Rule(_number(int, 1, 100_000_000), "an integer from 1 to 100000000", _int_text),
    "sink_timeout": _Rule(
        _number(float, 0, 3600, low_open=True), "seconds, > 0 and <= 3600", _float_text
    ),
    "shutdown_timeout": _Rule(_number(float, 0, 3600), "seconds, from 0 to 3600", _float_text),
    "retry_backoff_initial": _Rule(
        _number(float, 0, 3600, low_open=True), "seconds, > 0 and <= 3600", _float_text
    ),
    "retry_backoff_max": _Rule(
        _number(float, 0, 86400, low_open=True),
        "seconds, > 0, at least retry_backoff_initial",
        _float_text,
    ),
    "spool_dir": _Rule(
        _directory_text,
        "a directory on local disk for the spool of remote sinks ('' for none), created if missing",
    ),
    "spool_max_bytes": _Rule(
        _number(int, 1 << 20, 1 << 40),
        "bytes, an integer from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
        _int_text,
    ),
    "live_transport": _Rule(
        _live_transport,
        "'' (this host's processes only), a redis://, rediss:// or unix:// Redis URL, "
        "a postgresql:// URL, or 'sink' (the PostgreSQL sink's database)",
    ),
    "live_group": _Rule(
        _live_group, "1 to 64 letters, digits or _ . : - (the app's name on the live transport)"
    ),
    "sample_rate": _Rule(_number(float, 0, 1), "a number from 0 to 1", _float_text),
    "slow_threshold_ms": _Rule(_number(float, 0, 1e9), "milliseconds, >= 0", _float_text),
    "exclude_paths": _Rule(
        _glob_list, "a list of paths or globs starting with '/' or '*', such as '/static/*'"
    ),
    "trusted_proxies": _Rule(
        _cidr_list,
        "a list of IP networks in CIDR form such as '10.0.0.0/8', or 'unix' for "
        "connections over a Unix socket",
    ),
    "forwarded_header": _Rule(
        _choice("x-forwarded-for", "forwarded"), "'x-forwarded-for' or 'forwarded'"
    ),
    "max_routes": _Rule(_number(int, 1, 1_000_000), "an integer from 1 to 1000000", _int_text),
    "max_path_length": _Rule(_number(int, 16, 65536), "an integer from 16 to 65536", _int_text),
    "max_error_length": _Rule(_number(int, 16, 65536), "an integer from 16 to 65536", _int_text),
    "speedups": _Rule(_boolean, "true or false (1/0, yes/no, on/off in text)", _bool_text),
    "trace_context": _Rule(_boolean, "true or false (1/0, yes/no, on/off in text)", _bool_text),
    "tracing": _Rule(_boolean, "true or false (1/0, yes/no, on/off in text)", _bool_text),
    "tracing_request_hook": _Rule(_hook, _HOOK_ALLOWED, _hook_text),
    "tracing_response_hook": _Rule(_hook, _HOOK_ALLOWED, _hook_text),
    "trace_url": _Rule(
        _trace_url,
        "an http:// or https:// URL holding {trace_id} (and optionally {span_id}), such as "
        "'http://localhost:16686/trace/{trace_id}'; '' for none",
    ),
    "background_niceness": _Rule(
        _number(int, 0, 19), "an integer from 0 to 19 (0: the app's priority)", _int_text
    ),
    "health_cache_seconds": _Rule(
        _number(float, 0, 3600),
        "seconds, from 0 to 3600 (0: run the checks every probe)",
        _float_text,
    ),
    "liveness_max_loop_lag": _Rule(
        _number(float, 0, 3600, low_open=True), "seconds, > 0 and <= 3600", _float_text
    ),
    "read_timeout": _Rule(
        _number(float, 0, 60, low_open=True), "seconds, > 0 and <= 60", _float_text
    ),
    "read_retry_after": _Rule(
        _number(float, 0, 3600, low_open=True), "seconds, > 0 and <= 3600", _float_text
    ),
    "access": _Rule(_access, "route groups mapped to rules or 'open' (see docs/access-control.md)"),
    "access_token": _Rule(
        _access_token,
        "16 to 256 characters of letters, digits and . _ ~ + / = - ('' to generate one)",
    ),
    "access_token_file": _Rule(
        _directory_text,
        "a file path ('' for the default: beside the SQLite or JSONL file of the sink)",
    ),
    "alert_rules": _Rule(
        _alert_rules,
        "a list of alert rules (AlertRule objects or mappings, see docs/alerts.md)",
    ),
    "alert_channels": _Rule(
        _alert_channels,
        "a mapping of channel names to their settings (see docs/alerts.md)",
    ),
    "alert_interval": _Rule(_number(float, 1, 3600), "seconds, from 1 to 3600", _duration_text),
    "alerts_enabled": _Rule(_boolean, "true or false (1/0, yes/no, on/off in text)", _bool_text),
    "alert_incidents": _Rule(_boolean, "true or false (1/0, yes/no, on/off in text)", _bool_text),
    "alert_readiness_inhibits": _Rule(
        _boolean, "true or false (1/0, yes/no, on/off in text)", _bool_text
    ),
    "alert_api_networks": _Rule(
        _network_list,
        "a list of IP networks in CIDR form such as '10.0.0.0/8' that the API's alert "
        "channels may send to",
    ),
    "alert_mute_windows": _Rule(
        _policy_list("mute window"), "a list of mute windows (see docs/alerts.md)"
    ),
    "alert_inhibit_rules": _Rule(
        _policy_list("inhibit rule"), "a list of inhibit rules (see docs/alerts.md)"
    ),
    "metrics_path": _Rule(_mount_path, _PATH_ALLOWED),
    "api_path": _Rule(_mount_path, _PATH_ALLOWED),
    "ws_path": _Rule(_mount_path, _PATH_ALLOWED),
    "dashboard_path": _Rule(_mount_path, _PATH_ALLOWED),
    "ws_host": _Rule(_host, "a host name or IP address to listen on, such as '127.0.0.1'"),
    "ws_port": _Rule(
        _number(int, 0, 65535), "a TCP port from 1 to 65535, or 0 for none", _int_text
    ),
    "update_interval": _Rule(
        _number(int, 100, 60_000), "milliseconds, an integer from 100 to 60000", _int_text
    ),
    "ws_allowed_origins": _Rule(
        _origin_list,
        "a list of origins such as 'https://admin.example.com' (scheme://host[:port]), or '*'",
    ),
    "ws_max_message_bytes": _Rule(
        _number(int, 256, 16 * 1024 * 1024), "bytes, an integer from 256 to 16777216", _int_text
    ),
    "ws_max_connections_per_client": _Rule(
        _number(int, 1, 100_000), "an integer from 1 to 100000", _int_text
    ),
    "ws_max_connections": _Rule(
        _number(int, 1, 1_000_000), "an integer from 1 to 1000000", _int_text
    ),
    "ws_message_rate": _Rule(
        _number(float, 0, 10_000, low_open=True),
        "messages per second, > 0 and <= 10000 (bursts of twice that allowed)",
        _float_text,
    ),
    "ws_stall_timeout": _Rule(
        _number(float, 0, 3600, low_open=True), "seconds, > 0 and <= 3600", _float_text
    ),
    "retention_raw": _Rule(
        _number(float, 3600, 3650 * 86400),
        "a duration from 1 hour to 10 years: seconds, or text such as '7d', '36h'",
        _duration_text,
    ),
    "retention_rollups": _Rule(
        _number(float, 3600, 3650 * 86400),
        "a duration from 1 hour to 10 years, at least retention_raw: seconds, or '90d'",
        _duration_text,
    ),
    "health_path": _Rule(_mount_path, _PATH_ALLOWED),
    "liveness_path": _Rule(_mount_path, _PATH_ALLOWED),
    "readiness_path": _Rule(_mount_path, _PATH_ALLOWED),
    "metrics_namespace": _Rule(_namespace, "a metric name prefix such as 'aegis' or 'shop_api'"),
    "metrics_labels": _Rule(
        _constant_labels,
        "label names and values such as {'service': 'api'} or 'service=api,env=prod' "
        "(names valid in Prometheus, not reserved, not one of ours)",
    ),
    "metrics_buckets": _Rule(
        _buckets, "histogram bounds in seconds, positive and increasing, such as '0.1,0.5,1'"
    ),
    "metrics_multiprocess_dir": _Rule(
        _directory_text,
        "a directory shared by the worker processes ('' to read PROMETHEUS_MULTIPROC_DIR)",
    ),
    "metrics_system": _Rule(
        _boolean,
        "true or false (1/0, yes/no, on/off in text); true needs the system extra",
        _bool_text,
    ),
    "metrics_disk_path": _Rule(_directory_text, "a path whose file system /metrics reports"),
    "metrics_exemplars": _Rule(_boolean, "true or false (1/0, yes/no, on/off in text)", _bool_text),
    "metrics_registry": _Rule(
        _registry,
        "'default' (prometheus-client's registry), 'none', or a CollectorRegistry",
    ),
}


@dataclass(frozen=True)
class AegisSettings:
    """Every option of the pipeline, validated on construction.

    Build one directly for full control, or let :meth:`load` (used by
    ``Aegis(**options)``) merge keyword arguments, the environment and a file::

        settings = AegisSettings(sink="sqlite:///var/lib/app/aegis.db", sample_rate=0.1)
    """

    sink: Any = DEFAULT_SINK
    flush_interval: float = 1.0
    batch_size: int = 5000
    max_buffer: int = 100_000
    sink_timeout: float = 5.0
    shutdown_timeout: float = 10.0
    retry_backoff_initial: float = 1.0
    retry_backoff_max: float = 30.0
    #: Where remote sinks (PostgreSQL) keep batches while their store is
    #: unreachable, replayed when it returns (docs/deployment.md); '' for none.
    spool_dir: str = ""
    #: The most the spooled batches take, all sinks together (the file adds
    #: SQLite's pages and log to that).
    spool_max_bytes: int = 256 * 1024 * 1024
    #: How the live figures travel between the app's hosts (docs/deployment.md):
    #: '' for one host (the processes of a metrics directory), a Redis URL,
    #: a PostgreSQL URL, or 'sink' for the PostgreSQL sink's database.
    live_transport: str = ""
    #: The app's name on the live transport: apps sharing a Redis server or a
    #: database keep their live figures apart by it.
    live_group: str = "default"
    sample_rate: float = 1.0
    slow_threshold_ms: float = 1000.0
    exclude_paths: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    forwarded_header: str = "x-forwarded-for"
    max_routes: int = 1000
    max_path_length: int = 512
    max_error_length: int = 1024
    #: Use the compiled HTTP request path where it was built; False forces
    #: the pure-Python one (same records, slower).
    speedups: bool = True
    #: Record each request's and WebSocket session's trace and span ids:
    #: OpenTelemetry's current span where it traces the app, else a valid
    #: incoming W3C traceparent header (docs/opentelemetry.md).
    trace_context: bool = True
    #: The dashboard links trace ids here: {trace_id} and {span_id} are
    #: replaced ('' shows the ids without a link).
    trace_url: str = ""
    #: Make a server span for each HTTP request (ASGI, WSGI, Django) with
    #: OpenTelemetry's instrumentation, named by the route template (the
    #: tracing extra; the OTEL_* variables set the exporter): docs/opentelemetry.md.
    tracing: bool = False
    #: With ``tracing``: called with each traced request's server span as it
    #: starts, and the request (ASGI: ``(span, scope)``; WSGI: ``(span,
    #: environ)``; Django: ``(span, request)``), as OpenTelemetry's
    #: instrumentation of each calls its own; ``module:name`` in text.
    tracing_request_hook: Any = None
    #: With ``tracing``: called with the server span once the response starts
    #: (ASGI: ``(span, scope, message)``; WSGI: ``(span, environ, status,
    #: headers)``; Django: ``(span, request, response)``). A hook that raises
    #: fails nothing: the exception is recorded on the span.
    tracing_response_hook: Any = None
    #: Nice levels the pipeline's threads run below the app's (Linux); 0 keeps
    #: them at the app's priority.
    background_niceness: int = 5
    access: Any = field(default=(), repr=False)  # holds secrets: kept out of repr
    #: What opens the JSON API, the dashboard and the stream when they have no
    #: access rule of their own; generated (and kept in access_token_file) if ''.
    access_token: str = field(default="", repr=False)
    #: Where a generated access token is kept, shared by the app's workers.
    access_token_file: str = ""
    #: Alert rules over the stored rollups (docs/alerts.md); one process of
    #: the app evaluates them every alert_interval seconds.
    alert_rules: Any = ()
    #: Where alert notices go: channel names to their settings (secrets by
    #: reference; kept out of repr).
    alert_channels: Any = field(default_factory=dict, repr=False)
    alert_interval: float = 10.0
    #: Run the alert service with no rule or channel in the settings (rules
    #: then come through the API, notices go to the aegis_mw.alerts log);
    #: rules or channels in the settings switch it on anyway.
    alerts_enabled: bool = False
    #: Open an incident when an alert starts firing (one per rule while it is
    #: active; later firings of the rule attach to it): docs/incidents.md.
    alert_incidents: bool = False
    #: The built-in aegis_readiness_failing alert, which holds back the error
    #: and latency alerts' firings (its symptoms) while it fires.
    alert_readiness_inhibits: bool = True
    #: Networks (CIDR) the alert channels written through the API may send
    #: to although they are not public; none by default (docs/alerts.md).
    alert_api_networks: tuple[str, ...] = ()
    #: Recurring times (in a time zone) when the channels that name them are
    #: not told of firings (docs/alerts.md, "Silences").
    alert_mute_windows: Any = ()
    #: Alerts that mute others while they fire (a critical one its route's warnings).
    alert_inhibit_rules: Any = ()
    metrics_path: str = "/metrics"
    #: Prefix of the JSON metrics API (``/api/metrics/overview`` and the rest).
    api_path: str = "/api/metrics"
    #: The realtime WebSocket (docs/realtime-protocol.md).
    ws_path: str = "/ws/metrics"
    #: The live dashboard page.
    dashboard_path: str = "/dashboard"
    #: WSGI apps only (a WSGI server speaks no WebSocket): where a server
    #: thread of the process serves ws_path; port 0 for none.
    ws_host: str = "127.0.0.1"
    ws_port: int = 0
    #: Milliseconds between realtime frames.
    update_interval: int = 1000
    #: Origins, besides the app's own host, whose pages may open ws_path.
    ws_allowed_origins: tuple[str, ...] = ()
    ws_max_message_bytes: int = 65536
    ws_max_connections_per_client: int = 10
    ws_max_connections: int = 1000
    #: Client messages per second on one connection (bursts of twice that).
    ws_message_rate: float = 10.0
    #: A client whose frames have not been taken for this long is closed.
    ws_stall_timeout: float = 10.0
    #: How long stored requests (and the finest rollups) are kept, in seconds.
    retention_raw: float = 7 * 86400.0
    #: How long minute and hour rollups are kept, in seconds.
    retention_rollups: float = 90 * 86400.0
    health_path: str = "/health"
    liveness_path: str = "/health/live"
    readiness_path: str = "/health/ready"
    health_cache_seconds: float = 1.0
    liveness_max_loop_lag: float = 5.0
    #: How long a history read (JSON API, /ws/metrics ``get``) waits for the
    #: store: a connection from the pool, or a lock of an SQLite file.
    read_timeout: float = 2.0
    #: Once the store cannot be read, reads answer 503 at once for this long,
    #: then one read tries the store again.
    read_retry_after: float = 5.0
    metrics_namespace: str = "aegis"
    metrics_labels: Any = ()
    metrics_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    metrics_registry: Any = "default"
    metrics_multiprocess_dir: str = ""
    metrics_system: bool = False
    metrics_disk_path: str = "."
    #: Traced requests' trace ids as exemplars on the request counter and the
    #: duration histogram's buckets, in the OpenMetrics format of /metrics.
    metrics_exemplars: bool = True
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for option, rule in _RULES.items():
            value = getattr(self, option)
            source = self.sources.get(option, "")
            if isinstance(value, str) and rule.from_text is not None:
                try:
                    value = rule.from_text(value.strip())
                except ValueError:
                    raise ConfigError(option, value, rule.allowed, source) from None
            try:
                checked = rule.check(value)
            except _Explained as exc:
                # The access rules hold tokens and passwords: never echo them.
                shown = "(not shown: it holds secrets)" if option in _SECRET else value
                raise ConfigError(option, shown, str(exc), source) from None
            except (TypeError, ValueError):
                shown = "(not shown: it is a secret)" if option in _SECRET else value
                raise ConfigError(option, shown, rule.allowed, source) from None
            object.__setattr__(self, option, checked)
        mounted = [(name, getattr(self, name)) for name in _MOUNT_OPTIONS]
        seen: dict[str, str] = {}
        for name, path in mounted:
            if path and path in seen:
                raise ConfigError(
                    name, path, f"a path of its own ({seen[path]} is {path!r} too)",
                    self.sources.get(name, ""),
                )  # fmt: skip
            seen[path] = name
        if self.retention_rollups < self.retention_raw:
            raise ConfigError(
                "retention_rollups",
                self.retention_rollups,
                f"must be at least retention_raw ({self.retention_raw:g} s)",
                self.sources.get("retention_rollups", ""),
            )
        if self.retry_backoff_max < self.retry_backoff_initial:
            raise ConfigError(
                "retry_backoff_max",
                self.retry_backoff_max,
                f"must be at least retry_backoff_initial ({self.retry_backoff_initial})",
                self.sources.get("retry_backoff_max", ""),
            )

    def replace(self, **changes: Any) -> AegisSettings:
        """A copy with some options changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "sources"]

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        sourced: Mapping[str, tuple[Any, str]] | None = None,
        **options: Any,
    ) -> AegisSettings:
        """Merge ``options`` over ``sourced`` over ``AEGIS_*`` variables over the
        ``AEGIS_CONFIG`` file over defaults. ``environ`` defaults to
        ``os.environ``. ``sourced`` maps an option to its value and where the
        user wrote it (a framework's config key, say), which errors then name.
        """
        if environ is None:
            import os

            environ = os.environ
        known = cls.option_names()
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}

        path = environ.get(CONFIG_ENV)
        if path:
            for key, value in load_config_file(path).items():
                _require_known(key, known, f"{path}")
                values[key] = value
                sources[key] = f"{path}"
        for name, value in environ.items():
            if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
                continue
            key = name[len(ENV_PREFIX) :].lower()
            if key not in known:
                # "AEGIS" is a common word: another program's variable must not
                # stop the app, but a misspelt option should not pass unseen.
                warnings.warn(
                    f"{name} is not an aegis_mw option and is ignored{_hint(key, known)}",
                    AegisConfigWarning,
                    stacklevel=3,
                )
                continue
            values[key] = value
            sources[key] = name
        for key, (value, source) in (sourced or {}).items():
            _require_known(key, known, source)
            values[key] = value
            sources[key] = source
        for key, value in options.items():
            _require_known(key, known, "keyword arguments")
            values[key] = value
            sources[key] = "keyword argument"
        return cls(**values, sources=sources)


class AegisConfigWarning(UserWarning):
    """An ``AEGIS_*`` environment variable that is not an option (ignored)."""


def _hint(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _require_known(key: str, known: list[str], where: str) -> None:
    if key in known:
        return
    hint = _hint(key, known)
    raise ConfigError(
        key, "(unknown option)", f"not an aegis_mw option{hint} Known: {', '.join(known)}", where
    )

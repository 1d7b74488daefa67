"""MkDocs hook: the configuration reference, generated from the settings object.

``docs/configuration.md`` holds the marker below; this hook replaces it with one row per
option of ``AegisSettings``: its name and ``AEGIS_*`` variable, its default (read from the
dataclass) and what is allowed (the validator's own words, the text a ``ConfigError`` shows). So the
page lists exactly the options the code accepts. What each option does is written here, in
``DESCRIPTIONS``; an option without one fails the strict build, so a new option cannot ship
undocumented.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from mkdocs.exceptions import PluginError

from aegis_mw.core import settings as _settings

MARKER = "<!-- aegis:options -->"
PAGE = "configuration.md"

log = logging.getLogger("mkdocs.plugins.aegis_options")

#: What each option does, in a sentence or two, with a link to where it is explained.
DESCRIPTIONS: dict[str, str] = {
    "sink": "Where records go: one sink or a list ([Sinks](sinks.md)).",
    "flush_interval": "Seconds between flushes of the inbox to the sinks.",
    "batch_size": (
        "Flush as soon as this many records wait; also the write chunk (a database stores "
        "more records a second in fewer, larger transactions)."
    ),
    "max_buffer": "Bound of the inbox and of each sink's backlog.",
    "sink_timeout": "Seconds before a hanging write is abandoned.",
    "shutdown_timeout": "Seconds shutdown may spend writing what is left.",
    "retry_backoff_initial": "First wait after a sink failure (doubling, ±10% jitter).",
    "retry_backoff_max": "Longest wait between retries of a failing sink.",
    "spool_dir": "Where a remote sink's batches are kept on local disk while its store is "
    "unreachable, and replayed from when it returns "
    "([the spool](deployment.md#when-the-store-goes-away-the-spool)); `''` for none.",
    "spool_max_bytes": "The most the spool holds, every sink's batches together; a batch "
    "that finds no room stays in the sink's backlog in memory.",
    "live_transport": "How the live views' figures travel between the app's hosts "
    "([several hosts](deployment.md#several-hosts-the-live-transport)): `''` for one host, "
    "a `redis://` URL, a `postgresql://` URL, or `sink` for the PostgreSQL sink's database.",
    "live_group": "The app's name on the live transport: apps sharing one Redis server or "
    "database keep their live figures apart by it.",
    "sample_rate": (
        "Share of ordinary requests kept in the stored log; errors (5xx or an exception) and "
        "requests slower than `slow_threshold_ms` are always kept; sampling never thins the "
        "realtime figures, the rollups or the OTLP sink's counts."
    ),
    "slow_threshold_ms": "Requests at least this slow are always stored, whatever `sample_rate`.",
    "exclude_paths": "Paths or globs (`/static/*`) that pass straight through, never recorded.",
    "trusted_proxies": (
        "Networks whose forwarded-for header is believed, and `unix` for a proxy on a Unix "
        "socket; a `/0` network draws a warning (every client could then choose its address). "
        "[Behind a reverse proxy](deployment.md#behind-a-reverse-proxy)."
    ),
    "forwarded_header": (
        "Which header a trusted proxy writes: `X-Forwarded-For` or RFC 7239 `Forwarded`."
    ),
    "max_routes": "Distinct route values kept before the rest fold into `<overflow>`.",
    "max_path_length": "Stored paths are cut to this many characters.",
    "max_error_length": "Stored error messages are cut to this many characters.",
    "speedups": (
        "Use the compiled request path where it was built; `false` runs the pure-Python one "
        "(same records, slower). [How it works](how-it-works.md#compiled-where-it-can-be)."
    ),
    "trace_context": (
        "Record each request's and WebSocket session's `trace_id` and `span_id`: "
        "OpenTelemetry's current span where it traces the app, else a valid incoming W3C "
        "`traceparent` header ([With OpenTelemetry](opentelemetry.md))."
    ),
    "trace_url": (
        "Where the dashboard links a trace id, `{trace_id}` and `{span_id}` replaced, such as "
        "`http://localhost:16686/trace/{trace_id}` for Jaeger; empty shows the ids unlinked."
    ),
    "tracing": (
        "Make a server span for each HTTP request (ASGI apps, WSGI apps and Django) with "
        "OpenTelemetry's instrumentation, named by the route template, none for our routes or "
        "`exclude_paths` (the `tracing` extra; the `OTEL_*` variables choose the exporter) "
        "([With OpenTelemetry](opentelemetry.md#tracing-true-spans-for-an-app-with-none))."
    ),
    "tracing_request_hook": (
        "With `tracing`: called with each traced request's server span as it starts, and the "
        "request: `(span, scope)` under ASGI, `(span, environ)` under WSGI, `(span, request)` "
        "under Django, as OpenTelemetry's instrumentation of each calls its own; `module:name` "
        "in text, imported when the pipeline is built with `tracing` on "
        "([Hooks](opentelemetry.md#hooks-attributes-of-your-own))."
    ),
    "tracing_response_hook": (
        "With `tracing`: called with the server span once the response starts: `(span, scope, "
        "message)` under ASGI (the `http.response.start` message, a WebSocket's accept or "
        "close), `(span, environ, status, headers)` under WSGI, `(span, request, response)` "
        "under Django; a hook that raises fails nothing (the exception is recorded on the span)."
    ),
    "background_niceness": (
        "Linux: how many nice levels below the app the flusher's and the sinks' threads run, "
        "so background work waits for the event loop's idle moments instead of preempting it; "
        "`0` keeps them at the app's priority. Threads and processes started from those "
        "threads (by a sink of yours, say) inherit the level "
        "([How it works](how-it-works.md#the-flusher))."
    ),
    "access": "Rules per route group ([Access control](access-control.md)).",
    "access_token": (
        "The app's access token, accepted by the `api`, `dashboard` and `websocket` groups "
        "when they have no rule of their own; generated when not set "
        "([Access control](access-control.md#the-access-token))."
    ),
    "access_token_file": (
        "Where a generated access token is kept (created 0600, shared by every worker of the "
        "app on the host)."
    ),
    "alert_rules": (
        "Alert rules over the stored rollups, evaluated by one process of the app "
        "([Alerts](alerts.md)); from a settings file as `[[alert_rules]]` tables, from "
        "`AEGIS_ALERT_RULES` as JSON text."
    ),
    "alert_channels": (
        "Where alert notices go: channel names to their settings, secrets by reference "
        "([Alerts](alerts.md#channels)); from `AEGIS_ALERT_CHANNELS` as JSON text."
    ),
    "alert_interval": "Seconds between evaluations of the alert rules ([Alerts](alerts.md)).",
    "alert_api_networks": (
        "IP networks (CIDR) the alert channels written through the API may send to although "
        "they are not public; none by default ([Alerts](alerts.md#channels-through-the-api))."
    ),
    "alert_readiness_inhibits": (
        "The built-in `aegis_readiness_failing` alert, which holds back the firings of the "
        "error and latency alerts while it fires ([Alerts](alerts.md#health-and-the-pipeline))."
    ),
    "alerts_enabled": (
        "Run the alert service with no `alert_rules` or `alert_channels` in the settings, for "
        "rules written through the API ([Alerts](alerts.md#writing-through-the-api)); rules "
        "or channels switch it on anyway."
    ),
    "alert_incidents": (
        "Open an incident when an alert starts firing, under the correlation key "
        "`alert:<rule>`: one active incident per rule, later firings attach to it "
        "([Incidents](incidents.md#from-alerts)). Needs a sink that keeps history."
    ),
    "alert_mute_windows": (
        "Recurring local times (in an IANA time zone) when the channels naming them in "
        "`mute_windows` are not told of firings "
        "([Alerts](alerts.md#silences-mute-windows-and-inhibition)); `[[alert_mute_windows]]` "
        "tables, or JSON text in `AEGIS_ALERT_MUTE_WINDOWS`."
    ),
    "alert_inhibit_rules": (
        "Alerts that hold back the notices of others while they fire (source and target "
        "matchers, `equal` labels) ([Alerts](alerts.md#silences-mute-windows-and-inhibition)); "
        "`[[alert_inhibit_rules]]` tables, or JSON text in `AEGIS_ALERT_INHIBIT_RULES`."
    ),
    "metrics_path": "The Prometheus route, served by the middleware ([/metrics](metrics.md)).",
    "api_path": "Prefix of the JSON metrics API ([History API](history.md)).",
    "ws_path": (
        "The realtime WebSocket; without it the dashboard polls `/api/metrics/realtime` "
        "([Live dashboard and stream](realtime.md))."
    ),
    "dashboard_path": "The live dashboard page.",
    "ws_host": "WSGI apps only: the address the `/ws/metrics` server thread listens on.",
    "ws_port": (
        "WSGI apps only: the port of the `/ws/metrics` server thread (`0`: none; the page "
        "polls). [Any WSGI app](frameworks/asgi-wsgi.md#any-wsgi-app)."
    ),
    "update_interval": "Milliseconds between realtime frames.",
    "ws_allowed_origins": (
        "Origins besides the app's own host whose pages may open the stream "
        "(`https://admin.example.com`, or `*`)."
    ),
    "ws_max_message_bytes": "Size limit of a client's message (then close 1009).",
    "ws_max_connections_per_client": "Realtime connections per client address (then close 1008).",
    "ws_max_connections": "Realtime connections in total (then close 1013).",
    "ws_message_rate": (
        "Client messages per second on one connection, bursts of twice that (then close 1008)."
    ),
    "ws_stall_timeout": (
        "Seconds a client's acknowledgement may stand still while messages are outstanding "
        "(or a send may block) before it is closed."
    ),
    "retention_raw": (
        "How long records (and the 5-second and minute rollups) are kept "
        "([Retention](history.md#retention))."
    ),
    "retention_rollups": "How long 5-minute and hourly rollups are kept.",
    "health_path": "The full health report ([Health checks](health.md)).",
    "liveness_path": "The liveness probe.",
    "readiness_path": "The readiness probe.",
    "health_cache_seconds": "How long check results are reused (`0`: every probe runs them).",
    "liveness_max_loop_lag": "Seconds of event-loop lag beyond which liveness fails.",
    "read_timeout": (
        "Seconds a history read (JSON API, `/ws/metrics` `get`) waits for the store: a "
        "PostgreSQL pool connection (then as long again for its check), or an SQLite lock."
    ),
    "read_retry_after": (
        "Once the store cannot be read, history reads answer 503 at once for this long, then "
        "one read tries it again."
    ),
    "metrics_namespace": "Prefix of our series (`shop` gives `shop_http_requests_total`).",
    "metrics_labels": "Constant labels on every series.",
    "metrics_buckets": "Bounds of the latency histograms, in seconds.",
    "metrics_registry": (
        "The app's prometheus-client registry, shown after ours "
        "([The app's own metrics](metrics.md#the-apps-own-metrics))."
    ),
    "metrics_multiprocess_dir": (
        "Where worker processes share their figures; empty reads `PROMETHEUS_MULTIPROC_DIR` "
        "([Several worker processes](metrics.md#several-worker-processes))."
    ),
    "metrics_system": "Machine CPU, memory and disk figures on `/metrics` (the `system` extra).",
    "metrics_disk_path": "The path whose file system `metrics_system` reports.",
    "metrics_exemplars": "Traced requests' ids as exemplars on `/metrics` (OpenMetrics only).",
}

#: Wording of the validators that points elsewhere, pointed at the page instead.
_SEE_DOCS = "(see docs/access-control.md)"


def _default(field: dataclasses.Field[Any], rule: Any) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:  # pragma: no cover - every option has a default
        return ""
    if value == () or value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
        return "`" + ",".join(f"{v:g}" for v in value) + "`"
    if isinstance(value, float):
        if rule is not None and rule.from_text is _settings._duration_text:
            days = value / 86400
            if days.is_integer():
                return f"`{int(days)}d`"
        if math.isfinite(value):
            return f"`{value:g}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _plain(text: str) -> str:
    """The validator's words as literal text: its globs and names are not Markdown."""
    for char in "\\`*_[]":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;")


def options_table() -> str:
    """The Markdown table of every option, in the settings object's order."""
    rows = [
        "| option<br>environment variable | default | allowed | what it does |",
        "| --- | --- | --- | --- |",
    ]
    by_name = {f.name: f for f in dataclasses.fields(_settings.AegisSettings)}
    for name in _settings.AegisSettings.option_names():
        rule = _settings._RULES.get(name)
        allowed = _plain(rule.allowed if rule is not None else "")
        allowed = allowed.replace(_SEE_DOCS, "(see [Access control](access-control.md))")
        description = DESCRIPTIONS.get(name)
        if description is None:
            log.warning(
                "configuration reference: option %r has no description; add one to "
                "DESCRIPTIONS in docs/hooks/options.py",
                name,
            )
            description = ""
        env = f"{_settings.ENV_PREFIX}{name.upper()}"
        rows.append(
            f'| <span id="{name}"></span>`{name}`<br>`{env}` | '
            f"{_cell(_default(by_name[name], rule))} | {_cell(allowed)} | {_cell(description)} |"
        )
    # A class for the page's style sheet (docs/css/extra.css); md_in_html renders the inside.
    return '<div class="aegis-options" markdown>\n\n' + "\n".join(rows) + "\n\n</div>\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        if page.file.src_uri == PAGE:
            raise PluginError(f"{PAGE} lost its marker {MARKER}: the options table has no place")
        return markdown
    return markdown.replace(MARKER, options_table())

"""Expected values and helpers shared by the settings tests."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aegis_mw import ConfigError
from aegis_mw.core.labeled import DEFAULT_BUCKETS

OPTION_NAMES = [
    "sink",
    "flush_interval",
    "batch_size",
    "max_buffer",
    "sink_timeout",
    "shutdown_timeout",
    "retry_backoff_initial",
    "retry_backoff_max",
    "spool_dir",
    "spool_max_bytes",
    "live_transport",
    "live_group",
    "sample_rate",
    "slow_threshold_ms",
    "exclude_paths",
    "trusted_proxies",
    "forwarded_header",
    "max_routes",
    "max_path_length",
    "max_error_length",
    "speedups",
    "trace_context",
    "trace_url",
    "tracing",
    "tracing_request_hook",
    "tracing_response_hook",
    "background_niceness",
    "access",
    "access_token",
    "access_token_file",
    "alert_rules",
    "alert_channels",
    "alert_interval",
    "alerts_enabled",
    "alert_incidents",
    "alert_readiness_inhibits",
    "alert_api_networks",
    "alert_mute_windows",
    "alert_inhibit_rules",
    "metrics_path",
    "api_path",
    "ws_path",
    "dashboard_path",
    "ws_host",
    "ws_port",
    "update_interval",
    "ws_allowed_origins",
    "ws_max_message_bytes",
    "ws_max_connections_per_client",
    "ws_max_connections",
    "ws_message_rate",
    "ws_stall_timeout",
    "retention_raw",
    "retention_rollups",
    "health_path",
    "liveness_path",
    "readiness_path",
    "health_cache_seconds",
    "liveness_max_loop_lag",
    "read_timeout",
    "read_retry_after",
    "metrics_namespace",
    "metrics_labels",
    "metrics_buckets",
    "metrics_registry",
    "metrics_multiprocess_dir",
    "metrics_system",
    "metrics_disk_path",
    "metrics_exemplars",
]

DEFAULTS: dict[str, Any] = {
    "sink": ("sqlite:///aegis.db",),
    "flush_interval": 1.0,
    "batch_size": 5000,
    "max_buffer": 100_000,
    "sink_timeout": 5.0,
    "shutdown_timeout": 10.0,
    "retry_backoff_initial": 1.0,
    "retry_backoff_max": 30.0,
    "spool_dir": "",
    "spool_max_bytes": 256 * 1024 * 1024,
    "live_transport": "",
    "live_group": "default",
    "sample_rate": 1.0,
    "slow_threshold_ms": 1000.0,
    "exclude_paths": (),
    "trusted_proxies": (),
    "forwarded_header": "x-forwarded-for",
    "max_routes": 1000,
    "max_path_length": 512,
    "max_error_length": 1024,
    "speedups": True,
    "trace_context": True,
    "trace_url": "",
    "tracing": False,
    "tracing_request_hook": None,
    "tracing_response_hook": None,
    "background_niceness": 5,
    "access": (),
    "access_token": "",
    "access_token_file": "",
    "alert_rules": (),
    "alert_channels": {},
    "alert_interval": 10.0,
    "alerts_enabled": False,
    "alert_incidents": False,
    "alert_readiness_inhibits": True,
    "alert_api_networks": (),
    "alert_mute_windows": (),
    "alert_inhibit_rules": (),
    "health_cache_seconds": 1.0,
    "liveness_max_loop_lag": 5.0,
    "read_timeout": 2.0,
    "read_retry_after": 5.0,
    "metrics_path": "/metrics",
    "api_path": "/api/metrics",
    "ws_path": "/ws/metrics",
    "dashboard_path": "/dashboard",
    "ws_host": "127.0.0.1",
    "ws_port": 0,
    "update_interval": 1000,
    "ws_allowed_origins": (),
    "ws_max_message_bytes": 65536,
    "ws_max_connections_per_client": 10,
    "ws_max_connections": 1000,
    "ws_message_rate": 10.0,
    "ws_stall_timeout": 10.0,
    "retention_raw": 7 * 86400.0,
    "retention_rollups": 90 * 86400.0,
    "health_path": "/health",
    "liveness_path": "/health/live",
    "readiness_path": "/health/ready",
    "metrics_namespace": "aegis",
    "metrics_labels": (),
    "metrics_buckets": DEFAULT_BUCKETS,
    "metrics_registry": "default",
    "metrics_multiprocess_dir": "",
    "metrics_system": False,
    "metrics_disk_path": ".",
    "metrics_exemplars": True,
}

PATH_ALLOWED = "a path starting with '/' (no glob characters), or '' to switch the route off"

# What each option accepts, as the error message words it.
ALLOWED: dict[str, str] = {
    "sink": "a sink URL (memory://, sqlite:///path, postgresql://..., jsonl:///path), "
    "a sink object, "
    "a callable taking a Batch, or a list of these",
    "flush_interval": "seconds, > 0 and <= 3600",
    "batch_size": "an integer from 1 to 1000000",
    "max_buffer": "an integer from 1 to 100000000",
    "sink_timeout": "seconds, > 0 and <= 3600",
    "shutdown_timeout": "seconds, from 0 to 3600",
    "retry_backoff_initial": "seconds, > 0 and <= 3600",
    "retry_backoff_max": "seconds, > 0, at least retry_backoff_initial",
    "spool_dir": "a directory on local disk for the spool of remote sinks ('' for none), "
    "created if missing",
    "spool_max_bytes": "bytes, an integer from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
    "live_transport": "'' (this host's processes only), a redis://, rediss:// or unix:// Redis "
    "URL, a postgresql:// URL, or 'sink' (the PostgreSQL sink's database)",
    "live_group": "1 to 64 letters, digits or _ . : - (the app's name on the live transport)",
    "sample_rate": "a number from 0 to 1",
    "slow_threshold_ms": "milliseconds, >= 0",
    "exclude_paths": "a list of paths or globs starting with '/' or '*', such as '/static/*'",
    "trusted_proxies": (
        "a list of IP networks in CIDR form such as '10.0.0.0/8', or 'unix' for connections "
        "over a Unix socket"
    ),
    "forwarded_header": "'x-forwarded-for' or 'forwarded'",
    "max_routes": "an integer from 1 to 1000000",
    "max_path_length": "an integer from 16 to 65536",
    "max_error_length": "an integer from 16 to 65536",
    "speedups": "true or false (1/0, yes/no, on/off in text)",
    "trace_context": "true or false (1/0, yes/no, on/off in text)",
    "trace_url": "an http:// or https:// URL holding {trace_id} (and optionally {span_id}), "
    "such as 'http://localhost:16686/trace/{trace_id}'; '' for none",
    "tracing": "true or false (1/0, yes/no, on/off in text)",
    "tracing_request_hook": "a callable, or 'module:name' naming one in text ('' for none)",
    "tracing_response_hook": "a callable, or 'module:name' naming one in text ('' for none)",
    "background_niceness": "an integer from 0 to 19 (0: the app's priority)",
    "access": "route groups mapped to rules or 'open' (see docs/access-control.md)",
    "health_cache_seconds": "seconds, from 0 to 3600 (0: run the checks every probe)",
    "liveness_max_loop_lag": "seconds, > 0 and <= 3600",
    "read_timeout": "seconds, > 0 and <= 60",
    "read_retry_after": "seconds, > 0 and <= 3600",
    "alert_interval": "seconds, from 1 to 3600",
    "alerts_enabled": "true or false (1/0, yes/no, on/off in text)",
    "alert_incidents": "true or false (1/0, yes/no, on/off in text)",
    "alert_readiness_inhibits": "true or false (1/0, yes/no, on/off in text)",
    "alert_api_networks": "a list of IP networks in CIDR form such as '10.0.0.0/8' that the "
    "API's alert channels may send to",
    "metrics_path": PATH_ALLOWED,
    "api_path": PATH_ALLOWED,
    "ws_path": PATH_ALLOWED,
    "dashboard_path": PATH_ALLOWED,
    "ws_host": "a host name or IP address to listen on, such as '127.0.0.1'",
    "ws_port": "a TCP port from 1 to 65535, or 0 for none",
    "update_interval": "milliseconds, an integer from 100 to 60000",
    "ws_allowed_origins": "a list of origins such as 'https://admin.example.com' "
    "(scheme://host[:port]), or '*'",
    "ws_max_message_bytes": "bytes, an integer from 256 to 16777216",
    "ws_max_connections_per_client": "an integer from 1 to 100000",
    "ws_max_connections": "an integer from 1 to 1000000",
    "ws_message_rate": "messages per second, > 0 and <= 10000 (bursts of twice that allowed)",
    "ws_stall_timeout": "seconds, > 0 and <= 3600",
    "retention_raw": "a duration from 1 hour to 10 years: seconds, or text such as '7d', '36h'",
    "retention_rollups": "a duration from 1 hour to 10 years, at least retention_raw: "
    "seconds, or '90d'",
    "health_path": PATH_ALLOWED,
    "liveness_path": PATH_ALLOWED,
    "readiness_path": PATH_ALLOWED,
    "metrics_namespace": "a metric name prefix such as 'aegis' or 'shop_api'",
    "metrics_labels": "label names and values such as {'service': 'api'} or "
    "'service=api,env=prod' (names valid in Prometheus, not reserved, not one of ours)",
    "metrics_buckets": "histogram bounds in seconds, positive and increasing, such as '0.1,0.5,1'",
    "metrics_registry": "'default' (prometheus-client's registry), 'none', or a CollectorRegistry",
    "metrics_multiprocess_dir": "a directory shared by the worker processes ('' to read "
    "PROMETHEUS_MULTIPROC_DIR)",
    "metrics_system": "true or false (1/0, yes/no, on/off in text); true needs the system extra",
    "metrics_disk_path": "a path whose file system /metrics reports",
    "metrics_exemplars": "true or false (1/0, yes/no, on/off in text)",
}


def _write_sink(batch: object) -> None:
    """A callable sink (never called: settings only keep it)."""


def toml_value(value: Any) -> str:
    """The TOML spelling of a str, bool, number or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def write_toml(path: Path, values: Mapping[str, Any], table: str | None = None) -> Path:
    lines = [f"[{table}]"] if table else []
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_config_error(
    error: ConfigError, option: str, value: Any, source: str, allowed: str
) -> None:
    """The error names the option, the value, where it came from and what is allowed."""
    assert isinstance(error, ValueError)
    assert (error.option, error.source, error.allowed) == (option, source, allowed)
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(error.value, float)
        assert math.isnan(error.value)
    else:
        assert error.value == value
        assert type(error.value) is type(value)
    message = str(error)
    assert repr(option) in message
    assert repr(value) in message
    assert allowed in message
    if source:
        assert f"(from {source})" in message

"""What the OTLP sink is told: its URL, and the ``OTEL_*`` variables it honours.

``otlp+http://collector:4318`` (or ``otlp+https://``) is the collector's base
URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` would give it, with an optional path
prefix; ``/v1/metrics`` and ``/v1/logs`` are added to it. Two query
parameters: ``logs=true`` sends the app's events as OTLP logs too, and
``timeout`` is the seconds one request to the collector may take (4 by
default: under ``sink_timeout``'s 5, so an answer that comes is heard).

Everything is read once, when the sink is built, and a bad value is a
:class:`~aegis_mw.core.errors.ConfigError` then, not a failed export later.
Header values may hold credentials, so an error names the variable and the
entry, never the value.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from ..core.errors import ConfigError

DEFAULT_TIMEOUT = 4.0
MAX_TIMEOUT = 300.0
#: The first one set names the CA file for ``otlp+https``.
CERTIFICATE_VARIABLES = ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
SCHEMES = {"otlp+http": False, "otlp+https": True}
FORM = "otlp+http://host:4318 or otlp+https://host:4318, optionally with a path prefix"
QUERY = "the query may set logs=true|false and timeout=<seconds, > 0 and <= 300>"

# RFC 9110 token: what an HTTP header name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Set by the sink itself: a user's value would garble the body's framing.
_OWN_HEADERS = frozenset({"content-type", "content-encoding", "content-length", "host"})


@dataclass(frozen=True)
class OtlpSettings:
    """A collector's address and what every request to it carries."""

    secure: bool
    host: str
    port: int
    #: The URL's path without its trailing slash ("" or "/prefix").
    prefix: str
    timeout: float
    logs: bool
    metrics_headers: tuple[tuple[str, str], ...]
    logs_headers: tuple[tuple[str, str], ...]
    #: Resource attributes, ``service.name`` first.
    resource: tuple[tuple[str, str], ...]
    #: The CA certificates (PEM) that TLS trusts, when not the system's; and
    #: the variable that named them, for errors.
    ca_file: str | None = None
    ca_variable: str = ""

    @property
    def base(self) -> str:
        """The collector's base URL, as shown in the sink's name and errors."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}{self.prefix}"

    def path(self, signal: str) -> str:
        return f"{self.prefix}/v1/{signal}"


def read_settings(url: str, environ: Mapping[str, str]) -> OtlpSettings:
    """The settings of ``url``, with headers and resource from ``environ``."""
    scheme, _, rest = url.partition("://")
    secure = SCHEMES.get(scheme.lower())
    if secure is None:
        raise ConfigError("sink", url, FORM)
    try:
        parts = urlsplit(f"{'https' if secure else 'http'}://{rest}")
        port = parts.port
    except ValueError as exc:
        raise ConfigError("sink", url, f"{FORM} ({exc})") from None
    if port == 0:
        raise ConfigError("sink", url, f"{FORM}: port 0 is no collector's")
    port = port or (443 if secure else 80)
    if not parts.hostname:
        raise ConfigError("sink", url, f"{FORM}: the collector's host is missing")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "sink", "otlp+...://...@...",
            "no credentials in the URL: give them as headers in OTEL_EXPORTER_OTLP_HEADERS",
        )  # fmt: skip
    if parts.fragment:
        raise ConfigError("sink", url, f"{FORM}, without a #fragment")
    prefix = parts.path.rstrip("/")
    if prefix.endswith(("/v1/metrics", "/v1/logs")):
        raise ConfigError(
            "sink", url, f"{FORM}: the base URL; /v1/metrics and /v1/logs are added to it"
        )
    logs, timeout = _query(url, parts.query)
    metrics_headers = _signal_headers(environ, "METRICS")
    logs_headers = _signal_headers(environ, "LOGS") if logs else ()
    ca_variable = next(
        (name for name in CERTIFICATE_VARIABLES if environ.get(name, "").strip()), ""
    )
    return OtlpSettings(
        secure, parts.hostname, port, prefix, timeout, logs,
        metrics_headers, logs_headers, resource_attributes(environ),
        environ[ca_variable].strip() if ca_variable else None, ca_variable,
    )  # fmt: skip


def _query(url: str, query: str) -> tuple[bool, float]:
    logs, timeout = False, DEFAULT_TIMEOUT
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError("sink", url, QUERY) from None
    for key, value in pairs:
        if key == "logs" and value.lower() in ("true", "false", "1", "0"):
            logs = value.lower() in ("true", "1")
        elif key == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                timeout = math.nan
            if not 0 < timeout <= MAX_TIMEOUT:
                raise ConfigError("sink", url, QUERY)
        else:
            raise ConfigError("sink", url, QUERY)
    return logs, timeout


def _signal_headers(environ: Mapping[str, str], signal: str) -> tuple[tuple[str, str], ...]:
    """The signal's own variable replaces the general one, as in OpenTelemetry's exporters."""
    name = f"OTEL_EXPORTER_OTLP_{signal}_HEADERS"
    if not environ.get(name, "").strip():
        name = "OTEL_EXPORTER_OTLP_HEADERS"
    headers = parse_pairs(name, environ.get(name, ""), secret=True)
    for key, value in headers:
        if not _TOKEN.fullmatch(key) or any(c in value for c in "\r\n\0"):
            raise ConfigError(
                name, f"<{key[:40]!r}=...>", "HTTP header names and values without CR, LF or NUL"
            )
    return tuple((key, value) for key, value in headers if key.lower() not in _OWN_HEADERS)


def parse_pairs(name: str, text: str, *, secret: bool = False) -> list[tuple[str, str]]:
    """``key1=value1,key2=value2`` (the OpenTelemetry variables' format, after
    W3C Baggage): blanks around keys and values trimmed, both percent-decoded,
    empty entries skipped."""
    pairs: list[tuple[str, str]] = []
    for number, entry in enumerate(text.split(","), 1):
        if not entry.strip():
            continue
        key, equals, value = entry.partition("=")
        key = unquote(key.strip())
        if not equals or not key:
            shown = "<hidden: it may hold credentials>" if secret else text
            raise ConfigError(
                name, shown, f"key=value pairs separated by commas (entry {number} is not)"
            )
        pairs.append((key, unquote(value.strip())))
    return pairs


def resource_attributes(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``OTEL_RESOURCE_ATTRIBUTES``, with ``service.name`` first: from
    ``OTEL_SERVICE_NAME``, else from those attributes, else
    ``unknown_service:<executable>`` as the resource conventions ask."""
    given = dict(
        parse_pairs("OTEL_RESOURCE_ATTRIBUTES", environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    )
    executable = os.path.basename(sys.executable or "")
    default = f"unknown_service:{executable}" if executable else "unknown_service"
    service = (
        environ.get("OTEL_SERVICE_NAME", "").strip() or given.pop("service.name", "") or default
    )
    given.pop("service.name", None)
    return (("service.name", service), *given.items())

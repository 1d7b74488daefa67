"""Sinks: where records go. Each is given by URL or as an object.

=====================  ===============================================
``memory://``          :class:`MemorySink`, in the process (tests)
``sqlite:///rel.db``   :class:`SQLiteSink`; ``sqlite:////abs/path.db``
``jsonl:///rel.jsonl`` :class:`JsonlSink`; four slashes for absolute
``postgresql://...``   :class:`~.postgres.PostgresSink` (also ``postgres://``);
                       needs the ``postgres`` extra
``otlp+http://...``    :class:`~.otlp.OtlpSink`, OpenTelemetry metrics to a
                       collector (also ``otlp+https://``); needs the ``otel`` extra
a callable             :class:`CallableSink`, called with each batch
an object              anything with ``name``, ``write(batch)``, ``close()``
=====================  ===============================================
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ..core.errors import ConfigError
from ..core.sink import RecordSink
from .callback import CallableSink
from .jsonl import JsonlSink
from .memory import MemorySink
from .sqlite import SQLiteSink

SUPPORTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, jsonl:///path, "
    "postgresql://user@host:port/db, otlp+http://host:4318"
)

__all__ = ["CallableSink", "JsonlSink", "MemorySink", "SQLiteSink", "build_sinks"]


def _file_path(url: str, scheme: str) -> str:
    rest = url[len(scheme) + 3 :]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError(
            "sink", url, f"{scheme} URLs name a file: {scheme}:///relative or {scheme}:////absolute"
        )
    return unquote(rest[1:])


def build_sink(spec: Any) -> RecordSink:
    """One sink from a URL, a sink object or a callable."""
    if isinstance(spec, str):
        scheme, separator, _ = spec.partition("://")
        scheme = scheme.lower()
        if not separator:
            raise ConfigError("sink", spec, f"not a sink URL; supported: {SUPPORTED}")
        if scheme == "memory":
            return MemorySink()
        if scheme == "sqlite":
            return SQLiteSink(_file_path(spec, scheme), spec)
        if scheme == "jsonl":
            return JsonlSink(_file_path(spec, scheme), spec)
        if scheme in ("postgresql", "postgres"):
            # Imported here: ``import aegis_mw`` never imports psycopg. Without
            # it, the ImportError names the extra to install.
            from .postgres import PostgresSink

            return PostgresSink(spec)
        if scheme in ("otlp+http", "otlp+https"):
            # Imported here like psycopg: opentelemetry-proto only with this sink.
            from .otlp import OtlpSink

            return OtlpSink(spec)
        raise ConfigError("sink", spec, f"unknown sink scheme {scheme!r}; supported: {SUPPORTED}")
    if isinstance(spec, type):
        raise ConfigError("sink", spec, f"a class, not a sink; pass an instance: {spec.__name__}()")
    if isinstance(spec, RecordSink):
        return spec
    if callable(spec):
        return CallableSink(spec)
    raise ConfigError("sink", spec, f"not a sink; give a URL ({SUPPORTED}), a sink or a callable")


def build_sinks(specs: tuple[Any, ...], source: str = "") -> list[tuple[str, RecordSink]]:
    """Sinks with unique display names (``name``, ``name#2``, ...).

    ``source`` (where the option came from) is named in any ConfigError.
    """
    if not specs:
        raise ConfigError(
            "sink", specs, "give at least one sink (memory:// keeps records in the process)", source
        )
    try:
        return _build_named(specs)
    except ConfigError as error:
        if error.source or not source:
            raise
        raise ConfigError(error.option, error.value, error.allowed, source) from None


def _build_named(specs: tuple[Any, ...]) -> list[tuple[str, RecordSink]]:
    built: list[tuple[str, RecordSink]] = []
    seen: dict[str, int] = {}
    for spec in specs:
        sink = build_sink(spec)
        base = str(getattr(sink, "name", type(sink).__name__))
        seen[base] = seen.get(base, 0) + 1
        built.append((base if seen[base] == 1 else f"{base}#{seen[base]}", sink))
    return built

"""The tracer provider ``tracing = true`` makes its server spans with.

An app that set up OpenTelemetry already (a global ``TracerProvider`` of its
own) keeps it: the spans go where its others go. An app with none gets an
SDK provider of the middleware's own, configured the way every OpenTelemetry
SDK is, from the standard environment variables. It is not made the global
one: a global provider would switch on every instrumentation that waits for
one (recent FastAPI traces every request itself once a global provider is
set, this middleware's routes included), so an app that wants its own spans
in the requests' traces sets up its global provider itself, and this one
then uses it:

- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource;
- ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: the sampler (the SDK's
  default, parent-based always-on, when unset);
- ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default), ``console`` or ``none``;
- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``,
  ``..._HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``: the OTLP/HTTP exporter's
  (``http://localhost:4318/v1/traces`` by default); only ``http/protobuf`` is
  spoken (``OTEL_EXPORTER_OTLP_PROTOCOL``).

The SDK reads these from the process's environment itself (not from
``Aegis(environ=...)``). Spans leave through the SDK's ``BatchSpanProcessor``:
a bounded queue and a thread of its own, never the request's. OpenTelemetry
is imported only when a middleware with ``tracing`` on is built.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .errors import ConfigError

#: What the `tracing` extra installs; named in the error when it is missing.
EXTRA_HINT = "tracing = true needs the tracing extra: pip install 'aegis_mw[tracing]'"
EXPORTERS = ("otlp", "console", "none")
logger = logging.getLogger("aegis_mw")


class TracerSetup:
    """The provider spans are made with, and whether this pipeline made it."""

    def __init__(self) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError as missing:  # the API, or the SDK, not installed
            raise ConfigError("tracing", "true", EXTRA_HINT) from missing
        current = trace.get_tracer_provider()
        #: Made here (None: the app's own is used, and left to the app).
        self.owned: Any = None
        #: The owned provider's exporter (None: the app's provider, or none).
        self.exporter: Any = None
        self._flushed = False
        if not isinstance(current, trace.ProxyTracerProvider):
            self.provider: Any = current
            return
        exporter = self.exporter = _exporter()
        # Resource and sampler from the OTEL_* variables, as the SDK reads them.
        # Not shut down at exit by the SDK: its flush there waits as long as the
        # exporter retries (10 s by default) when the collector is down; the
        # pipeline's shutdown flushes within its own budget instead.
        provider = TracerProvider(shutdown_on_exit=False)
        if exporter is not None:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(exporter))
        self.provider = self.owned = provider

    def flush(self, timeout: float) -> bool:
        """Export the spans ended so far, waiting at most ``timeout`` seconds
        (at shutdown); the app's own provider is left to the app. The SDK's
        flush exports in the caller's thread and ignores its timeout, so it
        runs in a thread of its own, left behind if the exporter still
        retries when the time is up."""
        owned = self.owned
        if owned is None or self._flushed:
            return True
        self._flushed = True  # once: a later shutdown() returns at once
        done = threading.Event()
        flushed: list[bool] = []

        def run() -> None:
            try:
                flushed.append(bool(owned.force_flush()))
            finally:
                done.set()

        threading.Thread(target=run, name="aegis-span-flush", daemon=True).start()
        if done.wait(max(timeout, 0.0)) and flushed == [True]:
            return True
        logger.warning("aegis_mw: the spans ended so far were not all exported at shutdown")
        return False


def _exporter() -> Any:
    environ = os.environ
    kind = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if kind not in EXPORTERS:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER", kind, f"one of {', '.join(EXPORTERS)} (with tracing = true)",
            "environment",
        )  # fmt: skip
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise ConfigError(
                    variable, protocol, "'http/protobuf' (the OTLP/HTTP exporter, with "
                    "tracing = true; for gRPC set up a provider of your own)", "environment",
                )  # fmt: skip
            break
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as missing:
        raise ConfigError("tracing", "true", EXTRA_HINT) from missing
    return OTLPSpanExporter()

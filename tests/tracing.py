"""OpenTelemetry's SDK as a test's tracing backend: a provider whose ended
spans are kept in memory, to compare with what the records carry; and what a
real OTLP/HTTP receiver took of the spans ``tracing`` exported."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.sinks.otlp_receiver import Receiver, attributes

#: OpenTelemetry's header capture (request, response, sanitized).
CAPTURE_VARIABLES = (
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS",
)
#: Every OTEL_* variable the SDK, its OTLP exporter and the header capture
#: read, kept out of the tests that point them at a receiver.
OTEL_VARIABLES = (
    "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_SDK_DISABLED",
    *CAPTURE_VARIABLES,
)  # fmt: skip


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans


def exported_spans(receiver: Receiver) -> list[tuple[dict[str, Any], ProtoSpan]]:
    """(resource attributes, span) for every span the receiver took."""
    return [
        (attributes(resource_spans.resource.attributes), span)
        for message in receiver.taken("traces")
        for resource_spans in message.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]

"""OpenTelemetry's SDK as a test's tracing backend: a provider whose ended
spans are kept in memory, to compare with what the records carry."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans

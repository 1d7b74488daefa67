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


# -- the app's hooks (tracing_request_hook, tracing_response_hook), by name too ----------


def tenant_of_scope(span: Any, scope: dict[str, Any]) -> None:
    """An ASGI request hook: the request's ``x-tenant`` header as an attribute."""
    headers = dict(scope.get("headers") or ())
    span.set_attribute("app.tenant", headers.get(b"x-tenant", b"").decode())


def status_of_message(span: Any, scope: dict[str, Any], message: dict[str, Any]) -> None:
    """An ASGI response hook: what started the response."""
    span.set_attribute("app.response", f"{message['type']} {message.get('status', '')}".strip())


def tenant_of_environ(span: Any, environ: dict[str, Any]) -> None:
    """A WSGI request hook: the request's ``X-Tenant`` header as an attribute."""
    span.set_attribute("app.tenant", environ.get("HTTP_X_TENANT", ""))


def status_of_start(span: Any, environ: dict[str, Any], status: str, headers: Any) -> None:
    """A WSGI response hook: the status line and the headers' names."""
    span.set_attribute("app.response", status)
    span.set_attribute("app.response_headers", sorted(name.lower() for name, _ in headers))


def tenant_of_request(span: Any, request: Any) -> None:
    """A Django request hook: the request's ``X-Tenant`` header as an attribute."""
    span.set_attribute("app.tenant", request.headers.get("X-Tenant", ""))


def status_of_response(span: Any, request: Any, response: Any) -> None:
    """A Django response hook: the status and the headers' names."""
    span.set_attribute("app.response", f"{response.status_code} {response.reason_phrase}")
    span.set_attribute("app.response_headers", sorted(name.lower() for name in response.headers))


def broken_hook(span: Any, *details: Any) -> None:
    """A hook with a bug of its own."""
    raise ValueError("the app's hook broke")


def hook_exceptions(span: ProtoSpan) -> list[str]:
    """The exception types recorded on an exported span."""
    return [
        attributes(event.attributes)["exception.type"]
        for event in span.events
        if event.name == "exception"
    ]

"""The headers OpenTelemetry's header-capture variables name, as span attributes.

``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST`` and ``..._RESPONSE``
name headers (regular expressions, any case) to record on a server span as
``http.request.header.<name>`` and ``http.response.header.<name>``, each a
list of values; the values of those ``..._SANITIZE_FIELDS`` names are
``[REDACTED]``. The attributes are those OpenTelemetry's own WSGI, ASGI and
Django instrumentations set, made with its own sanitizer and name functions,
from the WSGI environ or, for Django's ASGI handler, the ASGI scope (where a
header sent twice is two values, and ``content-type`` is a header like any
other).

The three variables are read once, when the middleware is built, as
OpenTelemetry's ASGI middleware reads them: without them no request looks at
its headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from typing import Any


class HeaderCapture:
    """Sets the captured headers on a span; raises ImportError without
    OpenTelemetry's packages (the ``tracing`` extra's)."""

    def __init__(self) -> None:
        from opentelemetry.util.http import (
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
            SanitizeValue,
            get_custom_headers,
            normalise_request_header_name,
            normalise_response_header_name,
        )

        self._request_names: list[str] = get_custom_headers(
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST
        )
        self._response_names: list[str] = get_custom_headers(
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE
        )
        self._sanitize = SanitizeValue(
            get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS)
        )
        self._request_name = normalise_request_header_name
        self._response_name = normalise_response_header_name

    @property
    def requests(self) -> bool:
        """Whether any request header is to be captured."""
        return bool(self._request_names)

    @property
    def responses(self) -> bool:
        """Whether any response header is to be captured."""
        return bool(self._response_names)

    def request(self, span: Any, environ: dict[str, Any], scope: Any = None) -> None:
        """The request's headers, from ``scope`` (an ASGI scope) when there
        is one, else from the environ's ``HTTP_*`` keys; never raises."""
        if not self._request_names:
            return
        with suppress(Exception):  # a header OpenTelemetry cannot read fails nothing
            if not span.is_recording():
                return
            if isinstance(scope, dict):
                # Only Django's ASGI handler gives a scope, and the ASGI
                # instrumentation that reads one is then installed with it.
                from opentelemetry.instrumentation.asgi import collect_custom_headers_attributes

                found = collect_custom_headers_attributes(
                    scope, self._sanitize, self._request_names, self._request_name
                )
            else:
                # As OpenTelemetry's WSGI helper reads an environ.
                headers = {
                    key[5:].replace("_", "-"): value
                    for key, value in environ.items()
                    if key.startswith("HTTP_")
                }
                found = self._sanitize.sanitize_header_values(
                    headers, self._request_names, self._request_name
                )
            if found:
                span.set_attributes(found)

    def response(self, span: Any, headers: Iterable[tuple[str, str]]) -> None:
        """The response's ``(name, value)`` headers, a name sent twice as one
        value joined by commas (as OpenTelemetry's WSGI helper does); never
        raises."""
        if not self._response_names:
            return
        with suppress(Exception):
            if not span.is_recording():
                return
            joined: dict[str, str] = {}
            for name, value in headers:
                key = name.lower()
                joined[key] = f"{joined[key]},{value}" if key in joined else value
            found = self._sanitize.sanitize_header_values(
                joined, self._response_names, self._response_name
            )
            if found:
                span.set_attributes(found)

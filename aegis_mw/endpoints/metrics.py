"""``GET /metrics``: our families and the app's own prometheus-client metrics.

The format follows ``Accept`` as prometheus-client negotiates it: OpenMetrics
1.0.0 when asked for, the 0.0.4 text format otherwise; gzip when
``Accept-Encoding`` allows it. Rendering reads the aggregates under the
flusher's lock and formats thousands of lines, so callers run it off the
event loop.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

from ..exposition.families import FamilyBuilder, MetricsReading
from ..exposition.text import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, render
from .response import Response


def _media_range(part: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters (names lower case, values
    unquoted) of one element of ``Accept`` or ``Accept-Encoding``."""
    media, *parameters = part.split(";")
    found: dict[str, str] = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        found[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), found


def _refused(parameters: dict[str, str]) -> bool:
    """True for ``q=0`` (``0.0``, ``0.000``): "not this one"; an unreadable q
    counts as a refusal too (sending the plain form is always safe)."""
    if "q" not in parameters:
        return False
    try:
        return not float(parameters["q"]) > 0
    except ValueError:
        return True


def wants_openmetrics(accept: str) -> bool:
    """True when ``Accept`` names OpenMetrics 1.x (or OpenMetrics without a version),
    and does not refuse it with ``q=0``."""
    for part in accept.split(","):
        media, parameters = _media_range(part)
        if media != "application/openmetrics-text" or _refused(parameters):
            continue
        version = parameters.get("version", "")
        major = version.split(".")[0]
        if not version or (major.isdigit() and int(major) >= 1):
            return True
    return False


def accepts_gzip(accept_encoding: str) -> bool:
    """True when ``Accept-Encoding`` lists gzip with a q above 0."""
    for part in accept_encoding.split(","):
        coding, parameters = _media_range(part)
        if coding == "gzip":
            return not _refused(parameters)
    return False


class MetricsEndpoint:
    """Renders a scrape: ``reader()`` gives the pipeline's reading, ``registry()``
    the app's own metrics (a prometheus-client ``CollectorRegistry``, or None)."""

    def __init__(
        self,
        reader: Callable[[], MetricsReading],
        builder: FamilyBuilder,
        registry: Callable[[], Any],
    ) -> None:
        self._reader = reader
        self._builder = builder
        self._registry = registry

    def respond(self, accept: str = "", accept_encoding: str = "") -> Response:
        openmetrics = wants_openmetrics(accept)
        reading: MetricsReading = self._reader()
        text = render(self._builder.build(reading), openmetrics=openmetrics)
        registry = self._registry()
        if registry is not None:
            text = _with_registry(registry, text, openmetrics)
        # "replace": a label value can be any text (a check's name, a label from
        # an environment variable with undecodable bytes); a lone surrogate in
        # one must not turn every scrape into a 500.
        body = text.encode("utf-8", "replace")
        headers = []
        if accepts_gzip(accept_encoding):
            body = gzip.compress(body, compresslevel=6)
            headers.append(("content-encoding", "gzip"))
        headers.append(("vary", "accept, accept-encoding"))
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        return Response(200, body, content_type, headers)


def _with_registry(registry: Any, ours: str, openmetrics: bool) -> str:
    if openmetrics:
        from prometheus_client.openmetrics.exposition import generate_latest as om_latest

        theirs: str = om_latest(registry).decode()  # type: ignore[no-untyped-call]
        # One "# EOF", at the very end.
        return ours.removesuffix("# EOF\n") + theirs
    from prometheus_client.exposition import generate_latest

    plain: str = generate_latest(registry).decode()
    return ours + plain

"""``tracing = true`` is refused for WSGI apps (plain and Flask), at start,
with an error naming the option and what to use instead: OpenTelemetry's
own WSGI instrumentation, whose spans the records carry (test_trace_context)."""

from __future__ import annotations

from typing import Any

import flask
import pytest

from aegis_mw import Aegis, ConfigError
from aegis_mw.contrib.flask import Aegis as FlaskAegis
from aegis_mw.wsgi import AegisWSGIMiddleware


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def test_a_wsgi_app_with_tracing_refuses_to_start_naming_what_to_use() -> None:
    aegis = Aegis(sink="memory://", environ={"AEGIS_TRACING": "true"})
    try:
        with pytest.raises(ConfigError) as raised:
            AegisWSGIMiddleware(app, aegis=aegis)
    finally:
        aegis.shutdown()
    assert raised.value.option == "tracing" and raised.value.source == "AEGIS_TRACING"
    assert "OpenTelemetryMiddleware" in str(raised.value)


def test_a_flask_app_with_tracing_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="FlaskInstrumentor"):
        FlaskAegis(flask.Flask(__name__), sink="memory://", environ={}, tracing=True)

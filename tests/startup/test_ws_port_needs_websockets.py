"""``ws_port`` without the ``websockets`` package is a config error at start
naming the extra to install, not a page that polls forever."""

from __future__ import annotations

import sys

import pytest

from aegis_mw import ConfigError
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.servers import free_port


def _app(environ: object, start_response: object) -> list[bytes]:
    return [b""]


def test_ws_port_without_websockets_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "websockets", None)  # as if not installed
    port = free_port()
    with pytest.raises(ConfigError) as caught:
        AegisWSGIMiddleware(_app, sink="memory://", environ={"AEGIS_WS_PORT": str(port)})
    message = str(caught.value)
    assert f"'ws_port' (from AEGIS_WS_PORT) = {port}" in message
    assert "pip install 'aegis_mw[flask]'" in message


def test_ws_port_with_websockets_starts() -> None:
    middleware = AegisWSGIMiddleware(_app, sink="memory://", ws_port=free_port())
    try:
        assert middleware.aegis.settings.ws_port
    finally:
        middleware.aegis.shutdown(timeout=5)

"""Where the compiled request paths are used: only on the CPython versions their
tests run on; anywhere else the pure-Python paths, said once in an INFO line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware, speedups
from aegis_mw.testing import recorded
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.conftest import compiled_module
from tests.harness import call, http_scope

RUNNING = sys.version_info[:2]


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def _notices(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "compiled request path is not used" in r.getMessage()]


def test_the_running_version_is_one_the_compiled_path_is_tested_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    compiled_module()
    assert RUNNING in speedups.COMPILED_VERSIONS
    with caplog.at_level(logging.INFO, logger="aegis_mw"):
        assert speedups.load() is not None
    assert _notices(caplog) == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_untested_version_takes_the_python_paths_with_one_info_line(
    make_aegis: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the running version outside the tested set, the module is not loaded even
    where it was built: each middleware built says so in one INFO line, naming the
    version, and serves its requests on the pure-Python path, recorded as ever."""
    compiled_module()
    monkeypatch.setattr(speedups, "COMPILED_VERSIONS", frozenset({(2, 7), (3, 99)}))
    aegis = make_aegis(metrics_registry="none")
    with caplog.at_level(logging.INFO, logger="aegis_mw"):
        asgi = AegisMiddleware(_asgi_app, aegis=aegis)
        wsgi = AegisWSGIMiddleware(_wsgi_app, aegis=aegis)
    assert (asgi.compiled, wsgi.compiled) == (False, False)
    notices = _notices(caplog)
    assert [notice.levelname for notice in notices] == ["INFO", "INFO"]
    assert f"CPython {RUNNING[0]}.{RUNNING[1]} " in notices[0].getMessage()
    assert "tested on CPython 2.7, 3.99)" in notices[0].getMessage()
    await call(asgi, http_scope("/asgi"))
    result = wsgi({"PATH_INFO": "/wsgi", "REQUEST_METHOD": "GET"}, lambda *args: None)
    assert b"".join(result) == b"ok"
    result.close()
    assert sorted(record.path for record in recorded(aegis)) == ["/asgi", "/wsgi"]


def test_a_module_built_for_another_inbox_layout_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An older build left in place queues items of another layout: requests
    take the Python path, and the log says why."""
    module = compiled_module()
    assert speedups.load() is module
    monkeypatch.setattr(module, "ITEM_FIELDS", module.ITEM_FIELDS - 1)
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        assert speedups.load() is None
    assert "built for another version of aegis_mw" in caplog.text


@pytest.mark.anyio
async def test_an_older_asgi_path_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An older build left in place, whose HttpPath reads every scope as HTTP's
    (it has no call_directly): the ASGI middleware takes the Python path,
    says why, and records requests."""
    module = compiled_module()
    monkeypatch.delattr(module, "call_directly")
    aegis = Aegis(sink="memory://", environ={})
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        asgi = AegisMiddleware(_asgi_app, aegis=aegis)
    assert asgi.compiled is False
    assert "built for another version of aegis_mw" in caplog.text
    await call(asgi, http_scope("/asgi"))
    assert [record.path for record in recorded(aegis)] == ["/asgi"]
    aegis.shutdown(timeout=5)

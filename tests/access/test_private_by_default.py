"""Monitoring data is private by default: the JSON API, the dashboard and the
stream take the app's access token unless a rule of the user's says
otherwise, while /metrics and the health routes keep the open conventions of
Prometheus and Kubernetes. The token is shared through a file by every
process that records into the same SQLite file."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware, ConfigError
from aegis_mw.access import app_token
from tests.harness import Exchange, call, http_scope, websocket_scope
from tests.spawned import run_together

pytestmark = pytest.mark.anyio


async def no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the middleware answers its own routes")


def _bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def _status(app: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    path, _, query = path.partition("?")
    scope = http_scope(path, headers=headers or [], query_string=query.encode())
    status = (await call(app, scope)).status
    assert status is not None
    return status


async def _handshake(app: Any, headers: list[tuple[bytes, bytes]]) -> str:
    """What the stream's handshake got: the first message the server sent."""
    exchange = Exchange([{"type": "websocket.connect"}, {"type": "websocket.disconnect"}])
    await call(app, websocket_scope("/ws/metrics", headers=headers), exchange)
    return str(exchange.sent[0]["type"])


@pytest.fixture
def pipeline(make_aegis: Any) -> Aegis:
    return make_aegis(sink="memory://", access={})


PRIVATE = ["/api/metrics/overview?range=1h", "/api/metrics/requests", "/dashboard"]
OPEN = ["/metrics", "/health/live", "/health/ready", "/health"]


@pytest.mark.parametrize("path", PRIVATE)
async def test_monitoring_data_needs_the_token(pipeline: Aegis, path: str) -> None:
    app = AegisMiddleware(no_app, aegis=pipeline)
    assert pipeline.access_token is not None
    assert await _status(app, path) == 401
    assert await _status(app, path, _bearer("not-the-token-at-all")) == 401
    assert await _status(app, path, _bearer(pipeline.access_token.value)) == 200


@pytest.mark.parametrize("path", OPEN)
async def test_metrics_and_health_stay_open(pipeline: Aegis, path: str) -> None:
    assert await _status(AegisMiddleware(no_app, aegis=pipeline), path) == 200


async def test_the_stream_needs_the_token(pipeline: Aegis) -> None:
    app = AegisMiddleware(no_app, aegis=pipeline)
    assert pipeline.access_token is not None
    assert await _handshake(app, []) == "websocket.close"
    cookie = [(b"cookie", f"aegis_token={pipeline.access_token.value}".encode())]
    assert await _handshake(app, cookie) == "websocket.accept"


async def test_the_printed_link_opens_the_dashboard_in_one_step(pipeline: Aegis) -> None:
    app = AegisMiddleware(no_app, aegis=pipeline)
    assert pipeline.access_token is not None
    token = pipeline.access_token.value
    login = await call(app, http_scope("/dashboard", query_string=f"token={token}".encode()))
    assert login.status == 303
    start = login.sent[0]
    cookies = [value.decode() for name, value in start["headers"] if name == b"set-cookie"]
    assert cookies and all(f"aegis_token={token}" in cookie for cookie in cookies)
    jar = [(b"cookie", f"aegis_token={token}".encode())]
    assert await _status(app, "/dashboard", jar) == 200
    assert await _status(app, "/api/metrics/overview?range=1h", jar) == 200


async def test_groups_opened_on_purpose_are_open_with_a_warning(
    make_aegis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    opened = {"api": "open", "dashboard": "open", "websocket": "open"}
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        pipeline = make_aegis(sink="memory://", access=opened)
        app = AegisMiddleware(no_app, aegis=pipeline)
    assert pipeline.access_token is None
    for path in PRIVATE:
        assert await _status(app, path) == 200
    assert await _handshake(app, []) == "websocket.accept"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("is open to every client" in message for message in warned) == 3


async def test_a_rule_of_the_users_replaces_the_token(make_aegis: Any) -> None:
    rule = {"tokens": ["users-own-token-1"]}
    pipeline = make_aegis(sink="memory://", access={"api": rule, "dashboard": rule})
    app = AegisMiddleware(no_app, aegis=pipeline)
    assert pipeline.access_token is None
    assert await _status(app, "/dashboard", _bearer("users-own-token-1")) == 200
    assert await _status(app, "/api/metrics/requests") == 401


async def test_the_token_option_is_used_as_given(make_aegis: Any, tmp_path: Path) -> None:
    token = "a-token-of-my-own-1234"
    pipeline = make_aegis(sink=f"sqlite:///{tmp_path / 'a.db'}", access={}, access_token=token)
    assert pipeline.access_token == app_token.AppToken(token, "option")
    assert not (tmp_path / "a.db.token").exists()
    app = AegisMiddleware(no_app, aegis=pipeline)
    assert await _status(app, "/api/metrics/requests", _bearer(token)) == 200


@pytest.mark.parametrize("value", ["short", "has spaces in it here", "ünïcode-token-123456"])
async def test_a_bad_token_option_fails_at_start_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Aegis(sink="memory://", access_token=value, environ={})
    assert "'access_token'" in str(caught.value) and value not in str(caught.value)


async def test_the_token_is_kept_beside_the_sqlite_file_and_shared(
    make_aegis: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    first, second = make_aegis(sink=url, access={}), make_aegis(sink=url, access={})
    kept = tmp_path / "app.db.token"
    assert first.access_token is not None and second.access_token is not None
    assert first.access_token.value == second.access_token.value
    assert kept.read_text().strip() == first.access_token.value
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert first.access_token.origin == str(kept)


def _resolve_in_a_process(path: str, index: int, barrier: Any, results: Any) -> None:
    barrier.wait()
    results.put((index, app_token.resolve("", path).value))


def test_processes_starting_together_agree_on_one_token(tmp_path: Path) -> None:
    path = str(tmp_path / "raced.token")
    reports, codes = run_together(_resolve_in_a_process, 4, path)
    assert codes == [0, 0, 0, 0]
    tokens = {token for _, token in reports}
    assert len(tokens) == 1 and len(reports) == 4
    assert Path(path).read_text().strip() == tokens.pop()
    assert sorted(os.listdir(tmp_path)) == ["raced.token"]  # nothing left aside


async def test_an_unwritable_place_gives_a_process_token_and_says_how_to_share(
    make_aegis: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the token's directory should be")
    with caplog.at_level(logging.WARNING, logger="aegis_mw"):
        pipeline = make_aegis(
            sink="memory://", access={}, access_token_file=str(blocked / "t.token")
        )
    assert pipeline.access_token is not None and pipeline.access_token.origin == "memory"
    assert any("AEGIS_ACCESS_TOKEN" in r.getMessage() for r in caplog.records)


async def test_a_file_that_holds_no_token_is_not_taken(make_aegis: Any, tmp_path: Path) -> None:
    kept = tmp_path / "bad.token"
    kept.write_text("x\n")
    pipeline = make_aegis(sink="memory://", access={}, access_token_file=str(kept))
    assert pipeline.access_token is not None and pipeline.access_token.origin == "memory"


async def test_the_start_up_line_carries_the_link_and_the_request_path(
    make_aegis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = make_aegis(sink="memory://", access={})
    middleware = AegisMiddleware(no_app, aegis=pipeline)
    AegisMiddleware(no_app, aegis=pipeline)  # a second middleware says nothing more
    assert pipeline.access_token is not None
    err = capsys.readouterr().err
    hot_path = "compiled" if middleware.compiled else "python"
    line = f"{hot_path} request path; dashboard at /dashboard?token={pipeline.access_token.value}"
    assert err.count(line) == 1, err
    metrics = (await call(middleware, http_scope("/metrics"))).body.decode()
    assert 'aegis_build_info{version="' in metrics
    assert f'hot_path="{hot_path}"}} 1' in metrics


async def test_a_rule_for_the_page_serves_its_api_too(make_aegis: Any) -> None:
    """The page is useless without its API: a rule given for one is the other's."""
    pipeline = make_aegis(sink="memory://", access={"dashboard": {"tokens": ["page-token-1234"]}})
    app = AegisMiddleware(no_app, aegis=pipeline)
    assert pipeline.access_token is None
    assert await _status(app, "/api/metrics/requests") == 401
    assert await _status(app, "/api/metrics/requests", _bearer("page-token-1234")) == 200

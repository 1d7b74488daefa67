"""/ws/metrics served by a real uvicorn process, spoken to by the real
``websockets`` client: hello, frames at the interval, subscriptions, errors,
size and rate limits, origins, tokens and connection limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from aegis_mw import __version__
from tests.harness import OPEN_MONITORING_ENV
from tests.servers import Server, child_environment, uvicorn_server

pytestmark = pytest.mark.slow

APP = "tests.realtime.ws_app:app"
TIMEOUT = 10.0


@contextmanager
def serving(tmp_path: Path, **options: str) -> Iterator[Server]:
    settings = {**OPEN_MONITORING_ENV, **{f"AEGIS_{k.upper()}": v for k, v in options.items()}}
    env = child_environment(AEGIS_UPDATE_INTERVAL="100", **settings)
    with uvicorn_server(APP, tmp_path, env=env) as server:
        yield server


def ws_url(server: Server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/ws/metrics{query}"


def receive(connection: ClientConnection) -> dict[str, Any]:
    message = json.loads(connection.recv(timeout=TIMEOUT))
    assert isinstance(message, dict)
    return message


def next_of(connection: ClientConnection, kind: str, limit: int = 50) -> dict[str, Any]:
    """The next message of type ``kind`` (frames may come in between)."""
    for _ in range(limit):
        message = receive(connection)
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} message in {limit}")


def close_code(connection: ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes; its close code and reason."""
    for _ in range(1000):
        try:
            connection.recv(timeout=TIMEOUT)
        except ConnectionClosed as closed:
            received = closed.rcvd
            return (received.code, received.reason) if received else (None, "")
    raise AssertionError("the server did not close the connection")


def test_hello_then_frames_of_the_default_sections(tmp_path: Path) -> None:
    with serving(tmp_path) as server, connect(ws_url(server)) as ws:
        hello = receive(ws)
        assert hello["type"] == "hello"
        data = hello["data"]
        assert data["serverVersion"] == __version__
        assert data["updateInterval"] == 100
        assert data["subscription"] == {
            "overview": True, "requestRate": False, "latencyPercentiles": False,
            "statusDistribution": False, "topEndpoints": False, "alerts": True, "customMetrics": False,
        }  # fmt: skip
        assert isinstance(data["clientId"], str) and data["clientId"]
        frames = [receive(ws) for _ in range(3)]
        assert [frame["type"] for frame in frames] == ["metrics"] * 3
        assert all(list(frame["data"]) == ["overview", "alerts"] for frame in frames)
        stamps = [frame["timestamp"] for frame in frames]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3
        assert frames[0]["data"]["alerts"] == []


def test_frames_show_the_traffic_sent(tmp_path: Path) -> None:
    with serving(tmp_path) as server, connect(ws_url(server)) as ws:
        for path in ["/ok"] * 5 + ["/fail"] * 2 + ["/items/1", "/items/2"]:
            httpx.get(server.url + path, timeout=TIMEOUT)
        receive(ws)  # hello
        deadline = time.monotonic() + TIMEOUT
        overview: dict[str, Any] = {}
        while time.monotonic() < deadline:
            overview = next_of(ws, "metrics")["data"]["overview"]
            if overview["total_requests"] == 9:
                break
        assert overview["total_requests"] == 9
        assert overview["total_errors"] == 2
        assert overview["status_totals"] == {"1xx": 0, "2xx": 7, "3xx": 0, "4xx": 0, "5xx": 2}
        # The same figures as the JSON API's realtime endpoint.
        api = httpx.get(server.url + "/api/metrics/realtime", timeout=TIMEOUT).json()["data"]
        assert api["total_requests"] == 9 and api["status_totals"] == overview["status_totals"]

        ws.send(json.dumps({"type": "subscribe", "data": {"topEndpoints": True,
                                                          "requestRate": True,
                                                          "overview": False}}))  # fmt: skip
        subscribed = next_of(ws, "subscribed")
        assert subscribed["data"] == {
            "overview": False, "requestRate": True, "latencyPercentiles": False,
            "statusDistribution": False, "topEndpoints": True, "alerts": True, "customMetrics": False,
        }  # fmt: skip
        frame = next_of(ws, "metrics")
        assert list(frame["data"]) == ["requestRate", "topEndpoints", "alerts"]
        top = {(row["method"], row["route"]): row for row in frame["data"]["topEndpoints"]}
        assert top["GET", "/ok"]["requests"] == 5 and top["GET", "/ok"]["errors"] == 0
        assert top["GET", "/fail"]["errors"] == 2
        assert top["GET", "/items/{item_id}"]["requests"] == 2
        points = frame["data"]["requestRate"]["points"]
        assert len(points) == 60
        assert sum(point["requests"] for point in points) == 9
        assert sum(point["errors"] for point in points) == 2

        ws.send(json.dumps({"type": "unsubscribe", "data": ["topEndpoints", "requestRate",
                                                           "alerts"]}))  # fmt: skip
        assert not any(next_of(ws, "subscribed")["data"].values())


def test_ping_get_and_errors_keep_the_connection_open(tmp_path: Path) -> None:
    with serving(tmp_path) as server, connect(ws_url(server)) as ws:
        httpx.get(server.url + "/ok", timeout=TIMEOUT)
        receive(ws)
        ws.send(json.dumps({"type": "ping", "data": {"n": 1}}))
        assert next_of(ws, "pong")["data"] == {"n": 1}
        for text, code in [
            ("{not json", "invalid_json"),
            ('{"type": "shout"}', "unknown_type"),
            ('{"type": "subscribe", "data": {"cpu": true}}', "unknown_section"),
            ('{"type": "subscribe", "data": {"overview": "yes"}}', "invalid_field"),
            ('{"type": "get", "data": {"section": "overview", "range": "2h"}}', "invalid_range"),
        ]:
            ws.send(text)
            error = next_of(ws, "error")["data"]
            assert error["code"] == code and error["message"]
        ws.send(json.dumps({"type": "get", "data": {"section": "requestRate", "range": "15m"}}))
        result = next_of(ws, "result")["data"]
        assert result["section"] == "requestRate" and result["range"] == "15m"
        assert result["value"]["range"]["step_seconds"] > 0 and result["value"]["points"]
        ws.send(json.dumps({"type": "ping", "data": 2}))
        assert next_of(ws, "pong")["data"] == 2


def test_oversized_message_closes_with_1009(tmp_path: Path) -> None:
    with serving(tmp_path) as server, connect(ws_url(server), max_size=None) as ws:
        receive(ws)
        ws.send("x" * 65_537)
        assert close_code(ws) == (1009, "messages are at most 65536 bytes")


def test_flooding_client_is_closed_with_1008(tmp_path: Path) -> None:
    with serving(tmp_path, ws_message_rate="5") as server, connect(ws_url(server)) as ws:
        receive(ws)
        for n in range(40):  # a burst of 10 is allowed, then 5 per second
            try:
                ws.send(json.dumps({"type": "ping", "data": n}))
            except ConnectionClosed:
                break
        assert close_code(ws) == (1008, "too many messages")


def test_foreign_origin_is_refused_and_own_or_allowed_ones_are_not(tmp_path: Path) -> None:
    with serving(tmp_path, ws_allowed_origins="https://admin.example.com") as server:
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server), origin="https://evil.example.net")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body)["error"]["code"] == "forbidden_origin"
        for origin in (f"http://127.0.0.1:{server.port}", "https://admin.example.com"):
            with connect(ws_url(server), origin=origin) as ws:  # type: ignore[arg-type]
                assert receive(ws)["type"] == "hello"


def test_token_from_header_cookie_or_query(tmp_path: Path) -> None:
    access = json.dumps({"websocket": {"tokens": ["s3cret-token"]}})
    with serving(tmp_path, access=access) as server:
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server))
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as wrong:
            connect(ws_url(server, "?token=nope"))
        assert wrong.value.response.status_code == 401
        for url, headers in [
            (ws_url(server), {"Authorization": "Bearer s3cret-token"}),
            (ws_url(server), {"Cookie": "theme=dark; aegis_token=s3cret-token"}),
            (ws_url(server, "?token=s3cret-token"), {}),
        ]:
            with connect(url, additional_headers=headers) as ws:
                assert receive(ws)["type"] == "hello"


def test_connections_per_address_and_in_total(tmp_path: Path) -> None:
    with serving(tmp_path, ws_max_connections_per_client="2") as server:
        with connect(ws_url(server)) as first, connect(ws_url(server)) as second:
            receive(first), receive(second)
            with connect(ws_url(server)) as third:
                assert close_code(third) == (1008, "at most 2 connections per client address")
        with connect(ws_url(server)) as again:  # the first two are gone
            assert receive(again)["type"] == "hello"
    with serving(tmp_path, ws_max_connections="1") as server, connect(ws_url(server)) as first:
        receive(first)
        with connect(ws_url(server)) as second:
            assert close_code(second) == (1013, "server is at its limit of 1 connections")

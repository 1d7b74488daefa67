"""Real uvicorn processes and the real ``websockets`` client (apps in edge_apps.py):
a client gone is no app error, the stream's path is given up only to the app's
own WebSocket route, and a frame whose figures overflow is still sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.servers import Server, child_environment, uvicorn_server

pytestmark = pytest.mark.slow

TIMEOUT = 10.0
#: uvicorn's three WebSocket implementations.
IMPLEMENTATIONS = ["websockets-sansio", "websockets", "wsproto"]


@contextmanager
def serving(tmp_path: Path, factory: str, *args: str) -> Iterator[Server]:
    app = f"tests.realtime.edge_apps:{factory}"
    with uvicorn_server(app, tmp_path, "--factory", *args, env=child_environment()) as server:
        yield server


def ws_url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def sessions(server: Server, count: int) -> dict[str, dict[str, Any]]:
    """The sessions recorded once ``count`` connections have ended, by path."""
    answer = httpx.get(f"{server.url}/sessions?count={count}", timeout=2 * TIMEOUT)
    assert answer.status_code == 200, answer.text
    return {session["path"]: session for session in answer.json()}


def next_of(connection: ClientConnection, kind: str, limit: int = 50) -> dict[str, Any]:
    for _ in range(limit):
        message = json.loads(connection.recv(timeout=TIMEOUT))
        if message["type"] == kind:
            assert isinstance(message, dict)
            return message
    raise AssertionError(f"no {kind!r} message in {limit}")


@pytest.mark.parametrize("ws", IMPLEMENTATIONS)
def test_a_client_gone_is_not_an_app_error(tmp_path: Path, ws: str) -> None:
    """Starlette turns a send after the client left (uvicorn's ClientDisconnected)
    and a receive after its close into WebSocketDisconnect; escaping the
    endpoint, neither is the app's error. One the app raises itself is."""
    with serving(tmp_path, "gone_app", "--ws", ws) as server:
        with connect(ws_url(server, "/late-send")) as late:
            assert late.recv(timeout=TIMEOUT) == "ready"
        # Closed, the close acknowledged by the server: now the app sends.
        assert httpx.post(f"{server.url}/release", timeout=TIMEOUT).text == "released"

        with connect(ws_url(server, "/echo")) as echo:
            echo.send("hi")
            assert echo.recv(timeout=TIMEOUT) == "hi"
            echo.close(4001)

        with connect(ws_url(server, "/own-disconnect")) as own:
            own.send("bye")
            with pytest.raises(ConnectionClosed):  # uvicorn drops it: the app raised
                own.recv(timeout=TIMEOUT)

        found = sessions(server, 3)
    late_send, echoed, raised = found["/late-send"], found["/echo"], found["/own-disconnect"]
    assert (late_send["close_code"], late_send["error"]) == (1006, "")
    assert late_send["messages_out"] == 1  # "late" never left
    assert (echoed["close_code"], echoed["error"]) == (4001, "")
    assert (echoed["messages_in"], echoed["messages_out"]) == (1, 1)
    assert raised["close_code"] == 1011
    assert raised["error"].startswith("WebSocketDisconnect")


def test_a_catch_all_http_route_leaves_the_stream_alone(tmp_path: Path) -> None:
    """A single-page app's ``GET /{full_path:path}`` takes no handshake: the
    stream stays ours (and unrecorded); plain HTTP on its path is the app's."""
    with serving(tmp_path, "spa_app") as server:
        with connect(ws_url(server, "/ws/metrics")) as stream:
            assert next_of(stream, "hello")["data"]["updateInterval"] == 100
            next_of(stream, "metrics")
        plain = httpx.get(f"{server.url}/ws/metrics", timeout=TIMEOUT)
        assert (plain.status_code, plain.json()) == (200, {"spa": "ws/metrics"})
        assert sessions(server, 1) == {}
        # The catch-all's other paths are the app's too, as before.
        assert httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).json() == {"spa": "metrics"}


def test_the_apps_own_websocket_route_keeps_the_path(tmp_path: Path) -> None:
    """The app's ``@app.websocket("/ws/metrics")`` serves its handshakes, they
    are recorded as its sessions, and plain HTTP there reaches the app."""
    with serving(tmp_path, "own_stream_app") as server:
        with connect(ws_url(server, "/ws/metrics")) as own:
            assert own.recv(timeout=TIMEOUT) == "the app's own"
            own.send("bye")
            with pytest.raises(ConnectionClosed) as closed:
                own.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
        plain = httpx.get(f"{server.url}/ws/metrics", timeout=TIMEOUT)
        assert (plain.status_code, plain.json()) == (404, {"detail": "Not Found"})
        session = sessions(server, 1)["/ws/metrics"]
    assert (session["route"], session["close_code"], session["error"]) == ("/ws/metrics", 4000, "")
    assert (session["messages_in"], session["messages_out"]) == (1, 1)


def test_a_total_that_overflows_is_null_and_the_stream_goes_on(tmp_path: Path) -> None:
    """Two finite values of 1e308 add up to infinity, which JSON cannot carry:
    the total is null, and every frame still reaches the subscriber."""
    with (
        serving(tmp_path, "huge_metrics_app") as server,
        connect(ws_url(server, "/ws/metrics")) as stream,
    ):
        next_of(stream, "hello")
        stream.send(json.dumps({"type": "subscribe", "data": {"customMetrics": True}}))
        next_of(stream, "subscribed")
        frames = (next_of(stream, "metrics")["data"] for _ in range(50))
        # A tick's frame built before the subscription may still come first.
        custom = (data["customMetrics"] for data in frames if "customMetrics" in data)
        for _ in range(3):  # the one built for the subscription, then the ticks'
            metrics = {m["name"]: m for m in next(custom)["metrics"]}
            huge = metrics["huge_parts"]
            assert [point["value"] for point in huge["series"]] == [1e308, 1e308]
            assert huge["total"] is None
            assert metrics["orders"]["total"] == 3

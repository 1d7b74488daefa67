"""Clients that stop reading, on real servers: uvicorn with each of its WebSocket
implementations and the WSGI apps' stream server, spoken to by the real
``websockets`` client on 127.0.0.1.

In each server at once: a client that acknowledges and keeps reading (its
frames must stay fresh and on time), one whose application stops (its
WebSocket layer still reads: a frozen page), one that stops reading the socket
itself (``max_queue=1``: its WebSocket layer stops reading once one message
waits), and one that reads and never acknowledges (a plain tool such as
websocat), which must not be closed for it. The two that stop are closed with
1008 within ``ws_stall_timeout`` plus a small bound, having been sent at most
the acknowledgement window past what they acknowledged."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from aegis_mw import Aegis
from aegis_mw.realtime.flow import ACK_WINDOW
from tests.harness import OPEN_MONITORING_ENV
from tests.realtime.test_hostile_messages import IMPLEMENTATIONS, stream_server
from tests.servers import child_environment, uvicorn_server

pytestmark = pytest.mark.slow

APP = "tests.realtime.ws_app:app"
INTERVAL = 0.1
STALL = 0.5
#: How long after ws_stall_timeout a stopped client may still be open: the
#: close is sent at the deadline; this is for a busy machine.
LATE = 2.0
TIMEOUT = 10.0
#: The frames a client had acknowledged before it stopped.
BEFORE_STOPPING = 3


@dataclass
class Peer:
    """One client connection and what it saw."""

    ws: ClientConnection
    acks: bool = True
    received: int = 0
    last_ack: int = 0
    acked_at: float = 0.0
    #: Per metrics frame: how long after its snapshot it was read, in seconds.
    lateness: list[float] = field(default_factory=list)

    async def next(self) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        assert isinstance(message, dict)
        self.received += 1
        if message["type"] == "metrics":
            stamp = datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))
            self.lateness.append(time.time() - stamp.timestamp())
        if message["type"] == "hello" and "ackWindow" not in message["data"]:
            self.acks = False  # a server that takes no acknowledgements (protocol 1)
        if self.acks:
            self.last_ack = int(message["seq"])
            await self.ws.send(json.dumps({"type": "ack", "data": self.last_ack}))
        self.acked_at = time.monotonic()  # (or would have acknowledged)
        return message

    async def read_for(self, seconds: float) -> None:
        """Read (and acknowledge) every message for ``seconds``: never closed meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.next()


async def open_peer(url: str, *, acks: bool = True, **options: Any) -> Peer:
    peer = Peer(await connect(url, **options), acks=acks)
    hello = await peer.next()
    assert hello["type"] == "hello"
    frames = 0
    while frames < BEFORE_STOPPING:
        frames += (await peer.next())["type"] == "metrics"
    return peer


async def reading(url: str, *, acks: bool) -> Peer:
    """A client that reads (and acknowledges, or not) all along; it is never
    closed meanwhile, and its frames come on time."""
    peer = await open_peer(url, acks=acks)
    await peer.read_for(STALL + LATE)
    expected = (STALL + LATE) / INTERVAL
    late = peer.lateness[BEFORE_STOPPING:]
    assert len(late) >= expected / 2
    assert max(late) < 1.0, late  # fresh, where a backlog would be seconds behind
    await peer.ws.close()
    return peer


async def frozen(url: str) -> None:
    """Its application stops, its WebSocket layer reads on: the close frame
    reaches it, 1008 within the bound after its last acknowledgement."""
    peer = await open_peer(url, max_queue=None)
    await asyncio.wait_for(peer.ws.wait_closed(), STALL + LATE + 1.0)
    closed_after = time.monotonic() - peer.acked_at
    assert STALL <= closed_after <= STALL + LATE
    assert (peer.ws.close_code, peer.ws.close_reason) == (1008, "client stopped reading")


async def drain(ws: ClientConnection) -> tuple[int, Close | None]:
    """Read what waits until the connection closes: the metrics frames counted,
    and the close the server sent."""
    frames = 0
    for _ in range(1000):
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 2.0))
        except ConnectionClosed as closed:
            return frames, closed.rcvd
        frames += message["type"] == "metrics"
    raise AssertionError("still open")


async def stopped(url: str, *, acks: bool) -> None:
    """It stops reading the socket (``max_queue=1``: its WebSocket layer stops
    once a message waits). Once the bound has passed, what waits in its
    buffers is at most the window of frames, then the close."""
    peer = await open_peer(url, acks=acks, max_queue=1)
    stopped_at = time.monotonic()
    # Time-based by nature: the close must be there once this much time has gone.
    await asyncio.sleep(STALL + LATE)
    frames, received = await drain(peer.ws)
    assert received is not None
    assert (received.code, received.reason) == (1008, "client stopped reading")
    assert time.monotonic() - stopped_at < STALL + LATE + 2.0
    if acks:
        assert frames <= ACK_WINDOW
    else:
        # Pongs say what its WebSocket layer read, not what the client took:
        # that layer read up to a window ahead into its own queue before it
        # stopped, and then the window was sent past its last pong.
        assert frames <= 2 * ACK_WINDOW


async def scenario(url: str, *, pings: bool) -> None:
    parts = [
        reading(url, acks=True),
        reading(url, acks=False),  # not closed for it
        frozen(url),
        stopped(url, acks=True),
    ]
    if pings:  # on a server that pings, even a client that never acknowledges is timed
        parts.append(stopped(url, acks=False))
    await asyncio.gather(*parts)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_under_uvicorn(tmp_path: Path, implementation: str) -> None:
    env = child_environment(AEGIS_UPDATE_INTERVAL=str(int(INTERVAL * 1000)),
                            AEGIS_WS_STALL_TIMEOUT=str(STALL), **OPEN_MONITORING_ENV)  # fmt: skip
    with uvicorn_server(APP, tmp_path, "--ws", implementation, env=env) as server:
        url = f"ws://127.0.0.1:{server.port}/ws/metrics"
        asyncio.run(asyncio.wait_for(scenario(url, pings=False), 60))
        log = server.log.text
    assert "Traceback" not in log, log


def test_under_the_wsgi_stream_server(make_aegis: Callable[..., Aegis]) -> None:
    with stream_server(
        make_aegis, update_interval=int(INTERVAL * 1000), ws_stall_timeout=STALL
    ) as url:
        asyncio.run(asyncio.wait_for(scenario(url, pings=True), 60))

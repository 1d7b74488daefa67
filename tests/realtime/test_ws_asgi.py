"""/ws/metrics at the ASGI message level: a client whose sends never complete
(its buffers are full) is closed after ``ws_stall_timeout`` while the others
keep their cadence; one snapshot per tick, one encoding per subscription; the
stream is not recorded as app traffic."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.realtime import sections
from aegis_mw.realtime.flow import ACK_WINDOW
from aegis_mw.types import Message, Scope
from tests.harness import websocket_scope
from tests.realtime.hostile import HOSTILE

pytestmark = pytest.mark.anyio

CONNECT: Message = {"type": "websocket.connect"}


async def app(scope: Scope, receive: Any, send: Any) -> None:  # the app never sees the stream
    raise AssertionError(f"the app was called for {scope['path']}")


class Client:
    """One connection's receive and send, as a server would give them."""

    def __init__(self, *, stall_after: int | None = None) -> None:
        self.sent: list[Message] = []
        self.frames = 0
        self.stall_after = stall_after  # block every send after this many
        self.blocked_at: float | None = None
        self.ended_at: float | None = None
        self.leave = anyio.Event()
        self.ended = anyio.Event()
        self.got_frame = anyio.Event()
        self._connected = False

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return CONNECT
        await self.leave.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if self.stall_after is not None and len(self.sent) > self.stall_after:
            if self.blocked_at is None:
                self.blocked_at = anyio.current_time()
            await anyio.sleep_forever()  # a peer that stopped reading
        if message["type"] == "websocket.send" and '"type":"metrics"' in message["text"]:
            self.frames += 1
            self.got_frame.set()

    async def wait_frames(self, count: int) -> None:
        while self.frames < count:
            self.got_frame = anyio.Event()
            await self.got_frame.wait()

    def numbered(self) -> list[dict[str, Any]]:
        """The messages sent, as they were (each with its ``seq``)."""
        return [json.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send"]

    def texts(self) -> list[dict[str, Any]]:
        """The messages sent, without their ``seq``."""
        return [{k: v for k, v in m.items() if k != "seq"} for m in self.numbered()]


async def connect(middleware: AegisMiddleware, client: Client) -> None:
    await middleware(websocket_scope("/ws/metrics"), client.receive, client.send)
    client.ended_at = anyio.current_time()
    client.ended.set()


async def test_a_stalled_client_is_closed_and_delays_no_one(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(update_interval=100, ws_stall_timeout=0.3, metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    stalled = Client(stall_after=3)  # accept, hello, one frame; then nothing moves
    watcher = Client()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, middleware, stalled)
            group.start_soon(connect, middleware, watcher)
            await stalled.ended.wait()
            # Keep watching a little: the watcher's stream goes on.
            await watcher.wait_frames(watcher.frames + 3)
            watcher.leave.set()
    assert stalled.blocked_at is not None and stalled.ended_at is not None
    stalled_for = stalled.ended_at - stalled.blocked_at
    # Closed once the stall timeout (0.3 s) passed, plus at most the close grace (1 s).
    assert 0.3 <= stalled_for < 3.0
    # The last thing it was sent is the attempt to say why.
    assert stalled.sent[-1] == {
        "type": "websocket.close", "code": 1008, "reason": "client stopped reading",
    }  # fmt: skip
    # Meanwhile the watcher got a frame about every interval (100 ms), not one per
    # stall: at least half the ticks of the stalled client's last stretch.
    watcher_frames = [t for t in watcher.texts() if t["type"] == "metrics"]
    assert len(watcher_frames) >= 3 + int(stalled_for / 0.1 / 2)
    assert aegis.hub.limits.open == 0  # both counted out


async def test_one_snapshot_per_tick_and_one_encoding_per_subscription(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(update_interval=100, metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    clients = [Client() for _ in range(4)]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            for client in clients:
                group.start_soon(connect, middleware, client)
            for client in clients:
                await client.wait_frames(5)
            hub = aegis.hub
            for client in clients:
                client.leave.set()
    frames = sum(client.frames for client in clients)
    # Four clients, one subscription: each tick built and encoded once, the
    # same text handed to all four.
    assert hub.snapshots <= frames / 4 + 2
    assert hub.encoded == hub.snapshots
    by_tick: dict[str, set[str]] = {}
    for client in clients:
        for message in client.sent:
            if message["type"] == "websocket.send" and '"metrics"' in message["text"]:
                stamp = json.loads(message["text"])["timestamp"]
                by_tick.setdefault(stamp, set()).add(message["text"])
    assert all(len(texts) == 1 for texts in by_tick.values())
    # Nobody listens now: no more snapshots are built.
    built = hub.snapshots
    await anyio.sleep(0.3)
    assert hub.snapshots == built
    assert hub.subscriptions == {} and hub.limits.open == 0


async def test_the_stream_is_not_recorded_as_a_session(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(update_interval=100, metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    client = Client()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, middleware, client)
            await client.got_frame.wait()
            assert aegis.realtime().websocket_connections_active == 0
            # ...but counted as a connection to the stream, in its own figure.
            [first] = [m for m in client.texts() if m["type"] == "metrics"][:1]
            assert first["data"]["overview"]["stream_connections_active"] == 1
            client.leave.set()
    assert aegis.force_flush(10)
    assert aegis.realtime().websocket_sessions_total == 0
    assert sections.overview(aegis)["stream_connections_active"] == 0  # it left


class Scripted(Client):
    """A client that sends ``messages`` after connecting, then waits to be let go."""

    def __init__(self, messages: list[dict[str, Any] | str], **options: Any) -> None:
        super().__init__(**options)
        self.inbound: list[Message] = [
            {"type": "websocket.receive", "text": m if isinstance(m, str) else json.dumps(m)}
            for m in messages
        ]

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return CONNECT
        if self.inbound:
            return self.inbound.pop(0)
        await self.leave.wait()
        return {"type": "websocket.disconnect", "code": 1000}


async def test_an_unread_answer_stalls_too(make_aegis: Callable[..., Aegis]) -> None:
    """A client subscribed to nothing that pings and never reads the pong is let go."""
    aegis = make_aegis(update_interval=100, ws_stall_timeout=0.2, metrics_registry="none")
    nothing = {"type": "unsubscribe", "data": ["overview", "alerts"]}
    client = Scripted([nothing, {"type": "ping"}], stall_after=3)  # accept, hello, subscribed
    with anyio.fail_after(20):
        await connect(AegisMiddleware(app, aegis=aegis), client)
    assert client.sent[-1] == {
        "type": "websocket.close", "code": 1008, "reason": "client stopped reading",
    }  # fmt: skip
    assert aegis.hub.limits.open == 0


async def test_a_client_gone_mid_send_ends_quietly(make_aegis: Callable[..., Aegis]) -> None:
    """The server's send raising OSError (uvicorn's ClientDisconnected) ends the
    connection without an error, and it is counted out of the limits."""
    aegis = make_aegis(update_interval=100, metrics_registry="none")

    class Gone(Client):
        async def send(self, message: Message) -> None:
            await super().send(message)
            if message["type"] == "websocket.send" and '"metrics"' in message["text"]:
                raise OSError("connection reset")

    client = Gone()
    with anyio.fail_after(20):
        await connect(AegisMiddleware(app, aegis=aegis), client)
    assert client.frames == 1
    assert aegis.hub.limits.open == 0


async def test_a_slow_message_rate_still_allows_one_message(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(update_interval=100, ws_message_rate=0.1, metrics_registry="none")
    client = Scripted([{"type": "ping", "data": 1}, {"type": "ping", "data": 2}])
    with anyio.fail_after(20):
        await connect(AegisMiddleware(app, aegis=aegis), client)
    texts = client.texts()
    assert texts[0]["type"] == "hello" and {"type": "pong", "data": 1} in texts
    assert client.sent[-1] == {"type": "websocket.close", "code": 1008,
                               "reason": "too many messages"}  # fmt: skip


async def test_history_needs_the_api_rule(make_aegis: Callable[..., Aegis]) -> None:
    """With only an api rule the stream is not open; admitted by the dashboard's
    rule, a client still needs the api's for a get."""
    api_only = make_aegis(metrics_registry="none", access={"api": {"tokens": ["api-token-1234"]}})
    refused = Client()
    await connect(AegisMiddleware(app, aegis=api_only), refused)
    assert refused.sent == [{"type": "websocket.close", "code": 1008}]

    both = make_aegis(
        metrics_registry="none",
        access={"dashboard": {"tokens": ["page-token-1234"]},
                "api": {"tokens": ["api-token-1234"]}},
    )  # fmt: skip
    client = Scripted([{"type": "get", "data": {"section": "overview"}}])
    scope = websocket_scope("/ws/metrics", query_string=b"token=page-token-1234")
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(AegisMiddleware(app, aegis=both), scope, client.receive, client.send)
            await client.wait_frames(1)
            client.leave.set()
    errors = [t["data"] for t in client.texts() if t["type"] == "error"]
    assert errors == [{"code": "forbidden",
                       "message": "the api access rule does not admit this client"}]  # fmt: skip


async def test_one_build_at_a_time_and_never_backwards(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow build for one tick holds the next tick's request until it ends;
    the snapshot never goes back to an older tick."""
    from aegis_mw.realtime import hub as hub_module
    from aegis_mw.realtime import sections

    aegis = make_aegis(metrics_registry="none")
    hub = hub_module.Hub(aegis)
    running = 0
    peak = 0
    release = threading.Event()
    real_build = sections.build

    def slow_build(owner: Aegis, wanted: Any) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        release.wait(10)
        running -= 1
        return real_build(owner, wanted)

    monkeypatch.setattr(sections, "build", slow_build)
    results: dict[int, str] = {}

    async def ask(tick: int) -> None:
        results[tick] = await hub.frame(tick, ("overview",))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(ask, 5)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(ask, 6)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert peak == 1
    assert hub.snapshots == 2 and hub._tick == 6
    assert json.loads(results[6])["type"] == "metrics"


async def test_hostile_messages_get_answers_and_the_connection_stays(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Each is answered (an error, or a pong that echoes what was sent) and the
    connection goes on: the last ping gets its pong, no exception escapes."""
    aegis = make_aegis(update_interval=100, ws_message_rate=1000, metrics_registry="none")
    client = Scripted([text for text, _ in HOSTILE] + [{"type": "ping", "data": "still here"}])
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, AegisMiddleware(app, aegis=aegis), client)
            while {"type": "pong", "data": "still here"} not in client.texts():
                await client.wait_frames(client.frames + 1)
            client.leave.set()
    answers = [t for t in client.texts() if t["type"] in ("error", "pong")]
    for (text, code), answer in zip(HOSTILE, answers, strict=False):
        if code is None:
            assert answer == {"type": "pong", "data": json.loads(text)["data"]}
        else:
            assert answer["type"] == "error" and answer["data"]["code"] == code, text[:60]
    assert len(answers) == len(HOSTILE) + 1
    assert all(m["type"] != "websocket.close" for m in client.sent)


class Acking(Client):
    """A client that acknowledges what it is sent, one message at a time,
    ``delay`` seconds after the last (its processing time), and stops after
    ``stop_after`` acknowledgements (it stopped reading)."""

    def __init__(self, *, delay: float = 0.0, stop_after: int | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.stop_after = stop_after
        self.last_seq = 0
        self.acked = 0
        self.acked_at = 0.0
        self.most_outstanding = 0
        self.arrived = anyio.Event()

    async def send(self, message: Message) -> None:
        if message["type"] == "websocket.send":
            sent = json.loads(message["text"])
            if sent["type"] == "hello" and "ackWindow" not in sent["data"]:
                self.stop_after = 0  # a server that takes no acknowledgements (protocol 1)
            self.last_seq = sent.get("seq", self.last_seq + 1)
            self.most_outstanding = max(self.most_outstanding, self.last_seq - self.acked)
            self.arrived.set()
        await super().send(message)

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return CONNECT
        while not self.leave.is_set():
            if self.stop_after is not None and self.acked >= self.stop_after:
                await self.leave.wait()
                break
            if self.last_seq <= self.acked:
                self.arrived = anyio.Event()
                await self.arrived.wait()
                continue
            if self.delay:
                await anyio.sleep(self.delay)  # processing one message (not a synchronisation)
            self.acked += 1
            self.acked_at = anyio.current_time()
            return {"type": "websocket.receive", "text": json.dumps({"type": "ack",
                                                                     "data": self.acked})}  # fmt: skip
        return {"type": "websocket.disconnect", "code": 1000}

    def frame_stamps(self) -> list[str]:
        return [t["timestamp"] for t in self.texts() if t["type"] == "metrics"]


async def test_a_client_that_stops_acknowledging_is_held_then_closed(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Its sends never block (the server's buffers would take megabytes): it is
    its acknowledgement that stops. At most the window is sent past it, then
    nothing, and after ws_stall_timeout it is closed; an acknowledging
    neighbour keeps its cadence."""
    aegis = make_aegis(update_interval=100, ws_stall_timeout=0.4, metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    stopped = Acking(stop_after=3)  # hello and two frames, then nothing
    watcher = Acking()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, middleware, stopped)
            group.start_soon(connect, middleware, watcher)
            with anyio.fail_after(5):
                await stopped.ended.wait()
            await watcher.wait_frames(watcher.frames + 3)
            watcher.leave.set()
    assert stopped.ended_at is not None
    stalled_for = stopped.ended_at - stopped.acked_at
    assert 0.4 <= stalled_for < 0.4 + 2.0  # the deadline, and a busy machine's delay
    assert stopped.last_seq - stopped.acked <= ACK_WINDOW  # held past the window
    assert stopped.sent[-1] == {
        "type": "websocket.close", "code": 1008, "reason": "client stopped reading",
    }  # fmt: skip
    # The neighbour: a frame about every interval while the other one stalled.
    assert len(watcher.frame_stamps()) >= 3 + int(stalled_for / 0.1 / 2)
    assert watcher.most_outstanding <= ACK_WINDOW
    assert aegis.hub.limits.open == 0


async def test_a_slow_client_is_skipped_to_the_newest_frame(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A client taking 0.25 s per message at 100 ms ticks: never more than the
    window unacknowledged, frames skipped (the newest sent when the window
    opens), and not closed: its acknowledgement keeps moving."""
    aegis = make_aegis(update_interval=100, ws_stall_timeout=1.0, metrics_registry="none")
    slow = Acking(delay=0.25)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, AegisMiddleware(app, aegis=aegis), slow)
            await slow.wait_frames(ACK_WINDOW)
            started, frames = anyio.current_time(), slow.frames
            await slow.wait_frames(frames + 8)
            elapsed = anyio.current_time() - started
            slow.leave.set()
    assert slow.most_outstanding <= ACK_WINDOW
    assert all(m["type"] != "websocket.close" for m in slow.sent)
    # Past the window, a frame waits for an acknowledgement (one per 0.25 s),
    # not for the next tick: 8 frames took about 20 ticks, most of them skipped.
    assert elapsed >= 8 * 0.25 * 0.9
    stamps = slow.frame_stamps()
    assert len(set(stamps)) == len(stamps)  # each the tick's newest, none twice


async def test_a_client_that_never_acknowledges_is_not_closed_for_it(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A plain reader (websocat, say) never acknowledges: it gets every tick's
    frame, unheld, for many stall timeouts."""
    aegis = make_aegis(update_interval=100, ws_stall_timeout=0.2, metrics_registry="none")
    reader = Client()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, AegisMiddleware(app, aegis=aegis), reader)
            await reader.wait_frames(12)  # 1.2 s: six stall timeouts
            reader.leave.set()
    assert all(m["type"] != "websocket.close" for m in reader.sent)


async def test_messages_are_numbered_and_hello_says_how_to_acknowledge(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(update_interval=100, ws_stall_timeout=2.5, metrics_registry="none")
    client = Scripted([{"type": "ping", "data": 1}])
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, AegisMiddleware(app, aegis=aegis), client)
            await client.wait_frames(3)
            client.leave.set()
    sent = client.numbered()
    assert [m["seq"] for m in sent] == list(range(1, len(sent) + 1))
    hello = sent[0]["data"]
    assert hello["protocolVersion"] == 2
    assert hello["ackWindow"] == ACK_WINDOW and hello["stallTimeout"] == 2500


async def test_acknowledgements_that_move_are_free_of_the_rate_limit(
    make_aegis: Callable[..., Aegis],
) -> None:
    """At one message a second (bursts of 2), a client acknowledging ten
    frames a second is not closed; one acknowledging what it acknowledged
    before is counted, as is one past the last message sent (an error)."""
    aegis = make_aegis(update_interval=100, ws_message_rate=1, metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    acking = Acking()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(connect, middleware, acking)
            await acking.wait_frames(15)
            acking.leave.set()
    assert all(m["type"] != "websocket.close" for m in acking.sent)

    again = Scripted(
        [{"type": "ack", "data": 1}, {"type": "ack", "data": 1000}, {"type": "ack", "data": 1},
         {"type": "ack", "data": 1}]
    )  # fmt: skip
    with anyio.fail_after(20):
        await connect(middleware, again)
    texts = again.texts()
    assert {"type": "error", "data": {"code": "invalid_field",
            "message": texts[-1]["data"]["message"]}} in texts  # fmt: skip
    assert "past the last message sent" in texts[-1]["data"]["message"]
    assert again.sent[-1] == {"type": "websocket.close", "code": 1008,
                              "reason": "too many messages"}  # fmt: skip


async def test_frames_are_built_outside_the_servers_shared_thread_limiter(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Every token of the limiter the app's ``def`` endpoints run under is held
    (a busy app): the stream still sends its frames, built in a thread of the
    pipeline's own render lane."""
    import anyio.to_thread

    aegis = make_aegis(update_interval=100)
    middleware = AegisMiddleware(app, aegis=aegis)
    default = anyio.to_thread.current_default_thread_limiter()
    default.total_tokens = 1
    release = threading.Event()
    client = Client()
    async with anyio.create_task_group() as group:
        group.start_soon(anyio.to_thread.run_sync, release.wait)  # the app's busy thread
        await anyio.wait_all_tasks_blocked()
        assert default.available_tokens == 0
        group.start_soon(connect, middleware, client)
        try:
            with anyio.fail_after(10):
                await client.wait_frames(2)
        finally:
            client.leave.set()
            release.set()
    assert default.borrowed_tokens == 0

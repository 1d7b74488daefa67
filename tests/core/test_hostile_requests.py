"""Hostile or odd requests through the middleware, on both request paths: a scanner's
``GET /anything%00``, raw scopes with undecodable paths, apps sending float or enum
statuses. Each is stored repaired or counted alone; the flush around it succeeds."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded, recorded_sessions
from tests.core.faulty_sinks import accounted, drops
from tests.harness import Exchange, call, http_scope, websocket_scope

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("hot_path")]


def raw_scope(path: Any, raw_path: bytes, **extra: Any) -> dict[str, Any]:
    """An HTTP scope as a server (or a raw caller) would build it, ``path`` as given."""
    scope = http_scope("/", **extra)
    scope["path"], scope["raw_path"] = path, raw_path
    return scope


async def not_found(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


HOSTILE = [
    ("/anything\x00", b"/anything%00", "/anything%00"),
    ("/caf\udce9", b"/caf%E9", "/caf%E9"),  # a server decoding with surrogateescape
    (b"/caf\xe9", b"/caf%E9", "/caf%E9"),  # a raw scope with a bytes path
    ("/\ud800x", b"/%ED%A0%80x", "/%ED%A0%80x"),
    ("/" + "y" * 600 + "\x00", b"/", "/" + "y" * 511),  # cut to max_path_length first
]


async def test_hostile_paths_are_stored_repaired_and_recording_goes_on(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(flush_interval=3600)
    app = AegisMiddleware(not_found, aegis=aegis)

    for path, raw_path, _ in HOSTILE:
        exchange = await call(app, raw_scope(path, raw_path))
        assert exchange.status == 404
    await call(app, http_scope("/fine"))

    records = recorded(aegis)
    assert [record.path for record in records] == [kept for *_, kept in HOSTILE] + ["/fine"]
    assert aegis.stats().dropped == drops()


STATUSES: list[Any] = [201, 200.0, HTTPStatus.OK, True, "200", 404.0, 503]


async def test_float_and_enum_statuses_are_ints_and_a_bad_one_costs_only_itself(
    make_aegis: Callable[..., Aegis],
) -> None:
    """200.0 and HTTPStatus.OK are stored as 200; a bool or a str status is one
    invalid item; the flush succeeds and keeps every other request."""
    aegis = make_aegis(flush_interval=3600)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = STATUSES[int(scope["path"][1:])]
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = AegisMiddleware(app, aegis=aegis)
    for index in range(len(STATUSES)):
        await call(wrapped, http_scope(f"/{index}"))

    records = recorded(aegis)
    assert [(record.path, record.status) for record in records] == [
        ("/0", 201), ("/1", 200), ("/2", 200), ("/5", 404), ("/6", 503),
    ]  # fmt: skip
    assert {type(record.status) for record in records} == {int}
    stats = aegis.stats()
    assert stats.dropped == drops(invalid=2)
    assert accounted(stats) == stats.offered == len(STATUSES)
    realtime = aegis.realtime()
    assert realtime.total_requests == 5
    assert realtime.status_totals == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}


async def test_a_refused_handshake_to_a_nul_path_is_a_stored_session(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(flush_interval=3600)

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    scope = websocket_scope("/")
    scope["path"], scope["raw_path"] = "/chat\x00x", b"/chat%00x"
    await AegisMiddleware(refuse, aegis=aegis)(
        scope, Exchange([{"type": "websocket.connect"}]).receive, Exchange().send
    )

    [session] = recorded_sessions(aegis)
    assert (session.path, session.accepted, session.close_code) == ("/chat%00x", False, 1008)

"""Excluded paths: literal and glob patterns, runtime additions, and the middleware
leaving excluded requests completely alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.core.paths import PathFilter
from aegis_mw.testing import recorded, recorded_sessions
from tests.harness import Exchange, call, http_scope, websocket_scope


def matches(patterns: list[str], path: str) -> bool:
    return PathFilter(patterns).excluded(path)


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("/health", True),
        ("/health/", False),
        ("/healthz", False),
        ("/Health", False),
        ("/api/health", False),
        ("", False),
    ],
)
def test_literal_pattern(path: str, excluded: bool) -> None:
    """A literal pattern excludes exactly that path (case-sensitive, no prefix match)."""
    assert matches(["/health"], path) is excluded


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        ("/static/*", "/static/app.css", True),
        ("/static/*", "/static/js/app.js", True),  # * crosses slashes, as in fnmatch
        ("/static/*", "/static/", True),
        ("/static/*", "/static", False),
        ("/static/*", "/Static/app.css", False),
        ("/static/*", "/api/static/app.css", False),
        ("/v?/ping", "/v1/ping", True),
        ("/v?/ping", "/v10/ping", False),
        ("/[ab]x", "/ax", True),
        ("/[ab]x", "/cx", False),
        ("/[!ab]x", "/cx", True),
        ("/[!ab]x", "/ax", False),
        ("*.map", "/static/app.js.map", True),
        ("*.map", "/static/app.js", False),
        ("/a/*/b/*", "/a/1/b/2", True),
        ("/a/*/b/*", "/a/1/c/2", False),
        # Regex metacharacters in a glob are literal.
        ("/files/(draft)+*", "/files/(draft)+1", True),
        ("/files/(draft)+*", "/files/draftdraft1", False),
        ("/dots.*", "/dotsXjs", False),
    ],
)
def test_glob_pattern(pattern: str, path: str, excluded: bool) -> None:
    """Glob patterns follow fnmatch: *, ?, [set], [!set]; the whole path must match."""
    assert matches([pattern], path) is excluded


def test_literals_and_several_globs_together() -> None:
    """Literals and several globs combine; each still matches only what it should."""
    path_filter = PathFilter(["/health", "/static/*", "/a/*/b/*", "/v?/ping"])
    assert path_filter.literal == frozenset({"/health"})
    assert path_filter.match is not None
    excluded = ["/health", "/static/x", "/a/1/b/2", "/v2/ping"]
    kept = ["/healthz", "/static", "/a/1/b", "/v22/ping", "/", "/api"]
    assert [p for p in excluded + kept if path_filter.excluded(p)] == excluded


def test_no_globs_means_no_regex() -> None:
    """Without globs the filter is a set lookup only; an empty filter excludes nothing."""
    path_filter = PathFilter(["/a", "/b"])
    assert path_filter.match is None
    assert path_filter.literal == frozenset({"/a", "/b"})
    empty = PathFilter()
    assert (empty.patterns, empty.literal, empty.match) == ((), frozenset(), None)
    assert not empty.excluded("/")


def test_add_keeps_order_and_drops_duplicates() -> None:
    """add() appends new patterns in order, once each, and takes effect at once."""
    path_filter = PathFilter(["/a", "/s/*"])
    assert not path_filter.excluded("/b")
    path_filter.add("/b", "/a", "/t/*", "/s/*")
    assert path_filter.patterns == ("/a", "/s/*", "/b", "/t/*")
    assert path_filter.literal == frozenset({"/a", "/b"})
    assert all(path_filter.excluded(p) for p in ("/a", "/b", "/s/1", "/t/1"))
    assert not path_filter.excluded("/u/1")


def test_settings_exclude_paths_reach_the_filter(make_aegis: Callable[..., Aegis]) -> None:
    """exclude_paths (here as comma-separated text) becomes the Aegis path filter."""
    aegis = make_aegis(exclude_paths="/health, /static/*")
    assert aegis.excluded_paths.patterns == ("/health", "/static/*")
    assert aegis.excluded_paths.excluded("/static/a.css")


def test_aegis_exclude_adds_at_runtime(make_aegis: Callable[..., Aegis]) -> None:
    """Aegis.exclude() adds literal paths and globs to the live filter."""
    aegis = make_aegis(exclude_paths=["/health"])
    aegis.exclude("/metrics", "/internal/*")
    assert aegis.excluded_paths.patterns == ("/health", "/metrics", "/internal/*")
    assert aegis.excluded_paths.excluded("/internal/debug/vars")
    assert not aegis.excluded_paths.excluded("/api/internal")


# -- through the middleware --------------------------------------------------------


class RecordingApp:
    """An app that remembers exactly what it was called with."""

    def __init__(self, aegis: Aegis) -> None:
        self.aegis = aegis
        self.calls: list[tuple[Any, Any, Any]] = []
        self.in_flight_seen: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((scope, receive, send))
        self.in_flight_seen.append(self.aegis.aggregates.in_flight_now())
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_excluded_request_passes_through_untouched(
    make_aegis: Callable[..., Aegis],
) -> None:
    """An excluded path reaches the app with the server's own scope, receive and send,
    is not counted in flight, and leaves no record or realtime trace.
    """
    aegis = make_aegis(exclude_paths=["/healthz", "/static/*"])
    app = RecordingApp(aegis)
    middleware = AegisMiddleware(app, aegis=aegis)
    for path in ("/healthz", "/static/app.css"):
        exchange = Exchange()
        scope = http_scope(path)
        receive, send = exchange.receive, exchange.send
        await middleware(scope, receive, send)
        called_scope, called_receive, called_send = app.calls[-1]
        assert called_scope is scope
        assert called_receive is receive
        assert called_send is send
        assert exchange.sent == [
            {"type": "http.response.start", "status": 204, "headers": [(b"x-a", b"1")]},
            {"type": "http.response.body", "body": b""},
        ]
    assert app.in_flight_seen == [0, 0]
    assert recorded(aegis) == []
    assert aegis.realtime().total_requests == 0
    assert aegis.stats().offered == 0

    # A path that is not excluded is wrapped, counted and recorded.
    exchange = Exchange()
    receive, send = exchange.receive, exchange.send
    await middleware(http_scope("/api"), receive, send)
    _, called_receive, called_send = app.calls[-1]
    assert called_receive is not receive
    assert called_send is not send
    assert app.in_flight_seen == [0, 0, 1]
    assert [(r.path, r.status) for r in recorded(aegis)] == [("/api", 204)]


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_runtime_exclusion_applies_to_an_existing_middleware(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Aegis.exclude() after the middleware was built applies to the next request."""
    aegis = make_aegis()
    middleware = AegisMiddleware(RecordingApp(aegis), aegis=aegis)
    await call(middleware, http_scope("/ping"))
    await call(middleware, http_scope("/debug/x"))
    aegis.exclude("/ping", "/debug/*")
    await call(middleware, http_scope("/ping"))
    await call(middleware, http_scope("/debug/y"))
    await call(middleware, http_scope("/pong"))
    assert [r.path for r in recorded(aegis)] == ["/ping", "/debug/x", "/pong"]


@pytest.mark.anyio
async def test_excluded_websocket_is_not_recorded(make_aegis: Callable[..., Aegis]) -> None:
    """An excluded WebSocket path is passed through and leaves no session record."""
    aegis = make_aegis(exclude_paths=["/ws/*"])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    middleware = AegisMiddleware(app, aegis=aegis)
    excluded = await call(
        middleware, websocket_scope("/ws/live"), Exchange([{"type": "websocket.connect"}])
    )
    assert [m["type"] for m in excluded.sent] == ["websocket.accept", "websocket.close"]
    await call(middleware, websocket_scope("/chat"), Exchange([{"type": "websocket.connect"}]))
    assert [s.path for s in recorded_sessions(aegis)] == ["/chat"]
    assert aegis.realtime().websocket_sessions_total == 1

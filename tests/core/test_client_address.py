"""Client addresses behind trusted proxies: who may speak for the client, and how far.

Unit tests drive ``ClientAddressResolver`` directly; the end-to-end ones send
requests through ``AegisMiddleware`` and read ``client_ip`` from the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.core.client_address import _CACHE_LIMIT, ClientAddressResolver, parse_networks
from aegis_mw.testing import recorded, recorded_sessions
from tests.harness import Exchange, call, http_scope, websocket_scope

TRUSTED = ["10.0.0.0/8", "fd00::/8"]


def xff(*trusted: str) -> ClientAddressResolver:
    return ClientAddressResolver(list(trusted or TRUSTED), "x-forwarded-for")


def rfc7239(*trusted: str) -> ClientAddressResolver:
    return ClientAddressResolver(list(trusted or TRUSTED), "forwarded")


# -- the configuration -----------------------------------------------------------


def test_parse_networks_accepts_hosts_and_networks() -> None:
    """CIDRs parse non-strictly (host bits allowed); a bare address is a /32 or /128."""
    networks = parse_networks(["10.1.2.3/8", " 192.168.0.1 ", "fd00::/8"])
    assert [str(n) for n in networks] == ["10.0.0.0/8", "192.168.0.1/32", "fd00::/8"]


def test_parse_networks_names_the_bad_entry() -> None:
    """A bad CIDR raises ValueError naming it."""
    with pytest.raises(ValueError) as caught:
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])
    assert str(caught.value).startswith("'10.0.0.0/33' is not an IP network in CIDR form (")


def test_resolver_is_disabled_without_trusted_proxies() -> None:
    """No trusted proxies: the middleware never looks at forwarding headers."""
    assert ClientAddressResolver([]).enabled is False
    assert xff().enabled is True


def test_header_name_is_case_insensitive_in_configuration() -> None:
    """The configured header is matched in lower case, as ASGI sends header names."""
    resolver = ClientAddressResolver(TRUSTED, "X-Forwarded-For")
    assert resolver.header_bytes == b"x-forwarded-for"


# -- peer trust (request path) -----------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.0.0.5", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.1", False),
        ("fd00::1", True),
        ("2001:db8::1", False),
        ("not-an-address", False),
        ("", False),
    ],
)
def test_peer_is_trusted(peer: str, trusted: bool) -> None:
    """Only peers inside a configured network are trusted; garbage never is."""
    assert xff().peer_is_trusted(peer) is trusted


def test_peer_cache_stays_bounded() -> None:
    """Thousands of distinct peers never grow the cache past its limit, and answers stay right."""
    resolver = xff()
    largest = 0
    for n in range(3 * _CACHE_LIMIT + 17):
        trusted_peer = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        other_peer = f"172.{16 + (n >> 16 & 15)}.{n >> 8 & 255}.{n & 255}"
        assert resolver.peer_is_trusted(trusted_peer) is True
        assert resolver.peer_is_trusted(other_peer) is False
        largest = max(largest, len(resolver._trusted_cache))
    assert 0 < largest <= _CACHE_LIMIT
    # Cached answers are still right after the cache was cycled.
    assert resolver.peer_is_trusted("10.0.0.0") is True
    assert resolver.peer_is_trusted("172.16.0.0") is False


# -- header collection (request path) -------------------------------------------------


def test_forwarded_value_joins_every_header_of_that_name() -> None:
    """Several X-Forwarded-For headers are joined in order; other headers are ignored."""
    headers = [
        (b"host", b"example.org"),
        (b"x-forwarded-for", b"198.51.100.1, 203.0.113.9"),
        (b"forwarded", b"for=192.0.2.1"),
        (b"X-Forwarded-For", b"10.0.0.7"),
    ]
    assert xff().forwarded_value(headers) == "198.51.100.1, 203.0.113.9,10.0.0.7"
    assert rfc7239().forwarded_value(headers) == "for=192.0.2.1"
    assert xff().forwarded_value([(b"host", b"example.org")]) is None


def test_joined_headers_resolve_like_one_chain() -> None:
    """Two X-Forwarded-For headers resolve as one comma-separated chain."""
    resolver = xff()
    value = resolver.forwarded_value(
        [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.9"), (b"x-forwarded-for", b"10.0.0.7")]
    )
    assert resolver.resolve("10.0.0.5", value) == "203.0.113.9"


# -- X-Forwarded-For resolution (flusher) ---------------------------------------------


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        # No header: the peer.
        (None, "10.0.0.5"),
        # One hop.
        ("203.0.113.9", "203.0.113.9"),
        # Trusted hops on the right are skipped.
        ("203.0.113.9, 10.0.0.7", "203.0.113.9"),
        ("203.0.113.9,10.0.0.7,10.9.9.9", "203.0.113.9"),
        # What the client wrote itself (left of the first untrusted hop) is never taken.
        ("6.6.6.6, 203.0.113.9, 10.0.0.7", "203.0.113.9"),
        ("10.1.1.1, 6.6.6.6, 203.0.113.9", "203.0.113.9"),
        # All hops trusted: the leftmost.
        ("10.1.1.1, 10.2.2.2, 10.3.3.3", "10.1.1.1"),
        # Garbage stops the walk at the last hop a trusted proxy vouched for.
        ("203.0.113.9, garbage, 10.0.0.7", "10.0.0.7"),
        ("203.0.113.9, , 10.0.0.7", "10.0.0.7"),
        ("203.0.113.9, unknown", "10.0.0.5"),
        ("garbage", "10.0.0.5"),
        ("", "10.0.0.5"),
        # Ports on IPv4 entries are dropped.
        ("203.0.113.9:8080, 10.0.0.7:443", "203.0.113.9"),
        # IPv6, bare, bracketed, bracketed with a port.
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:4711, [fd00::2]:443", "2001:db8::1"),
        ("2001:db8::1, fd00::2", "2001:db8::1"),
        # Addresses come out normalised.
        ("2001:DB8:0:0::1", "2001:db8::1"),
        # Whitespace around entries is ignored.
        ("  203.0.113.9  ,\t10.0.0.7 ", "203.0.113.9"),
    ],
)
def test_x_forwarded_for_chain(forwarded: str | None, client: str) -> None:
    """The chain is walked from the right, skipping trusted hops, stopping at garbage."""
    assert xff().resolve("10.0.0.5", forwarded) == client


def test_unix_trusts_connections_without_a_peer_address_only() -> None:
    """``unix`` (any case, beside CIDRs or alone) trusts a connection with no peer
    address (a Unix socket: None, or the empty REMOTE_ADDR of a WSGI server);
    without it such a connection is never trusted, and it trusts no address."""
    assert xff("unix").enabled and xff("UNIX", "10.0.0.0/8").enabled
    assert xff("unix").peer_is_trusted(None) and xff(" Unix ").peer_is_trusted("")
    assert not xff("unix").peer_is_trusted("127.0.0.1")
    assert xff("unix", "10.0.0.0/8").peer_is_trusted("10.9.9.9")
    assert not xff().peer_is_trusted(None) and not xff().peer_is_trusted("")


def test_resolve_without_a_peer() -> None:
    """A connection without a peer address (a Unix socket) still resolves the header."""
    resolver = xff()
    assert resolver.resolve(None, "203.0.113.9, 10.0.0.7") == "203.0.113.9"
    assert resolver.resolve(None, "garbage") is None
    assert resolver.resolve(None, None) is None


# -- RFC 7239 Forwarded (flusher) -------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        ("for=203.0.113.9", "203.0.113.9"),
        ("for=203.0.113.9;proto=https;by=10.0.0.5", "203.0.113.9"),
        ('for=198.51.100.17, for="10.0.0.9:8080";proto=http', "198.51.100.17"),
        ('For="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]", for="[fd00::3]:80"', "2001:db8:cafe::17"),
        ("proto=https;for=203.0.113.9;host=example.org", "203.0.113.9"),
        ("for=6.6.6.6, for=203.0.113.9, for=10.0.0.7", "203.0.113.9"),
        ("for=10.1.1.1, for=10.2.2.2", "10.1.1.1"),
        # Obfuscated identifiers and "unknown" stop the walk.
        ("for=203.0.113.9, for=_hidden, for=10.0.0.7", "10.0.0.7"),
        ("for=unknown", "10.0.0.5"),
        # Elements without a for= parameter are skipped.
        ("proto=https;by=10.0.0.5", "10.0.0.5"),
    ],
)
def test_rfc7239_forwarded(forwarded: str, client: str) -> None:
    """for= values, quoted or not, with brackets and ports, are walked like X-Forwarded-For."""
    assert rfc7239().resolve("10.0.0.5", forwarded) == client


def test_forwarded_mode_ignores_x_forwarded_for() -> None:
    """With forwarded_header='forwarded', an X-Forwarded-For header is not consulted."""
    resolver = rfc7239()
    headers = [(b"x-forwarded-for", b"203.0.113.9")]
    assert resolver.forwarded_value(headers) is None
    assert resolver.resolve("10.0.0.5", resolver.forwarded_value(headers)) == "10.0.0.5"


# -- end to end through the middleware --------------------------------------------------


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_trusted_proxy_header_is_used(make_aegis: Callable[..., Aegis]) -> None:
    """A request from a trusted proxy is recorded with the forwarded client address."""
    aegis = make_aegis(trusted_proxies=["10.0.0.0/8"])
    scope = http_scope(
        "/a", client=("10.0.0.5", 1234), headers=[(b"x-forwarded-for", b"203.0.113.9")]
    )
    exchange = await call(AegisMiddleware(ok_app, aegis=aegis), scope)
    assert exchange.status == 200
    assert [r.client_ip for r in recorded(aegis)] == ["203.0.113.9"]


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_untrusted_peer_cannot_spoof(make_aegis: Callable[..., Aegis]) -> None:
    """A peer outside the trusted networks is recorded as itself whatever its header says."""
    aegis = make_aegis(trusted_proxies=["10.0.0.0/8"])
    middleware = AegisMiddleware(ok_app, aegis=aegis)
    spoof = [(b"x-forwarded-for", b"10.0.0.1, 203.0.113.9")]
    await call(middleware, http_scope("/a", client=("198.51.100.7", 1234), headers=spoof))
    await call(middleware, http_scope("/b", client=None, headers=spoof))
    records = sorted(recorded(aegis), key=lambda r: r.path)
    assert [(r.path, r.client_ip) for r in records] == [("/a", "198.51.100.7"), ("/b", None)]


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_without_trusted_proxies_headers_are_ignored(
    make_aegis: Callable[..., Aegis],
) -> None:
    """With no trusted_proxies configured even a private peer is recorded as itself."""
    aegis = make_aegis()
    scope = http_scope(
        "/a", client=("10.0.0.5", 1234), headers=[(b"x-forwarded-for", b"203.0.113.9")]
    )
    await call(AegisMiddleware(ok_app, aegis=aegis), scope)
    assert [r.client_ip for r in recorded(aegis)] == ["10.0.0.5"]


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
@pytest.mark.parametrize("trusted", [["10.0.0.0/8"], ["unix"]])
async def test_a_proxy_on_a_unix_socket_is_trusted_only_as_unix(
    make_aegis: Callable[..., Aegis], trusted: list[str]
) -> None:
    """uvicorn --uds gives no client: the header is believed, for the record and for
    allow_ips, only when ``unix`` is among the trusted proxies."""
    aegis = make_aegis(
        trusted_proxies=trusted, access={"metrics": {"allow_ips": ["203.0.113.0/24"]}}
    )
    middleware = AegisMiddleware(ok_app, aegis=aegis)
    headers = [(b"x-forwarded-for", b"203.0.113.9")]
    await call(middleware, http_scope("/a", client=None, headers=headers))
    metrics = await call(middleware, http_scope("/metrics", client=None, headers=headers))
    expected = ("203.0.113.9", 200) if trusted == ["unix"] else (None, 403)
    assert ([r.client_ip for r in recorded(aegis)], metrics.status) == ([expected[0]], expected[1])


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_chain_through_two_proxies_end_to_end(make_aegis: Callable[..., Aegis]) -> None:
    """Two X-Forwarded-For headers through a trusted proxy resolve to the first untrusted hop."""
    aegis = make_aegis(trusted_proxies=["10.0.0.0/8"])
    headers = [
        (b"x-forwarded-for", b"6.6.6.6, 203.0.113.9"),
        (b"x-forwarded-for", b"10.0.0.7"),
    ]
    await call(
        AegisMiddleware(ok_app, aegis=aegis),
        http_scope("/a", client=("10.0.0.5", 1234), headers=headers),
    )
    assert [r.client_ip for r in recorded(aegis)] == ["203.0.113.9"]


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_rfc7239_end_to_end(make_aegis: Callable[..., Aegis]) -> None:
    """With forwarded_header='forwarded' the Forwarded header is used, X-Forwarded-For not."""
    aegis = make_aegis(trusted_proxies=["10.0.0.0/8"], forwarded_header="forwarded")
    middleware = AegisMiddleware(ok_app, aegis=aegis)
    await call(
        middleware,
        http_scope(
            "/rfc",
            client=("10.0.0.5", 1234),
            headers=[
                (b"x-forwarded-for", b"6.6.6.6"),
                (b"forwarded", b'for="[2001:db8::17]:4711";proto=https'),
            ],
        ),
    )
    await call(
        middleware,
        http_scope("/xff", client=("10.0.0.5", 1234), headers=[(b"x-forwarded-for", b"6.6.6.6")]),
    )
    records = sorted(recorded(aegis), key=lambda r: r.path)
    assert [(r.path, r.client_ip) for r in records] == [
        ("/rfc", "2001:db8::17"),
        ("/xff", "10.0.0.5"),
    ]


@pytest.mark.anyio
async def test_websocket_session_uses_the_forwarded_address(
    make_aegis: Callable[..., Aegis],
) -> None:
    """WebSocket sessions resolve the client behind a trusted proxy like requests do."""
    aegis = make_aegis(trusted_proxies=["10.0.0.0/8"])

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    scope = websocket_scope(
        "/ws", client=("10.0.0.5", 1234), headers=[(b"x-forwarded-for", b"203.0.113.9")]
    )
    await call(
        AegisMiddleware(ws_app, aegis=aegis), scope, Exchange([{"type": "websocket.connect"}])
    )
    assert [(s.path, s.client_ip) for s in recorded_sessions(aegis)] == [("/ws", "203.0.113.9")]


def test_ipv4_mapped_peers_match_ipv4_networks() -> None:
    """A dual-stack listener reports ::ffff:10.0.0.5; it is the IPv4 proxy 10.0.0.5."""
    resolver = ClientAddressResolver(["10.0.0.0/8"])
    assert resolver.peer_is_trusted("::ffff:10.0.0.5")
    assert not resolver.peer_is_trusted("::ffff:192.0.2.1")
    assert resolver.resolve("::ffff:10.0.0.5", "::ffff:203.0.113.7") == "203.0.113.7"

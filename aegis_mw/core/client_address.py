"""Who the client is: the peer address, or a forwarded one from trusted proxies.

``X-Forwarded-For``/``Forwarded`` are believed only when the connection comes
from a configured proxy network, and the chain is walked from the right so an
address a client wrote itself is never taken while a trusted hop follows it.
The request path only checks the peer (cached) and copies the header; parsing
happens in the flusher. A proxy that reaches the app over a Unix socket has no
address: the entry ``unix`` trusts such connections (no peer address at all).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CACHE_LIMIT = 4096
#: The ``trusted_proxies`` entry for connections without a peer address (a Unix socket).
UNIX_PEERS = "unix"


def split_entries(entries: Iterable[str]) -> tuple[bool, list[str]]:
    """``trusted_proxies`` as (whether ``unix`` is among them, the CIDRs)."""
    cidrs = [entry.strip() for entry in entries]
    unix = [entry for entry in cidrs if entry.lower() == UNIX_PEERS]
    return bool(unix), [entry for entry in cidrs if entry.lower() != UNIX_PEERS]


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings; raises ``ValueError`` naming the first bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{cidr!r} is not an IP network in CIDR form ({exc})") from None
    return tuple(networks)


def _parse_address(text: str) -> IPAddress | None:
    """An address from a header entry, tolerating quotes, brackets and ports."""
    text = text.strip().strip('"')
    if text.startswith("["):  # "[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # "192.0.2.1:8080"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; they are IPv4.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _forwarded_for_values(value: str) -> list[str]:
    """The ``for=`` parameters of an RFC 7239 ``Forwarded`` header, in order."""
    found = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.partition("=")
            if name.strip().lower() == "for":
                found.append(raw.strip())
    return found


class ClientAddressResolver:
    """Resolves ``client_ip`` from the peer and, behind trusted proxies, a header."""

    def __init__(self, trusted_proxies: Sequence[str], header: str = "x-forwarded-for") -> None:
        self.trusts_unix, cidrs = split_entries(trusted_proxies)
        self.networks = parse_networks(cidrs)
        self.enabled = bool(self.networks) or self.trusts_unix
        self.header = header.lower()
        self.header_bytes = self.header.encode("latin-1")
        #: Where a WSGI server puts that header in the environ.
        self.environ_key = "HTTP_" + self.header.upper().replace("-", "_")
        self._trusted_cache: dict[str, bool] = {}

    def _is_trusted_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def peer_is_trusted(self, host: str | None) -> bool:
        """Request path: a cached membership test of the connection's peer; a
        connection without one (``None`` or ``""``: a Unix socket) is trusted
        only when ``unix`` is among the trusted proxies."""
        if not host:
            return self.trusts_unix
        cached = self._trusted_cache.get(host)
        if cached is None:
            address = _parse_address(host)
            cached = address is not None and self._is_trusted_address(address)
            if len(self._trusted_cache) >= _CACHE_LIMIT:
                self._trusted_cache.clear()
            self._trusted_cache[host] = cached
        return cached

    def forwarded_value(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Request path: the configured header's value(s), joined; no parsing."""
        wanted = self.header_bytes
        values = [value for name, value in headers if name.lower() == wanted]
        if not values:
            return None
        return ",".join(value.decode("latin-1") for value in values)

    def resolve(
        self, peer: str | None, forwarded: str | None, *, strict: bool = False
    ) -> str | None:
        """Flusher: the client address for a record.

        ``strict`` (access decisions): None when the nearest entry a trusted
        proxy passed on is not an address (``for=unknown``, an obfuscated
        name), rather than falling back to that proxy's own address, which an
        allow-list may well contain.
        """
        if forwarded is None:
            return peer
        entries = (
            _forwarded_for_values(forwarded) if self.header == "forwarded" else forwarded.split(",")
        )
        client = peer
        for entry in reversed(entries):
            address = _parse_address(entry)
            if address is None:
                if strict:
                    return None
                # Garbage in the chain came from an untrusted writer; stop at
                # the last hop a trusted proxy vouched for.
                break
            client = str(address)
            if not self._is_trusted_address(address):
                break
        return client

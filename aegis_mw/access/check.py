"""Deciding one request against its group's rule: allowed (with a role), 401 or 403."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field

from ..core.access_rules import AccessRule

VIEWER, ADMIN = "viewer", "admin"
REALM = 'realm="aegis"'


@dataclass(frozen=True)
class Decision:
    allowed: bool
    role: str = ""
    status: int = 200
    code: str = ""
    message: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)


def _digest(text: str) -> bytes:
    # Hashed first so compare_digest sees equal lengths: a secret's length must
    # not show in timing either. surrogatepass: no text can make this raise.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _matches(candidate: str, secrets: tuple[str, ...]) -> bool:
    """Constant-time over every secret (which one matched must not show in timing)."""
    offered = _digest(candidate)
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(offered, _digest(secret))
    return found


def _basic_user(encoded: str) -> tuple[str, str] | None:
    """User and password of a Basic credential; None for anything malformed."""
    try:
        # The header was decoded as latin-1: a non-ASCII character makes
        # b64decode raise a plain ValueError (binascii.Error is one as well).
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # also UnicodeDecodeError, a ValueError
        return None
    user, colon, password = text.partition(":")
    return (user, password) if colon else None


def _basic_role(pair: tuple[str, str], rule: AccessRule) -> str:
    user, password = pair
    admin = _matches(f"{user}:{password}", tuple(f"{u}:{p}" for u, p in rule.admin_basic))
    viewer = _matches(f"{user}:{password}", tuple(f"{u}:{p}" for u, p in rule.basic))
    return ADMIN if admin else VIEWER if viewer else ""


def decide(
    rule: AccessRule | None, *, authorization: str, client_ip: str | None, token: str = ""
) -> Decision:
    """``authorization`` is the request's header; ``token`` one taken from elsewhere
    (a cookie or query parameter, for the dashboard and its WebSocket)."""
    if rule is None or rule.open:
        return Decision(True, VIEWER)  # admin actions always need admin credentials
    if rule.allow_ips:
        address = None
        if client_ip:
            try:
                address = ipaddress.ip_address(client_ip.split("%", 1)[0])
            except ValueError:
                address = None
        if address is not None and address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address is None or not any(address in network for network in rule.allow_ips):
            return Decision(False, status=403, code="forbidden", message="address not allowed")
    if not rule.needs_credentials:
        return Decision(True, VIEWER)
    scheme, _, credentials = authorization.strip().partition(" ")
    role = ""
    if scheme.lower() == "bearer" and credentials.strip():
        token = credentials.strip()
    elif scheme.lower() == "basic" and (rule.basic or rule.admin_basic):
        pair = _basic_user(credentials)
        role = _basic_role(pair, rule) if pair is not None else ""
    if not role and token:
        role = ADMIN if _matches(token, rule.admin_tokens) else ""
        role = role or (VIEWER if _matches(token, rule.tokens) else "")
    if role:
        return Decision(True, role)
    challenges = []
    if rule.tokens or rule.admin_tokens:
        challenges.append(("www-authenticate", f"Bearer {REALM}"))
    if rule.basic or rule.admin_basic:
        challenges.append(("www-authenticate", f'Basic {REALM}, charset="UTF-8"'))
    return Decision(
        False, status=401, code="unauthorized", message="credentials required", headers=challenges
    )

"""Deciding one request against its group's rule: allowed (with a role), 401 or 403."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field

from ..core.access_rules import AccessRule

VIEWER, EDITOR, ADMIN = "viewer", "editor", "admin"
#: Each role may do what the roles before it may.
ROLES = (VIEWER, EDITOR, ADMIN)
REALM = 'realm="aegis"'


@dataclass(frozen=True)
class Decision:
    allowed: bool
    role: str = ""
    status: int = 200
    code: str = ""
    message: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: Who, for the audit: a basic user's name, or which configured token
    #: ("editor token 2"); never the secret. "" for an open group.
    actor: str = ""
    #: Whether the credential that granted the role came in the
    #: Authorization header (not a cookie or query parameter, which a
    #: browser may send on another site's behalf).
    by_header: bool = False

    def may(self, role: str) -> bool:
        """Whether this decision's role includes ``role``'s rights."""
        return self.allowed and ROLES.index(self.role or VIEWER) >= ROLES.index(role)


def _digest(text: str) -> bytes:
    # Hashed first so compare_digest sees equal lengths: a secret's length must
    # not show in timing either. surrogatepass: no text can make this raise.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _match(candidate: str, secrets: tuple[str, ...]) -> int:
    """The 1-based position of the secret ``candidate`` is, else 0; every
    secret is compared, in constant time (a secret's text must not show in
    timing)."""
    offered = _digest(candidate)
    found = 0
    for position, secret in enumerate(secrets, 1):
        if hmac.compare_digest(offered, _digest(secret)):
            found = found or position
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
    """The highest role whose users hold this user and password, or ""."""
    offered = f"{pair[0]}:{pair[1]}"
    found = ""
    for role, users in (
        (VIEWER, rule.basic),
        (EDITOR, rule.editor_basic),
        (ADMIN, rule.admin_basic),
    ):
        if _match(offered, tuple(f"{u}:{p}" for u, p in users)):
            found = role
    return found


def _token_role(token: str, rule: AccessRule) -> tuple[str, str]:
    """The highest role holding ``token``, and the actor it names ("editor
    token 2"); ("", "") for none."""
    found = ("", "")
    for role, tokens in (
        (VIEWER, rule.tokens),
        (EDITOR, rule.editor_tokens),
        (ADMIN, rule.admin_tokens),
    ):
        position = _match(token, tokens)
        if position:
            found = (role, f"{role} token {position}")
    return found


def decide(
    rule: AccessRule | None, *, authorization: str, client_ip: str | None, token: str = ""
) -> Decision:
    """``authorization`` is the request's header; ``token`` one taken from elsewhere
    (a cookie or query parameter, for the dashboard and its WebSocket)."""
    if rule is None or rule.open:
        return Decision(True, VIEWER)  # writes always need an editor's credentials
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
    role = actor = ""
    by_header = False
    if scheme.lower() == "bearer" and credentials.strip():
        token, by_header = credentials.strip(), True
    elif scheme.lower() == "basic" and rule.all_basic:
        pair = _basic_user(credentials)
        role = _basic_role(pair, rule) if pair is not None else ""
        actor = pair[0] if pair is not None and role else ""
        by_header = bool(role)
    if not role and token:
        role, actor = _token_role(token, rule)
    if role:
        return Decision(True, role, actor=actor, by_header=by_header)
    challenges = []
    if rule.all_tokens:
        challenges.append(("www-authenticate", f"Bearer {REALM}"))
    if rule.all_basic:
        challenges.append(("www-authenticate", f'Basic {REALM}, charset="UTF-8"'))
    return Decision(
        False, status=401, code="unauthorized", message="credentials required", headers=challenges
    )

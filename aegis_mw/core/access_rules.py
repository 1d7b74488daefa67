"""Who may read what leaves the process: one rule per route group.

Groups: ``metrics``, ``health`` (readiness and the full report), ``liveness``,
``api``, ``dashboard`` and ``websocket``. ``metrics`` and the health groups
without a rule are open (a scraper or a probe carries no credentials); the
monitoring data (``api``, ``dashboard``, and ``websocket``, which follows
them) without a rule take the app's access token (``access/app_token.py``).
A rule given as ``"open"`` serves its group to every client. A rule
combines, all of which must hold:

- ``allow_ips``: the client address (after trusted proxies) must be in one of
  these networks, else 403;
- credentials, when any are configured: a bearer token (``tokens``,
  ``editor_tokens``, ``admin_tokens``) or HTTP basic user and password
  (``basic``, ``editor_basic``, ``admin_basic``), else 401 with
  ``WWW-Authenticate``. The plain ones grant the viewer role (read), the
  ``editor_`` ones the editor role (the API's writes: alert rules,
  silences, test notices), the ``admin_`` ones the admin role (everything
  an editor may, and whatever later needs more).

Given as ``access={"metrics": {"tokens": ["..."], "allow_ips": ["10.0.0.0/8"]}}``,
in the ``AEGIS_CONFIG`` file under ``[aegis.access.metrics]``, or as JSON in
``AEGIS_ACCESS``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUPS = ("metrics", "health", "liveness", "api", "dashboard", "websocket")
#: A group's rule given as this word serves it to every client, on purpose.
OPEN = "open"
_FIELDS = (
    "tokens", "editor_tokens", "admin_tokens", "basic", "editor_basic", "admin_basic",
    "allow_ips",
)  # fmt: skip
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AccessRule:
    """One group's rule, checked at start."""

    # Secrets stay out of repr (and so out of logs and error messages).
    tokens: tuple[str, ...] = field(default=(), repr=False)
    editor_tokens: tuple[str, ...] = field(default=(), repr=False)
    admin_tokens: tuple[str, ...] = field(default=(), repr=False)
    basic: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    editor_basic: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    admin_basic: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    allow_ips: tuple[Network, ...] = ()
    #: Given as "open": the user chose to serve this group to every client.
    opened: bool = False

    @property
    def needs_credentials(self) -> bool:
        return bool(self.all_tokens or self.all_basic)

    @property
    def all_tokens(self) -> tuple[str, ...]:
        return self.tokens + self.editor_tokens + self.admin_tokens

    @property
    def all_basic(self) -> tuple[tuple[str, str], ...]:
        return self.basic + self.editor_basic + self.admin_basic

    @property
    def open(self) -> bool:
        return not self.needs_credentials and not self.allow_ips


def _secrets(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list of strings")
    for secret in value:
        if not isinstance(secret, str) or len(secret) < 8:
            raise ValueError(f"{what}: each token must be a string of at least 8 characters")
        # A token arrives in an Authorization header (read as latin-1, stripped):
        # one with surrounding spaces, a control or a non-ASCII character could
        # never match, and every request would get a puzzling 401.
        if secret != secret.strip() or not all(" " <= char <= "~" for char in secret):
            raise ValueError(
                f"{what}: each token must be printable ASCII without surrounding spaces"
            )
    return tuple(value)


def _users(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must map user names to passwords")
    for user, password in value.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ValueError(f"{what}: user names are non-empty strings without ':'")
        if not isinstance(password, str) or len(password) < 8:
            raise ValueError(f"{what}: each password must be a string of at least 8 characters")
    return tuple(sorted(value.items()))


def _networks(value: Any, what: str) -> tuple[Network, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{what} must be a non-empty list of networks such as '10.0.0.0/8'")
    try:
        return tuple(ipaddress.ip_network(str(cidr), strict=False) for cidr in value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def parse_rule(group: str, value: Any) -> AccessRule:
    if isinstance(value, AccessRule):
        return value
    if value == OPEN:
        return AccessRule(opened=True)
    if not isinstance(value, Mapping):
        raise ValueError(f"access[{group!r}] must be {OPEN!r} or a table of {', '.join(_FIELDS)}")
    unknown = set(value) - set(_FIELDS)
    if unknown:
        raise ValueError(f"access[{group!r}] has unknown fields {sorted(unknown)}")
    prefix = f"access[{group!r}]"
    return AccessRule(
        tokens=_secrets(value.get("tokens", ()), f"{prefix}.tokens"),
        editor_tokens=_secrets(value.get("editor_tokens", ()), f"{prefix}.editor_tokens"),
        admin_tokens=_secrets(value.get("admin_tokens", ()), f"{prefix}.admin_tokens"),
        basic=_users(value.get("basic", {}), f"{prefix}.basic"),
        editor_basic=_users(value.get("editor_basic", {}), f"{prefix}.editor_basic"),
        admin_basic=_users(value.get("admin_basic", {}), f"{prefix}.admin_basic"),
        allow_ips=_networks(value["allow_ips"], f"{prefix}.allow_ips")
        if "allow_ips" in value
        else (),
    )


def parse_access(value: Any) -> tuple[tuple[str, AccessRule], ...]:
    """The ``access`` option: a mapping (or JSON text) of group -> rule."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text else {}
    if isinstance(value, (list, tuple)):
        value = dict(value)  # the checked form, ((group, rule), ...)
    if not isinstance(value, Mapping):
        raise ValueError("access must map route groups to rules")
    unknown = set(value) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown route groups {sorted(unknown)}; groups are {', '.join(GROUPS)}")
    return tuple((group, parse_rule(group, rule)) for group, rule in sorted(value.items()))

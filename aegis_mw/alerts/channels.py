"""Notification channels: where alert notices go, and how one is sent.

Configured by the ``alert_channels`` option, a mapping of channel names to
their settings::

    alert_channels = {
        "ops": {"type": "webhook", "url": "env:OPS_WEBHOOK_URL",
                "secret": "env:OPS_WEBHOOK_SECRET", "severities": ["critical", "error"]},
    }

Every notice is also written to the ``aegis_mw.alerts`` log by the
evaluating process (see :mod:`.service`), with or without channels.

Secrets (a webhook's URL, its signing secret) are given by reference,
``env:NAME`` or ``file:PATH``, or as they are; none is ever shown in an
error, a log line or an API answer.

A Slack channel (``"type": "slack"``, an incoming webhook's URL) gets the
notice as one line of text, and a PagerDuty channel (``"type": "pagerduty"``,
an integration's ``routing_key``) an Events API v2 trigger or resolve with one
dedup key per episode, under the same address checks and retries.

A webhook gets the notice as JSON in the shape of Alertmanager's webhook,
signed by the Standard Webhooks scheme (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``) when it
has a secret. Its address must not be the host's own network: a name that
resolves to a loopback, private, link-local (cloud metadata), multicast or
reserved address is refused when the channel is configured (a literal
address) and again at every send (every address the name resolves to), and
the connection goes to the address that was checked; redirects are not
followed. ``allow_private: true`` lifts this for receivers on a private
network (the tests' 127.0.0.1 receivers use it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol
from urllib.parse import urlsplit

from ..core.errors import ConfigError
from ..core.retry_after import retry_after
from .grouping import ALONE, BY_RULE, GROUPING_KEYS, Grouping, grouping_from_settings
from .rules import SEVERITIES, parse_duration

KINDS = ("webhook", "slack", "pagerduty", "email")
_OPTION = "alert_channels"
#: The most a receiver may ask to wait (Retry-After) before a retry.
MAX_RETRY_AFTER = 3600.0


class Delivery(NamedTuple):
    """How one send went: delivered, or why not and whether to retry."""

    delivered: bool
    error: str = ""
    #: Never retried (the receiver says the target is gone or refused for good).
    permanent: bool = False
    #: Seconds the receiver asked to wait before the next try.
    retry_after: float | None = None
    #: The channel itself is broken (gone, its credentials refused, not who
    #: it claims to be): nothing will reach it until it is fixed, so it is
    #: disabled (see .outbox) and the notice kept for when it works again.
    broken: bool = False


def resolve_secret(reference: str, what: str) -> str:
    """The text behind ``env:NAME``/``file:PATH``, or the text itself;
    ``what`` is the option of the field, named by an error."""
    if reference.startswith("env:"):
        value = os.environ.get(reference[4:])
        if value is None:
            raise ConfigError(what, "(not shown)", f"{reference} is not set")
        return value.strip()
    if reference.startswith("file:"):
        try:
            with open(reference[5:], encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ConfigError(
                what, "(not shown)", f"{reference} cannot be read: {exc.strerror}"
            ) from None
    return reference


def refused_address(address: str) -> str:
    """Why an address may not be a webhook's target ('' when it may): any
    address that is not public, including the IPv4 address inside a mapped,
    6to4 or Teredo IPv6 one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    for candidate in (*_embedded(ip), ip):  # the embedded address names the reason best
        for test, name in (
            (candidate.is_loopback, "loopback"), (candidate.is_link_local, "link-local"),
            (candidate.is_private, "private"), (candidate.is_multicast, "multicast"),
            (candidate.is_reserved, "reserved"), (candidate.is_unspecified, "unspecified"),
            (not candidate.is_global, "non-public"),
        ):  # fmt: skip
            if test:
                return f"a {name} address"
    return ""


#: IP networks a channel may send to although they are not public (from
#: the alert_api_networks setting, for the channels the API writes).
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _embedded(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses inside a mapped, 6to4 or Teredo IPv6 address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    inner = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        inner += list(ip.teredo)
    return inner


def refused_target(address: str, allow_private: bool, networks: Networks) -> str:
    """Why a channel may not connect to ``address`` ('' when it may): it is
    not public, and neither ``allow_private`` nor one of ``networks`` lets
    it through (an IPv4 address inside an IPv6 one must be let through as
    well: an allowed IPv6 range does not open the IPv4 loopback)."""
    if allow_private:
        return ""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    for candidate in (*_embedded(ip), ip):
        why = refused_address(str(candidate))
        if why and not any(
            candidate.version == net.version and candidate in net for net in networks
        ):
            return why
    return ""


def literal_refusal(option: str, host: str, allow_private: bool, networks: Networks) -> None:
    """A ConfigError when ``host`` is an IP address the channel may not reach
    (a name is checked at every send, as it resolves then)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return
    why = refused_target(str(literal), allow_private, networks)
    if why:
        # The API's channels cannot set allow_private (see .api_channels).
        hint = (
            "set allow_private to send there" if option.startswith(_OPTION)
            else "list its network in the alert_api_networks setting to send there"
        )  # fmt: skip
        raise ConfigError(option, "(not shown)", f"a public address: this one is {why} ({hint})")


@dataclass(frozen=True)
class WebhookChannel:
    """POSTs each notice as JSON to ``url``."""

    #: Its ``type`` in the settings.
    kind: ClassVar[str] = "webhook"
    name: str
    url: str = field(repr=False)
    secret: bytes | None = field(default=None, repr=False)
    severities: tuple[str, ...] = SEVERITIES
    allow_private: bool = False
    timeout: float = 10.0
    #: A PEM file of the CA certificates to trust instead of the system's.
    ca_file: str | None = None
    #: How its notices are grouped and timed (see .grouping).
    grouping: Grouping = BY_RULE
    #: The alert_mute_windows during which it is not told of firings.
    mute_windows: tuple[str, ...] = ()
    #: At most (count, per seconds) notifications (see .outbox); None: no limit.
    rate_limit: tuple[int, float] | None = None
    #: Networks it may reach though they are not public (see refused_target).
    networks: Networks = ()

    def payload(self, notice: Mapping[str, Any]) -> dict[str, Any]:
        return {**notice, "receiver": self.name}

    def send(self, key: str, notice: Mapping[str, Any]) -> Delivery:
        body = json.dumps(self.payload(notice), separators=(",", ":")).encode()
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            address = vetted_address(
                host, port, self.allow_private, "the webhook's host", self.networks
            )
        except OSError as exc:
            return Delivery(False, f"cannot resolve the webhook's host: {exc.strerror or exc}")
        if isinstance(address, Delivery):
            return address
        headers = {
            "content-type": "application/json",
            "user-agent": "aegis_mw-alerts",
            "webhook-id": key,
        }
        if self.secret is not None:
            stamp = str(int(time.time()))
            signed = f"{key}.{stamp}.".encode() + body
            digest = hmac.new(self.secret, signed, hashlib.sha256).digest()
            headers["webhook-timestamp"] = stamp
            headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            connection = _PinnedConnection(
                parts.scheme, host, port, address, self.timeout, self.ca_file
            )
        except OSError as exc:  # ca_file gone or changed since the start: retried
            return Delivery(False, f"the channel's ca_file cannot be loaded: {type(exc).__name__}")
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(65536)  # never shown: a test-send reports only the outcome
            status = response.status
            retry_after = _retry_after(response.getheader("retry-after"))
        except ssl.SSLCertVerificationError:
            # Not a passing fault: the receiver is not who the URL names.
            return Delivery(
                False, "the webhook's TLS certificate was refused", permanent=True, broken=True
            )
        except (OSError, http.client.HTTPException) as exc:
            return Delivery(False, f"the webhook could not be reached: {type(exc).__name__}")
        finally:
            connection.close()
        if 200 <= status < 300:
            return Delivery(True)
        # Gone, refusing our credentials or our POST of JSON, or sending us
        # elsewhere (redirects are not followed): every notice would fail alike.
        broken = status in (401, 403, 404, 405, 410, 415) or 300 <= status < 400
        # Only a passing fault is retried, as Alertmanager's notifiers do: the
        # receiver's own (5xx), a timeout, too many or too early. Any other
        # refusal (400, 413, 422, 409, ...) refuses this notice: others may pass.
        passing = status >= 500 or status in (408, 425, 429)
        permanent = broken or not passing
        return Delivery(False, f"the webhook answered {status}", permanent, retry_after, broken)


@dataclass(frozen=True)
class SlackChannel(WebhookChannel):
    """A Slack incoming webhook: the notice as one line of text (Slack's
    answers 404, 410 and 403, a removed hook or channel, fail it for good;
    429 waits its Retry-After)."""

    kind: ClassVar[str] = "slack"

    def payload(self, notice: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": slack_text(notice)}


def alert_lines(notice: Mapping[str, Any]) -> list[str]:
    """One line per alert of a notification: ``name kind (severity) labels summary``."""
    ours = notice.get("aegis") or {}
    out = []
    for alert in notice.get("alerts") or [{}]:
        kind = (alert.get("aegis") or ours).get("kind") or ""
        if kind in ("", "group"):
            kind = alert.get("status") or notice.get("status", "")
        labels = dict(alert.get("labels") or {})
        name = labels.pop("alertname", "alert")
        severity = labels.pop("severity", "")
        where = ", ".join(f"{key}={value}" for key, value in labels.items())
        summary = (alert.get("annotations") or {}).get("summary", "")
        parts = [f"{name} {kind}", f"({severity})" if severity else "", where, summary]
        out.append(" ".join(part for part in parts if part))
    return out


def notice_line(notice: Mapping[str, Any]) -> str:
    """A notification as one line: its alert's, or a group's count."""
    alerts = notice.get("alerts") or [{}]
    if len(alerts) == 1:
        return alert_lines(notice)[0]
    names = sorted({str((a.get("labels") or {}).get("alertname", "alert")) for a in alerts})
    firing = sum(1 for a in alerts if a.get("status") == "firing")
    resolved = len(alerts) - firing
    counts = [f"{firing} firing" if firing else "", f"{resolved} resolved" if resolved else ""]
    return f"{', '.join(names)}: {len(alerts)} alerts, " + ", ".join(c for c in counts if c)


def slack_text(notice: Mapping[str, Any]) -> str:
    mark = ":red_circle:" if notice.get("status") == "firing" else ":large_green_circle:"
    name, _, rest = notice_line(notice).partition(" ")
    text = f"{mark} *{name}* {rest}"
    if len(notice.get("alerts") or []) > 1:
        text += "".join(f"\n• {line}" for line in alert_lines(notice))
    # Slack reads <, > and & as markup: escaped as its docs ask.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: PagerDuty's Events API v2 (a channel may name another, for a proxy or a test).
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class PagerDutyChannel(WebhookChannel):
    """PagerDuty's Events API v2: a firing triggers, its resolve resolves,
    under one dedup key per fire-to-resolve episode. ``routing_key`` is the
    integration's key (a secret)."""

    kind: ClassVar[str] = "pagerduty"

    routing_key: str = field(default="", repr=False)

    def payload(self, notice: Mapping[str, Any]) -> dict[str, Any]:
        alert = (notice.get("alerts") or [{}])[0]
        labels = dict(alert.get("labels") or {})
        episode = (notice.get("aegis") or {}).get("episode") or alert.get("fingerprint", "")
        firing = notice.get("status") == "firing"
        severity = labels.get("severity", "")
        return {
            "routing_key": self.routing_key,
            "event_action": "trigger" if firing else "resolve",
            "dedup_key": f"aegis-{episode}",
            "payload": {
                "summary": notice_line(notice)[:1024],
                "source": "aegis_mw",
                "severity": severity if severity in SEVERITIES else "error",
                "component": labels.get("route", ""),
                "custom_details": {"labels": labels, "annotations": alert.get("annotations", {})},
            },
        }


class _PinnedConnection:
    """An HTTP(S) connection to an address checked beforehand, with the URL's
    host name for the Host header and TLS (SNI and certificate checks)."""

    def __init__(
        self, scheme: str, host: str, port: int, address: str, timeout: float,
        ca_file: str | None = None,
    ) -> None:  # fmt: skip
        self.connection: http.client.HTTPConnection
        if scheme == "https":
            # ca_file, when given, is the whole trust: a private CA only.
            context = ssl.create_default_context(cafile=ca_file)
            self.connection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
        else:
            self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection = self.connection
        # The timeout bounds each read; this bounds the whole send: a
        # receiver that answers a byte at a time is cut off.
        self.cutoff = cutoff = Cutoff(timeout)

        def connect() -> None:
            sock = socket.create_connection((address, port), timeout)
            cutoff.arm(sock)
            if scheme == "https":
                sock = context.wrap_socket(sock, server_hostname=host)
            connection.sock = sock

        connection.connect = connect  # type: ignore[method-assign]

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.connection.request(method, path, body=body, headers=headers)

    def getresponse(self) -> http.client.HTTPResponse:
        return self.connection.getresponse()

    def close(self) -> None:
        self.cutoff.close()
        self.connection.close()


def severities_and_timeout(
    where: str, settings: Mapping[str, Any]
) -> tuple[tuple[str, ...], float]:
    """The ``severities`` and ``timeout`` every channel has, checked."""
    severities = settings.get("severities", SEVERITIES)
    if (
        isinstance(severities, str)
        or not isinstance(severities, (list, tuple))
        or not all(s in SEVERITIES for s in severities)
    ):
        raise ConfigError(f"{where}.severities", severities, f"a list of {', '.join(SEVERITIES)}")
    timeout = settings.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise ConfigError(f"{where}.timeout", timeout, "seconds, > 0 and <= 60")
    return tuple(severities), float(timeout)


#: The receivers' own limits: Slack about one message a second per hook,
#: PagerDuty 120 events a minute per integration key.
DEFAULT_RATE_LIMITS = {"slack": (1, 1.0), "pagerduty": (120, 60.0)}


def rate_limit_from_settings(
    where: str, settings: Mapping[str, Any], default: tuple[int, float] | None
) -> tuple[int, float] | None:
    """A channel's ``rate_limit``: ``{"count": N, "per": "1m"}``, or none."""
    value = settings.get("rate_limit")
    if value is None:
        return default
    allowed = 'a mapping {"count": 1 to 10000, "per": a duration from 1 s to 1 h}'
    if not isinstance(value, Mapping) or set(value) != {"count", "per"}:
        raise ConfigError(f"{where}.rate_limit", value, allowed)
    count = value["count"]
    try:
        per = parse_duration(value["per"])
    except ValueError:
        raise ConfigError(f"{where}.rate_limit", value, allowed) from None
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
        raise ConfigError(f"{where}.rate_limit", value, allowed)
    if not 1.0 <= per <= 3600.0:
        raise ConfigError(f"{where}.rate_limit", value, allowed)
    return count, per


def mute_window_names(where: str, settings: Mapping[str, Any]) -> tuple[str, ...]:
    """A channel's ``mute_windows``: names of ``alert_mute_windows`` (each
    checked against them when the alerts start)."""
    names = settings.get("mute_windows", [])
    if (
        isinstance(names, str)
        or not isinstance(names, (list, tuple))
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise ConfigError(f"{where}.mute_windows", names, "a list of alert_mute_windows names")
    return tuple(names)


def check_ca_file(where: str, ca_file: Any) -> None:
    """A ``ca_file`` setting: a PEM file of certificates that loads."""
    if not isinstance(ca_file, str) or not ca_file:
        raise ConfigError(f"{where}.ca_file", ca_file, "the path of a PEM file of certificates")
    try:
        ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{where}.ca_file", ca_file,
            f"the path of a PEM file of certificates ({type(exc).__name__})",
        ) from None  # fmt: skip


def vetted_address(
    host: str, port: int, allow_private: bool, what: str, networks: Networks = ()
) -> str | Delivery:
    """The address to connect to for ``host``, or why not: unless
    ``allow_private``, every address the name resolves to must be public or
    in ``networks`` (one that is not fails the channel: every notice would
    meet it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        return Delivery(False, f"{what} has no address")
    for address in addresses:
        why = refused_target(address, allow_private, networks)
        if why:
            return Delivery(
                False, f"{what} resolves to {why} (not an allowed network)",
                permanent=True, broken=True,
            )  # fmt: skip
    return addresses[0]


class Cutoff:
    """Bounds a whole send: each read has the timeout, and this shuts the
    connection when the send as a whole outlasts it (a server that answers a
    byte at a time). It shuts a duplicate of the socket's descriptor, which
    reaches the connection however TLS has wrapped the socket since."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fired = False
        self._lock = threading.Lock()
        self._guard: socket.socket | None = None
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def arm(self, sock: socket.socket) -> None:
        with self._lock:
            self._guard = sock.dup()
            if self.fired:
                _shut(self._guard)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._guard is not None:
                _shut(self._guard)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            if self._guard is not None:
                self._guard.close()
                self._guard = None


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


def _retry_after(value: str | None) -> float | None:
    seconds = retry_after(value)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER)


class Channel(Protocol):
    """What the sender needs of a channel (a webhook's or an email's)."""

    @property
    def name(self) -> str: ...
    @property
    def severities(self) -> tuple[str, ...]: ...
    @property
    def timeout(self) -> float: ...
    @property
    def grouping(self) -> Grouping: ...
    @property
    def mute_windows(self) -> tuple[str, ...]: ...
    @property
    def rate_limit(self) -> tuple[int, float] | None: ...
    def send(self, key: str, notice: Mapping[str, Any]) -> Delivery: ...


def channel_kind(channel: Channel) -> str:
    """A channel's ``type`` as its settings name it."""
    return str(getattr(channel, "kind", type(channel).__name__))


def channels_from_config(data: Any) -> dict[str, Channel]:
    """Channels from the ``alert_channels`` mapping, checked: an error names
    the channel and the field, never a secret."""
    if not isinstance(data, Mapping):
        raise ConfigError(_OPTION, "(not shown)", "a mapping of channel names to their settings")
    out: dict[str, Channel] = {}
    for name, settings in data.items():
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ConfigError(_OPTION, name, "channel names of 1 to 64 characters")
        if _built(settings):  # checked when made (AegisSettings.replace passes them again)
            out[name] = settings
            continue
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{_OPTION}.{name}", "(not shown)", "a mapping of channel settings")
        out[name] = build_channel(name, settings)
    return out


def _built(settings: Any) -> bool:
    from .email_channel import EmailChannel

    return isinstance(settings, (WebhookChannel, EmailChannel))


def build_channel(
    name: str, settings: Mapping[str, Any], where: str = "", networks: Networks = ()
) -> Channel:
    """One channel from its settings, checked; errors name ``where`` (by
    default ``alert_channels.NAME``) and the field. ``networks``: those it
    may reach though they are not public."""
    where = where or f"{_OPTION}.{name}"
    kind = settings.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}.type", kind, f"one of {', '.join(KINDS)}")
    if kind == "email":  # its own module: SMTP settings share nothing with a URL's
        from .email_channel import email_from_config

        return email_from_config(name, settings, where, networks)
    known = {
        "type", "severities", "url", "allow_private", "timeout", "ca_file", "mute_windows",
        "rate_limit", *GROUPING_KEYS,
    }  # fmt: skip
    if kind == "webhook":  # Slack's hooks are not signed: the URL is the secret
        known.add("secret")
    if kind == "pagerduty":
        # An incident per alert episode: never grouped, only repeated.
        known.add("routing_key")
        known -= {"group_by", "group_wait", "group_interval"}
    for key in settings:
        if key not in known:
            raise ConfigError(f"{where}.{key}", "(not shown)", f"one of {', '.join(sorted(known))}")
    severities, timeout = severities_and_timeout(where, settings)
    windows = mute_window_names(where, settings)
    routing_key = ""
    if kind == "pagerduty":
        raw_key = settings.get("routing_key")
        if not isinstance(raw_key, str) or not raw_key:
            raise ConfigError(
                f"{where}.routing_key", "(not shown)", "a text, env:NAME or file:PATH"
            )
        routing_key = resolve_secret(raw_key, f"{where}.routing_key")
        if not routing_key:
            raise ConfigError(f"{where}.routing_key", "(not shown)", "an integration key")
    url = settings.get("url", PAGERDUTY_URL if kind == "pagerduty" else None)
    if not isinstance(url, str):
        raise ConfigError(f"{where}.url", "(not shown)", "an http(s) URL, env:NAME or file:PATH")
    url = resolve_secret(url, f"{where}.url")
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(
            f"{where}.url",
            "(not shown)",
            "an http:// or https:// URL with a host (and a valid port)",
        )
    allow_private = settings.get("allow_private", False)
    if not isinstance(allow_private, bool):
        raise ConfigError(f"{where}.allow_private", allow_private, "true or false")
    literal_refusal(f"{where}.url", parts.hostname, allow_private, networks)
    secret: bytes | None = None
    raw = settings.get("secret")
    if raw is not None:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}.secret", "(not shown)", "a text, env:NAME or file:PATH")
        text = resolve_secret(raw, f"{where}.secret")
        try:
            secret = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ConfigError(
                f"{where}.secret", "(not shown)", "base64 text, optionally prefixed whsec_"
            ) from None
        if len(secret) < 16:
            raise ConfigError(f"{where}.secret", "(not shown)", "at least 16 bytes of secret")
    ca_file = settings.get("ca_file")
    if ca_file is not None:
        if parts.scheme != "https":
            raise ConfigError(f"{where}.ca_file", ca_file, "no ca_file for an http:// URL")
        check_ca_file(where, ca_file)
    common: dict[str, Any] = {
        "name": name, "url": url, "severities": severities, "allow_private": allow_private,
        "timeout": timeout, "ca_file": ca_file, "mute_windows": windows, "networks": networks,
        "rate_limit": rate_limit_from_settings(where, settings, DEFAULT_RATE_LIMITS.get(kind)),
    }  # fmt: skip
    if kind == "pagerduty":
        return PagerDutyChannel(
            **common, grouping=grouping_from_settings(where, settings, ALONE),
            routing_key=routing_key,
        )  # fmt: skip
    made = SlackChannel if kind == "slack" else WebhookChannel
    return made(**common, secret=secret, grouping=grouping_from_settings(where, settings))

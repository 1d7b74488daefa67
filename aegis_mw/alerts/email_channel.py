"""The email channel: each notice as one plain-text mail over SMTP.

Configured in ``alert_channels`` like the others::

    alert_channels = {
        "ops-mail": {"type": "email", "host": "smtp.example.com",
                     "username": "alerts@example.com", "password": "env:SMTP_PASSWORD",
                     "sender": "Aegis alerts <alerts@example.com>",
                     "to": ["ops@example.com"], "severities": ["critical", "error"]},
    }

``security`` is ``"starttls"`` (the default, port 587), ``"tls"`` (implicit
TLS, port 465) or ``"none"`` (port 25, and then no login: credentials are
never sent in clear). Certificates are always verified, against the
system's trust store or the PEM bundle ``ca_file`` names. The SMTP host
passes the same address checks as a webhook's (``allow_private``), and the
connection goes to the address that was checked while TLS checks the
certificate against the configured host name.

Every mail has a ``Message-ID`` made of its notice's key (a digest), the
same for every retry of one outbox row (receivers may deduplicate), and the notices of one
fire-to-resolve episode refer to one thread root (``References``, and
``In-Reply-To`` for the notices after the firing), so mail clients show a
firing and its resolve as one thread.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any, ClassVar

from ..core.errors import ConfigError
from .channels import (
    Cutoff,
    Delivery,
    Networks,
    alert_lines,
    check_ca_file,
    literal_refusal,
    mute_window_names,
    notice_line,
    rate_limit_from_settings,
    resolve_secret,
    severities_and_timeout,
    vetted_address,
)
from .grouping import BY_RULE, GROUPING_KEYS, Grouping, grouping_from_settings
from .rules import SEVERITIES

logger = logging.getLogger("aegis_mw.alerts")

SECURITIES = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
#: The right-hand side of our Message-IDs (never a real host: nothing to leak).
ID_DOMAIN = "aegis_mw"
_KNOWN = frozenset(
    {
        "type", "host", "port", "security", "username", "password", "sender", "to",
        "ca_file", "severities", "timeout", "allow_private", "mute_windows", "rate_limit",
        *GROUPING_KEYS,
    }
)  # fmt: skip
_HOST = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?"
)
_NAMED = re.compile(r"\s*(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]*)>\s*")
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,40}")
# Controls and line breaks never reach a header (header injection) or the body.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


@dataclass(frozen=True)
class EmailChannel:
    """Mails each notice to ``to`` from ``sender`` through the SMTP server at
    ``host``. Built by :func:`email_from_config` from ``alert_channels``."""

    kind: ClassVar[str] = "email"

    name: str
    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 587
    security: str = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    severities: tuple[str, ...] = SEVERITIES
    allow_private: bool = False
    timeout: float = 10.0
    #: How its notices are grouped and timed (see .grouping).
    grouping: Grouping = BY_RULE
    #: The alert_mute_windows during which it is not told of firings.
    mute_windows: tuple[str, ...] = ()
    #: At most (count, per seconds) notifications (see .outbox); None: no limit.
    rate_limit: tuple[int, float] | None = None
    #: Networks it may reach though they are not public (see .channels).
    networks: Networks = ()

    def message(self, key: str, notice: Mapping[str, Any]) -> EmailMessage:
        """The mail of one notice (the same for every retry, but its Date)."""
        message = EmailMessage()
        message["Subject"] = email_subject(notice)
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id(key)
        episode = str((notice.get("aegis") or {}).get("episode") or "")
        if episode:
            root = f"<aegis-{_token(episode)}@{ID_DOMAIN}>"
            message["References"] = root
            if _kind(notice) != "firing":
                message["In-Reply-To"] = root
        # RFC 3834: no auto-replies (vacation notices) to a machine's mail.
        message["Auto-Submitted"] = "auto-generated"
        # Quoted-printable: 7-bit on the wire, whatever the labels hold and
        # whether or not the server speaks 8BITMIME.
        message.set_content(email_body(notice, self.name), cte="quoted-printable")
        return message

    def send(self, key: str, notice: Mapping[str, Any]) -> Delivery:
        try:
            address = vetted_address(
                self.host, self.port, self.allow_private, "the SMTP host", self.networks
            )
        except OSError as exc:
            return Delivery(False, f"cannot resolve the SMTP host: {exc.strerror or exc}")
        if isinstance(address, Delivery):
            return address
        message = self.message(key, notice)
        try:
            context = None if self.security == "none" else self._context()
        except OSError as exc:  # ca_file gone or changed since the start: retried
            return Delivery(False, f"the channel's ca_file cannot be loaded: {type(exc).__name__}")
        cutoff = Cutoff(self.timeout)
        client = _PinnedSMTP(
            self.host, address, context if self.security == "tls" else None, cutoff
        )
        accepted = False
        try:
            refused = self._converse(client, context, message)
            accepted = True
        except ssl.SSLCertVerificationError:
            # Not a passing fault: the server is not who the host names.
            return Delivery(
                False, "the SMTP server's TLS certificate was refused", permanent=True, broken=True
            )
        # A 5xx refusal of the login, the sender or every recipient meets
        # every notice alike (the channel is broken, as a webhook's 401/410);
        # one of the mail itself (its size, its content) meets this one.
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            return _refusal("the SMTP server refused every recipient", min(codes, default=0), True)
        except smtplib.SMTPAuthenticationError as exc:
            return _refusal("the SMTP server refused the login", exc.smtp_code, True)
        except smtplib.SMTPSenderRefused as exc:
            return _refusal("the SMTP server refused the sender", exc.smtp_code, True)
        except smtplib.SMTPDataError as exc:
            return _refusal("the SMTP server refused the mail", exc.smtp_code)
        except smtplib.SMTPNotSupportedError:
            # Never a downgrade: no STARTTLS (or no AUTH) is a server to fix.
            return Delivery(
                False, "the SMTP server does not offer STARTTLS or AUTH", permanent=True,
                broken=True,
            )  # fmt: skip
        except (smtplib.SMTPConnectError, smtplib.SMTPHeloError) as exc:
            # Its greeting or EHLO refused: every notice would meet it.
            return _refusal("the SMTP server refused the session", exc.smtp_code, True)
        except smtplib.SMTPResponseException as exc:
            return _refusal("the SMTP server answered", exc.smtp_code)
        except (OSError, smtplib.SMTPException) as exc:
            if cutoff.fired:
                return Delivery(False, f"the SMTP server did not finish in {self.timeout:g} s")
            return Delivery(False, f"the SMTP server could not be reached: {type(exc).__name__}")
        finally:
            if accepted:
                try:
                    client.quit()  # the mail is the server's now: a failed QUIT changes nothing
                except (OSError, smtplib.SMTPException):
                    pass
            client.close()
            cutoff.close()
        if refused:
            # Some recipients took it: a retry would mail them again, so a
            # refusal for good is only logged; a passing one retries them all
            # (the same Message-ID lets their mail systems drop the repeat).
            codes = [code for code, _ in refused.values()]
            if min(codes) < 500:
                return Delivery(False, f"the SMTP server deferred a recipient ({min(codes)})")
            logger.warning(
                "aegis_mw: alert mail of %s was refused for good for %d of %d recipients (%s)",
                self.name, len(refused), len(self.to), max(codes),
            )  # fmt: skip
        return Delivery(True)

    def _converse(
        self, client: _PinnedSMTP, context: ssl.SSLContext | None, message: EmailMessage
    ) -> dict[str, tuple[int, bytes]]:
        code, _ = client.connect(self.host, self.port)
        if code != 220:
            client.close()
            raise smtplib.SMTPConnectError(code, b"")
        client.ehlo()
        if self.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if self.username is not None and self.password is not None:
            client.login(self.username, self.password)
        recipients = [_addr_spec(to) for to in self.to]
        return client.send_message(message, _addr_spec(self.sender), recipients)

    def _context(self) -> ssl.SSLContext:
        # ca_file, when given, is the whole trust: a private CA only.
        return ssl.create_default_context(cafile=self.ca_file)


def _refusal(what: str, code: int, every_notice: bool = False) -> Delivery:
    """An SMTP refusal: 5xx for good, anything else retried. Only the code
    is kept: a server's reply text may echo what it was sent."""
    permanent = 500 <= code < 600
    return Delivery(False, f"{what} ({code})", permanent, broken=permanent and every_notice)


def _ehlo_name() -> str:
    """This host's name for EHLO, without a lookup: an address literal when
    the name is not one an SMTP server takes (RFC 5321: letters, digits,
    hyphens and dots)."""
    name = socket.gethostname()
    if name and all(part and part.replace("-", "").isalnum() and part.isascii()
                    for part in name.split(".")):  # fmt: skip
        return name
    return "[127.0.0.1]"


class _PinnedSMTP(smtplib.SMTP):
    """An SMTP client connected to an address checked beforehand, with the
    configured host name for TLS (SNI and the certificate check)."""

    def __init__(
        self, host: str, address: str, implicit_tls: ssl.SSLContext | None, cutoff: Cutoff
    ) -> None:
        # No host: connect() comes later. The name given in EHLO is the
        # host's own, not smtplib's default socket.getfqdn(), a DNS lookup
        # no timeout bounds (a resolver that hangs would hold the send).
        super().__init__(timeout=cutoff.timeout, local_hostname=_ehlo_name())
        # smtplib's starttls() takes its server_hostname from here.
        self._host = host
        self._address = address
        self._implicit_tls = implicit_tls
        self._cutoff = cutoff

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self._address, port), timeout)
        self._cutoff.arm(sock)
        if self._implicit_tls is not None:
            return self._implicit_tls.wrap_socket(sock, server_hostname=self._host)
        return sock


def email_subject(notice: Mapping[str, Any]) -> str:
    """``[FIRING] name (severity) labels summary`` (a group's: ``[FIRING:3]
    name: 3 alerts, ...``): one line, no controls."""
    kind = _kind(notice)
    alerts = notice.get("alerts") or [{}]
    if len(alerts) > 1:
        tag = f"{str(notice.get('status', '')).upper()}:{len(alerts)}"
        return _clean(f"[{tag}] {notice_line(notice)}")[:250]
    name, _, rest = notice_line(notice).partition(" ")
    rest = rest.removeprefix(kind).lstrip() if rest == kind or rest.startswith(kind + " ") else rest
    tag = kind.replace("_", " ").upper() or "NOTICE"
    return _clean(f"[{tag}] {name} {rest}".rstrip())[:250]


def email_body(notice: Mapping[str, Any], channel: str) -> str:
    """The plain text of a notice (each alert of a group's in turn): what,
    when, its labels and annotations."""
    ours = notice.get("aegis") or {}
    alerts = notice.get("alerts") or [{}]
    lines = [_clean(notice_line(notice))]
    for alert, line in zip(alerts, alert_lines(notice), strict=True):
        details = alert.get("aegis") or ours
        value = details.get("value")
        if len(alerts) > 1:
            lines += ["", _clean(line)]
        lines += [
            "",
            f"Notice:   {_clean(str(details.get('kind') or alert.get('status') or ''))}",
            f"Value:    {'no data' if value is None else _clean(str(value))}",
        ]
        for title, key in (("Started:  ", "startsAt"), ("Ended:    ", "endsAt")):
            stamp = str(alert.get(key) or "")
            if stamp and not stamp.startswith("0001-"):  # Alertmanager's zero time: not set
                lines.append(title + _clean(stamp))
        for title, values in (
            ("Labels:", alert.get("labels")),
            ("Annotations:", alert.get("annotations")),
        ):
            if values:
                lines.append(title)
                lines += [f"  {_clean(str(k))} = {_clean(str(v))}" for k, v in dict(values).items()]
        if details.get("episode"):
            lines.append(f"Episode:  {_clean(str(details['episode']))}")
    lines += ["", f"-- aegis_mw, alert channel {_clean(channel)}"]
    return "\n".join(lines) + "\n"


def _addr_spec(address: str) -> str:
    named = _NAMED.fullmatch(address)
    return named["addr"] if named else address


def _kind(notice: Mapping[str, Any]) -> str:
    return str((notice.get("aegis") or {}).get("kind") or notice.get("status") or "")


def _clean(text: str) -> str:
    return _CONTROL.sub(" ", text)


def message_id(key: str) -> str:
    """The Message-ID of a notice's mail: a digest of the outbox row's key
    (the same for every retry; short enough never to be folded)."""
    return f"<aegis-{hashlib.sha256(key.encode()).hexdigest()[:32]}@{ID_DOMAIN}>"


def _token(text: str) -> str:
    """``text`` as it may stand in a Message-ID (a digest when it may not)."""
    if _TOKEN.fullmatch(text):
        return text
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def email_from_config(
    name: str, settings: Mapping[str, Any], where: str = "", networks: Networks = ()
) -> EmailChannel:
    """An email channel from its settings, checked; an error names the field
    (under ``where``, by default ``alert_channels.NAME``) and never shows
    the password."""
    where = where or f"alert_channels.{name}"
    for key in settings:
        if key not in _KNOWN:
            raise ConfigError(
                f"{where}.{key}", "(not shown)", f"one of {', '.join(sorted(_KNOWN))}"
            )
    host = settings.get("host")
    literal = _literal(host)
    if not isinstance(host, str) or (literal is None and not _HOST.fullmatch(host)):
        raise ConfigError(f"{where}.host", host, "the SMTP server's host name or IP address")
    allow_private = settings.get("allow_private", False)
    if not isinstance(allow_private, bool):
        raise ConfigError(f"{where}.allow_private", allow_private, "true or false")
    literal_refusal(f"{where}.host", host, allow_private, networks)
    security = settings.get("security", "starttls")
    if security not in SECURITIES:
        raise ConfigError(f"{where}.security", security, f"one of {', '.join(SECURITIES)}")
    port = settings.get("port", DEFAULT_PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{where}.port", port, "a port number, 1 to 65535")
    username, password = _credentials(where, settings, security)
    ca_file = settings.get("ca_file")
    if ca_file is not None:
        _check_ca_file(where, ca_file, security)
    sender = _address(f"{where}.sender", settings.get("sender"))
    to = settings.get("to")
    if isinstance(to, str) or not isinstance(to, Sequence) or not to:
        raise ConfigError(f"{where}.to", to, "a non-empty list of email addresses")
    recipients = tuple(_address(f"{where}.to", item) for item in to)
    severities, timeout = severities_and_timeout(where, settings)
    return EmailChannel(
        name, host, sender, recipients, port, security, username, password, ca_file,
        severities, allow_private, timeout, grouping_from_settings(where, settings),
        mute_window_names(where, settings), rate_limit_from_settings(where, settings, None),
        networks,
    )  # fmt: skip


def _literal(host: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host) if isinstance(host, str) else None
    except ValueError:
        return None


def _credentials(
    where: str, settings: Mapping[str, Any], security: str
) -> tuple[str | None, str | None]:
    username = settings.get("username")
    raw = settings.get("password")
    if username is None and raw is None:
        return None, None
    if username is None:
        raise ConfigError(f"{where}.username", None, "a user name to log in with the password")
    if not isinstance(username, str) or not username or _CONTROL.search(username):
        raise ConfigError(f"{where}.username", "(not shown)", "a user name on one line")
    if raw is None:
        raise ConfigError(f"{where}.password", None, "a password (env:NAME, file:PATH or text)")
    if not isinstance(raw, str):
        raise ConfigError(f"{where}.password", "(not shown)", "a text, env:NAME or file:PATH")
    if security == "none":
        raise ConfigError(
            f"{where}.security", security,
            "starttls or tls with a username and password (never sent in clear)",
        )  # fmt: skip
    password = resolve_secret(raw, f"{where}.password")
    if not password:
        raise ConfigError(f"{where}.password", "(not shown)", "a password that is not empty")
    return username, password


def _check_ca_file(where: str, ca_file: Any, security: str) -> None:
    if security == "none":
        raise ConfigError(f"{where}.ca_file", ca_file, "no ca_file without starttls or tls")
    check_ca_file(where, ca_file)


def _address(option: str, value: Any) -> str:
    """An address as given (``a@b.example`` or ``Name <a@b.example>``),
    checked: ASCII, one line, exactly one ``@`` in a valid addr-spec."""
    allowed = "an email address (a@b.example or Name <a@b.example>)"
    if not isinstance(value, str) or not value.isascii() or _CONTROL.search(value):
        raise ConfigError(option, value, allowed)
    named = _NAMED.fullmatch(value)
    display, addr = (named["name"].strip('"'), named["addr"]) if named else ("", value.strip())
    try:
        parsed = Address(addr_spec=addr)
    except (HeaderParseError, ValueError, IndexError):
        raise ConfigError(option, value, allowed) from None
    if addr.count("@") != 1 or not parsed.username or not parsed.domain or " " in addr:
        raise ConfigError(option, value, allowed)
    if any(c in display for c in '<>"\\'):
        raise ConfigError(option, value, allowed)
    return formataddr((display, addr)) if display else addr

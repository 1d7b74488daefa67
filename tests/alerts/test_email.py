"""The email channel against a real SMTP server on 127.0.0.1 (aiosmtpd):
plain, STARTTLS with a login, implicit TLS; certificates verified against
the configured host name on the address that was checked; refusals for
good and for now; a whole send bounded by its timeout; the password never
shown; and notices through the outbox, threaded per episode."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from aegis_mw.alerts.channels import channels_from_config
from aegis_mw.alerts.email_channel import EmailChannel, email_subject, message_id
from aegis_mw.alerts.service import AlertService
from aegis_mw.core.errors import ConfigError
from tests.history.dataset import open_sink

from .conftest import MAIL_HOST, dripping_server
from .test_notices import RULE, episode
from .test_service import Wall

PASSWORD = "pa55-W0rd-never-shown"
USER = "alerts"


class Mail(NamedTuple):
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated: bool
    tls: bool
    reply: str


class Inbox:
    """An aiosmtpd handler: keeps every DATA it is given, answering the
    queued ``data_replies`` first, then 250."""

    def __init__(self, data_replies: tuple[str, ...] = (), rcpt_reply: str = "") -> None:
        self.data_replies = list(data_replies)
        self.rcpt_reply = rcpt_reply
        self.attempts: list[Mail] = []

    @property
    def mails(self) -> list[Mail]:
        return [mail for mail in self.attempts if mail.reply.startswith("250")]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.data_replies.pop(0) if self.data_replies else "250 OK"
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.attempts.append(
            Mail(
                envelope.mail_from or "", list(envelope.rcpt_tos), message,
                bool(session.authenticated), session.ssl is not None, reply,
            )
        )  # fmt: skip
        return reply


class Server(Controller):  # type: ignore[misc]
    """aiosmtpd on a port the system picked on 127.0.0.1 (bound before the
    server starts: no port race)."""

    def __init__(self, handler: Inbox, **kwargs: Any) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        super().__init__(
            handler, hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs
        )

    def _create_server(self) -> Any:
        return self.loop.create_server(
            self._factory_invoker, sock=self.listener, ssl=self.ssl_context
        )


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[Callable[..., tuple[Server, Inbox]]]:
    started: list[Server] = []

    def start(inbox: Inbox | None = None, **kwargs: Any) -> tuple[Server, Inbox]:
        inbox = inbox or Inbox()
        server = Server(inbox, **kwargs)
        server.start()
        started.append(server)
        return server, inbox

    yield start
    for server in started:
        server.stop()


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def email(server: Server, **settings: Any) -> EmailChannel:
    """A channel to ``server`` (plain SMTP unless the settings say more)."""
    base = {
        "type": "email", "host": "127.0.0.1", "port": server.port, "security": "none",
        "sender": "Aegis alerts <alerts@aegis.example>",
        "to": ["ops@aegis.example", "oncall@aegis.example"], "allow_private": True,
        "group_by": ["..."],
    }  # fmt: skip
    [channel] = channels_from_config({"mail": {**base, **settings}}).values()
    assert isinstance(channel, EmailChannel)
    return channel


def notice(kind: str = "firing", **labels: str) -> dict[str, Any]:
    """A notice as the outbox stores it (see outbox.notice_payload)."""
    firing = kind == "firing"
    return {
        "status": "firing" if firing else "resolved",
        "alerts": [
            {
                "labels": {
                    "alertname": "errors",
                    "severity": "critical",
                    "route": "/pay",
                    **labels,
                },
                "annotations": {"summary": "30 % fail"},
                "startsAt": "2027-01-15T08:00:00Z" if firing else "0001-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z" if firing else "2027-01-15T08:05:00Z",
            }
        ],
        "aegis": {"kind": kind, "episode": "e" * 32, "value": 0.3, "at": 1_800_000_000.0},
    }


def resolver(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> None:
    """Our own answers for some names (the others resolved as usual)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port))
                for a in names[host]
            ]  # fmt: skip
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# -- through the outbox -------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


def service(sink: Any, wall: Wall, server: Server) -> AlertService:
    channels = {"mail": email(server)}
    return AlertService([RULE], sink.alert_store(), sink, interval=10, wall=wall, channels=channels)


def test_a_firing_and_its_resolve_arrive_as_one_thread(
    sink: Any, smtp: Callable[..., tuple[Server, Inbox]]
) -> None:
    server, inbox = smtp()
    wall = Wall()
    evaluator = service(sink, wall, server)
    episode(sink, wall, evaluator)
    assert evaluator.sender.send_due() == 1  # the resolve waits for its firing
    assert evaluator.sender.send_due() == 1
    assert evaluator.sender.send_due() == 0  # nothing is sent twice
    firing, resolved = inbox.mails
    assert firing.message["Subject"] == "[FIRING] errors (critical) 30 % fail"
    assert resolved.message["Subject"] == "[RESOLVED] errors (critical) 0 % fail"
    for mail in (firing, resolved):
        assert mail.mail_from == "alerts@aegis.example"
        assert mail.rcpt_tos == ["ops@aegis.example", "oncall@aegis.example"]
        assert mail.message["From"] == "Aegis alerts <alerts@aegis.example>"
        assert mail.message["To"] == "ops@aegis.example, oncall@aegis.example"
        assert mail.message["Auto-Submitted"] == "auto-generated"
    body = firing.message.get_content()
    assert "alertname = errors" in body and "severity = critical" in body
    assert "summary = 30 % fail" in body and "Value:" in body and "Started:" in body
    assert "Ended:" in resolved.message.get_content()
    # One thread: the episode's root, which the resolve answers.
    root = firing.message["References"]
    assert root.startswith("<aegis-") and root.endswith("@aegis_mw>")
    assert resolved.message["References"] == resolved.message["In-Reply-To"] == root
    assert firing.message["In-Reply-To"] is None
    ids = {mail.message["Message-ID"] for mail in (firing, resolved)}
    assert len(ids) == 2 and root not in ids
    rows = evaluator.store.notices(10)
    assert [r["state"] for r in rows] == ["delivered", "delivered"]


def test_a_temporary_refusal_is_retried_with_the_same_message_id(
    sink: Any, smtp: Callable[..., tuple[Server, Inbox]]
) -> None:
    server, inbox = smtp(Inbox(data_replies=("451 4.3.0 try again later",)))
    wall = Wall()
    evaluator = service(sink, wall, server)
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()  # 451: backs off about 2 s
    assert inbox.mails == []
    assert evaluator.sender.send_due() == 0
    wall.now += 3
    assert evaluator.sender.send_due() == 1
    wall.now += 1
    assert evaluator.sender.send_due() == 1
    refused, firing, resolved = inbox.attempts
    assert refused.reply.startswith("451") and firing.reply.startswith("250")
    assert refused.message["Message-ID"] == firing.message["Message-ID"]
    assert resolved.message["In-Reply-To"] == firing.message["References"]
    assert [m.message["Subject"][:10] for m in inbox.mails] == ["[FIRING] e", "[RESOLVED]"]
    rows = evaluator.store.notices(10)
    assert [(r["state"], r["attempts"]) for r in rows] == [("delivered", 1), ("delivered", 2)]
    assert firing.message["Message-ID"] == message_id(rows[1]["notice_key"])


def test_a_refused_login_through_the_outbox_never_shows_the_password(
    sink: Any,
    smtp: Callable[..., tuple[Server, Inbox]],
    certificate: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not delivered, not retried as a passing fault; the row, the logs and
    the channel's repr say why without the password."""
    caplog.set_level(logging.DEBUG)
    server, inbox = smtp(
        tls_context=server_tls(certificate), require_starttls=True, auth_required=True,
        authenticator=authenticator,
    )  # fmt: skip
    wrong = PASSWORD + "-wrong"
    channels = {
        "mail": email(
            server, security="starttls", username=USER, password=wrong,
            ca_file=str(certificate[0]),
        )
    }  # fmt: skip
    wall = Wall()
    evaluator = AlertService(
        [RULE], sink.alert_store(), sink, interval=10, wall=wall, channels=channels
    )
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()
    assert inbox.attempts == []
    rows = evaluator.store.notices(10)
    assert all(row["state"] != "delivered" for row in rows)
    assert "the SMTP server refused the login (535)" in [row["last_error"] for row in rows]
    assert all(wrong not in record.getMessage() for record in caplog.records)
    assert wrong not in repr(rows) and wrong not in repr(channels)


# -- TLS and logins -----------------------------------------------------------


def test_starttls_with_a_login(
    smtp: Callable[..., tuple[Server, Inbox]],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server, inbox = smtp(
        tls_context=server_tls(certificate), require_starttls=True, auth_required=True,
        authenticator=authenticator,
    )  # fmt: skip
    monkeypatch.setenv("AEGIS_TEST_SMTP_PASSWORD", PASSWORD)
    channel = email(
        server, security="starttls", username=USER, password="env:AEGIS_TEST_SMTP_PASSWORD",
        ca_file=str(certificate[0]),
    )  # fmt: skip
    assert channel.password == PASSWORD and PASSWORD not in repr(channel)
    assert channel.send("k1", notice()).delivered
    [mail] = inbox.mails
    assert mail.tls and mail.authenticated
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)


def test_implicit_tls_with_a_login(
    smtp: Callable[..., tuple[Server, Inbox]], certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    server, inbox = smtp(
        ssl_context=server_tls(certificate), auth_require_tls=False,
        authenticator=authenticator,
    )  # fmt: skip
    (tmp_path / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    channel = email(
        server, security="tls", username=USER, password=f"file:{tmp_path / 'password'}",
        ca_file=str(certificate[0]),
    )  # fmt: skip
    assert channel.send("k1", notice()).delivered
    [mail] = inbox.mails
    assert mail.authenticated and mail.message["Subject"].startswith("[FIRING] errors")


def test_a_refused_login_fails_for_good_and_never_shows_the_password(
    smtp: Callable[..., tuple[Server, Inbox]],
    certificate: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server, inbox = smtp(
        tls_context=server_tls(certificate), require_starttls=True, auth_required=True,
        authenticator=authenticator,
    )  # fmt: skip
    wrong = PASSWORD + "-wrong"
    channel = email(
        server, security="starttls", username=USER, password=wrong, ca_file=str(certificate[0])
    )
    result = channel.send("k1", notice())
    assert not result.delivered and result.permanent and result.broken
    assert result.error == "the SMTP server refused the login (535)"
    assert wrong not in repr(channel) and wrong not in repr(result)
    assert all(wrong not in record.getMessage() for record in caplog.records)
    assert inbox.attempts == []


def test_an_untrusted_certificate_is_refused_for_good(
    smtp: Callable[..., tuple[Server, Inbox]], certificate: tuple[Path, Path]
) -> None:
    server, inbox = smtp(tls_context=server_tls(certificate), require_starttls=True)
    channel = email(server, security="starttls")  # the system's CAs: ours is not among them
    result = channel.send("k1", notice())
    assert not result.delivered and result.permanent
    assert result.error == "the SMTP server's TLS certificate was refused"
    assert inbox.attempts == []


def test_tls_checks_the_host_name_on_the_address_that_was_checked(
    smtp: Callable[..., tuple[Server, Inbox]],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection goes to the resolved (vetted) address; the certificate
    is checked against the configured name: the certificate's name passes,
    another name on the same address is refused."""
    resolver(monkeypatch, {MAIL_HOST: ["127.0.0.1"], "other.aegis.test": ["127.0.0.1"]})
    server, inbox = smtp(ssl_context=server_tls(certificate))
    good = email(server, host=MAIL_HOST, security="tls", ca_file=str(certificate[0]))
    assert good.send("k1", notice()).delivered
    other = email(server, host="other.aegis.test", security="tls", ca_file=str(certificate[0]))
    result = other.send("k2", notice())
    assert result.permanent and "certificate" in result.error
    assert len(inbox.mails) == 1


def test_a_server_without_starttls_is_never_sent_to_in_clear(
    smtp: Callable[..., tuple[Server, Inbox]],
) -> None:
    server, inbox = smtp()
    result = email(server, security="starttls").send("k1", notice())
    assert not result.delivered and result.permanent
    assert "STARTTLS" in result.error and inbox.attempts == []


# -- refusals, and time ---------------------------------------------------------


def test_recipients_refused_for_good(smtp: Callable[..., tuple[Server, Inbox]]) -> None:
    server, inbox = smtp(Inbox(rcpt_reply="550 5.1.1 no such mailbox here"))
    result = email(server).send("k1", notice())
    assert not result.delivered and result.permanent
    assert result.error == "the SMTP server refused every recipient (550)"  # no reply text
    assert inbox.attempts == []


def test_a_mail_refused_for_now_is_retried(smtp: Callable[..., tuple[Server, Inbox]]) -> None:
    server, inbox = smtp(Inbox(data_replies=("452 4.3.1 insufficient system storage",)))
    channel = email(server)
    first = channel.send("k1", notice())
    assert not first.delivered and not first.permanent
    assert first.error == "the SMTP server refused the mail (452)"
    assert channel.send("k1", notice()).delivered
    assert [mail.reply[:3] for mail in inbox.attempts] == ["452", "250"]


def test_a_server_that_never_answers_is_cut_off_at_the_timeout() -> None:
    """It takes the connection (the listen backlog) and says nothing."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        channel = EmailChannel(
            "mute", "127.0.0.1", "a@aegis.example", ("b@aegis.example",),
            port=listener.getsockname()[1], security="none", allow_private=True, timeout=1.0,
        )  # fmt: skip
        started = time.monotonic()
        result = channel.send("k", notice())
        took = time.monotonic() - started
    assert not result.delivered and not result.permanent
    assert took < 3.0, took


def test_a_server_refusing_the_session_disables_the_channel() -> None:
    """A 554 greeting meets every notice alike: the channel is broken, the
    notice kept (not failed on its own)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"554 no service here\r\n")
            connection.recv(1024)

    thread = threading.Thread(target=refuse)
    thread.start()
    channel = EmailChannel(
        "closed", "127.0.0.1", "a@aegis.example", ("b@aegis.example",),
        port=listener.getsockname()[1], security="none", allow_private=True, timeout=2.0,
    )  # fmt: skip
    result = channel.send("k", notice())
    thread.join(10)
    listener.close()
    assert (result.delivered, result.permanent, result.broken) == (False, True, True)
    assert result.error == "the SMTP server refused the session (554)"


def test_a_server_that_answers_a_byte_at_a_time_is_cut_off() -> None:
    """Each read is quick; the send as a whole outlasts its timeout."""
    with dripping_server(b"220-" + b"x" * 100, reads_first=False) as port:
        channel = EmailChannel(
            "slow", "127.0.0.1", "a@aegis.example", ("b@aegis.example",),
            port=port, security="none", allow_private=True, timeout=1.0,
        )  # fmt: skip
        started = time.monotonic()
        result = channel.send("k", notice())
        took = time.monotonic() - started
    assert not result.delivered and not result.permanent
    assert result.error == "the SMTP server did not finish in 1 s"
    assert took < 3.0, took


# -- the host's own network -----------------------------------------------------


def test_the_hosts_own_network_is_refused_at_send_time(
    smtp: Callable[..., tuple[Server, Inbox]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name resolving to loopback, or to a public and a private address:
    refused for good unless allow_private; nothing reaches the server."""
    server, inbox = smtp()
    resolver(monkeypatch, {"mixed.aegis.test": ["93.184.215.14", "10.0.0.7"]})
    local = email(server, host="localhost", allow_private=False)
    result = local.send("k1", notice())
    assert result.permanent and "loopback" in result.error
    mixed = email(server, host="mixed.aegis.test", allow_private=False)
    result = mixed.send("k1", notice())
    assert result.permanent and "private" in result.error
    assert inbox.attempts == []


# -- settings -------------------------------------------------------------------


BASE = {"type": "email", "host": "smtp.aegis.example", "sender": "a@aegis.example",
        "to": ["b@aegis.example"]}  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "where", "allowed"),
    [
        ({"host": None}, "alert_channels.c.host", "host name or IP address"),
        ({"host": "smtp example"}, "alert_channels.c.host", "host name or IP address"),
        ({"host": "127.0.0.1"}, "alert_channels.c.host", "loopback"),
        ({"host": "10.1.2.3"}, "alert_channels.c.host", "private"),
        ({"host": "::1"}, "alert_channels.c.host", "loopback"),
        ({"port": 0}, "alert_channels.c.port", "1 to 65535"),
        ({"port": "587"}, "alert_channels.c.port", "1 to 65535"),
        ({"security": "ssl"}, "alert_channels.c.security", "starttls, tls, none"),
        ({"password": None}, "alert_channels.c.password", "a password"),
        ({"username": None}, "alert_channels.c.username", "a user name"),
        ({"security": "none"}, "alert_channels.c.security", "never sent in clear"),
        ({"username": "a\r\nb"}, "alert_channels.c.username", "one line"),
        ({"password": 12}, "alert_channels.c.password", "env:NAME"),
        ({"password": ""}, "alert_channels.c.password", "not empty"),
        ({"sender": "a@b@aegis.example"}, "alert_channels.c.sender", "an email address"),
        ({"sender": "a@aegis.example\r\nBcc: x@evil.example"}, "alert_channels.c.sender",
         "an email address"),
        ({"sender": "no-at-sign"}, "alert_channels.c.sender", "an email address"),
        ({"sender": "Name <a@aegis.example"}, "alert_channels.c.sender", "an email address"),
        ({"to": []}, "alert_channels.c.to", "a non-empty list"),
        ({"to": "b@aegis.example"}, "alert_channels.c.to", "a non-empty list"),
        ({"to": ["b@aegis.example", "c@@aegis.example"]}, "alert_channels.c.to",
         "an email address"),
        ({"to": ["bé@aegis.example"]}, "alert_channels.c.to", "an email address"),
        ({"severities": ["page"]}, "alert_channels.c.severities", "a list of info"),
        ({"timeout": 0}, "alert_channels.c.timeout", "> 0 and <= 60"),
        ({"timeout": 61}, "alert_channels.c.timeout", "> 0 and <= 60"),
        ({"allow_private": "yes"}, "alert_channels.c.allow_private", "true or false"),
        ({"ca_file": "missing.pem"}, "alert_channels.c.ca_file", "PEM file"),
        ({"ca_file": "x.pem", "security": "none", "username": None, "password": None},
         "alert_channels.c.ca_file", "no ca_file"),
        ({"url": "https://x.example"}, "alert_channels.c.url", "one of allow_private"),
    ],
)  # fmt: skip
def test_settings_are_checked_and_the_password_never_shown(
    settings: dict[str, Any], where: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_config({"c": {**BASE, "username": USER, "password": PASSWORD, **settings}})
    assert caught.value.option == where and allowed in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value.value)


def test_defaults_and_ports() -> None:
    made = channels_from_config(
        {
            "a": BASE,
            "b": {**BASE, "security": "tls"},
            "c": {**BASE, "security": "none", "sender": "Aegis, alerts <a@aegis.example>"},
        }
    )
    a, b, c = made.values()
    assert isinstance(a, EmailChannel) and isinstance(b, EmailChannel)
    assert isinstance(c, EmailChannel)
    assert (a.port, a.security, a.timeout, a.allow_private) == (587, "starttls", 10.0, False)
    assert (b.port, c.port) == (465, 25)
    assert c.sender == '"Aegis, alerts" <a@aegis.example>'


def test_an_unset_password_reference_is_named_not_shown() -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_config(
            {"c": {**BASE, "username": USER, "password": "env:AEGIS_TEST_UNSET_SMTP_PASSWORD"}}
        )
    assert "is not set" in str(caught.value)


def test_settings_with_an_email_channel_can_be_replaced() -> None:
    from aegis_mw.core.settings import AegisSettings

    settings = AegisSettings(alert_channels={"m": {**BASE, "username": USER, "password": PASSWORD}})
    again = settings.replace(alert_interval=20)
    assert again.alert_channels == settings.alert_channels
    assert PASSWORD not in repr(again) and PASSWORD not in repr(again.alert_channels)


# -- the message ----------------------------------------------------------------


def test_labels_cannot_inject_headers(smtp: Callable[..., tuple[Server, Inbox]]) -> None:
    server, inbox = smtp()
    evil = notice(route="/x\r\nBcc: thief@evil.example\r\n\r\nbody")
    assert "\n" not in email_subject(evil) and "\r" not in email_subject(evil)
    assert email(server).send("k1", evil).delivered
    [mail] = inbox.mails
    assert mail.message["Bcc"] is None
    assert mail.rcpt_tos == ["ops@aegis.example", "oncall@aegis.example"]
    # (Python's parser keeps the space of a fold after "Subject:"; mail readers trim it.)
    assert mail.message["Subject"].strip().startswith("[FIRING] errors (critical) route=/x Bcc:")


def test_the_message_id_is_the_notice_keys() -> None:
    channel = EmailChannel("m", "smtp.aegis.example", "a@aegis.example", ("b@aegis.example",))
    key = f"{'e' * 32}.firing.1800000000.000"
    one, again = channel.message(key, notice()), channel.message(key, notice())
    assert one["Message-ID"] == again["Message-ID"] == message_id(key)
    assert len(f"Message-ID: {message_id(key)}") <= 78  # never folded
    assert channel.message("other", notice())["Message-ID"] != one["Message-ID"]
    resolve = channel.message(f"{'e' * 32}.resolved.1800000300.000", notice("resolved"))
    assert resolve["In-Reply-To"] == one["References"] == f"<aegis-{'e' * 32}@aegis_mw>"
    assert resolve["Subject"] == "[RESOLVED] errors (critical) route=/pay 30 % fail"
    odd = channel.message("a key with spaces / and <brackets>", notice())
    assert " " not in odd["Message-ID"] and odd["Message-ID"].count("<") == 1


def test_no_name_lookup_outside_the_timeout(
    smtp: Callable[..., tuple[Server, Inbox]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """smtplib would look this host's name up (socket.getfqdn, a DNS query
    no timeout bounds) for its EHLO: the channel gives the name itself."""
    import socket as sockets

    def lookup(name: str = "") -> str:
        raise AssertionError("a name lookup outside the send's timeout")

    monkeypatch.setattr(sockets, "getfqdn", lookup)
    server, inbox = smtp(Inbox())
    assert email(server).send("k1", notice()).delivered
    assert len(inbox.attempts) == 1

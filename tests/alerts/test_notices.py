"""Notices through the outbox to a real HTTP receiver on 127.0.0.1: signed,
retried, in order, once per channel, never to the host's own network unless
allowed; channel settings checked without echoing a secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from aegis_mw.alerts import AlertRule
from aegis_mw.alerts.channels import channels_from_config
from aegis_mw.alerts.service import AlertService
from aegis_mw.core.errors import ConfigError
from tests.history.dataset import open_sink

from .conftest import dripping_server
from .test_service import START, Wall, write

#: An HTTP answer that never ends (its header line goes on).
SLOW_ANSWER = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
RULE = AlertRule(
    name="errors", input="error_ratio", operator=">", threshold=0.1, window="1m",
    severity="critical", annotations={"summary": "$value_percent fail"},
)  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = open_sink(request.param, request, tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from aegis_mw.alerts.store import MemoryAlertStore

    if request.param == "memory":
        yield MemoryAlertStore()
        return
    made = open_sink(request.param, request, tmp_path)
    yield made.alert_store()
    made.close()


def service(sink: Any, wall: Wall, url: str, **extra: Any) -> AlertService:
    channels = channels_from_config(
        {"hook": {"type": "webhook", "url": url, "secret": f"whsec_{SECRET}", "group_by": ["..."],
                  "allow_private": True, **extra}}
    )  # fmt: skip
    return AlertService([RULE], sink.alert_store(), sink, interval=10, wall=wall, channels=channels)


def episode(sink: Any, wall: Wall, evaluator: AlertService) -> None:
    """30 % errors, fired; then none, resolved."""
    for second in range(0, 120, 5):
        write(sink, START + second, 20, 6, f"bad{second}-")
    wall.now = START + 80
    evaluator.tick()
    for second in range(120, 220, 5):
        write(sink, START + second, 20, 0, f"ok{second}-")
    wall.now = START + 230
    evaluator.tick()


def received(server: HTTPServer) -> list[dict[str, Any]]:
    out = []
    for request, response in server.log:
        if response.status_code == 200:
            out.append(json.loads(request.get_data()))
    return out


def test_a_signed_firing_then_its_resolve(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    wall = Wall()
    evaluator = service(sink, wall, httpserver.url_for("/hook"))
    episode(sink, wall, evaluator)
    assert evaluator.sender.send_due() == 1  # the resolve waits for its firing
    assert evaluator.sender.send_due() == 1
    firing, resolved = received(httpserver)
    assert (firing["status"], resolved["status"]) == ("firing", "resolved")
    assert firing["receiver"] == "hook"
    assert firing["alerts"][0]["labels"] == {"alertname": "errors", "severity": "critical"}
    assert firing["alerts"][0]["annotations"] == {"summary": "30 % fail"}
    assert firing["alerts"][0]["fingerprint"] == resolved["alerts"][0]["fingerprint"] != ""
    # Standard Webhooks: HMAC-SHA256 of "id.timestamp.body" with the secret's bytes.
    for request, _ in httpserver.log:
        message_id = request.headers["webhook-id"]
        stamp = request.headers["webhook-timestamp"]
        signed = f"{message_id}.{stamp}.".encode() + request.get_data()
        digest = hmac.new(base64.b64decode(SECRET), signed, hashlib.sha256).digest()
        assert request.headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()
    ids = [request.headers["webhook-id"] for request, _ in httpserver.log]
    assert len(set(ids)) == 2
    assert evaluator.sender.send_due() == 0  # nothing is sent twice


def test_failures_are_retried_no_sooner_than_asked(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request("/hook").respond_with_data("", status=500)
    httpserver.expect_oneshot_request("/hook").respond_with_data(
        "", status=429, headers={"Retry-After": "120"}
    )
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    evaluator = service(sink, wall, httpserver.url_for("/hook"))
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()  # 500: back off about 2 s
    assert evaluator.sender.send_due() == 0
    wall.now += 3
    evaluator.sender.send_due()  # 429, Retry-After 120
    wall.now += 100
    assert evaluator.sender.send_due() == 0
    wall.now += 30
    assert evaluator.sender.send_due() == 1
    wall.now += 1
    assert evaluator.sender.send_due() == 1
    assert [n["status"] for n in received(httpserver)] == ["firing", "resolved"]
    rows = evaluator.store.notices(10)
    assert [(r["state"], r["attempts"]) for r in rows] == [("delivered", 1), ("delivered", 3)]


def test_a_receiver_down_for_the_whole_episode_gets_it_in_order(
    sink: Any, httpserver: HTTPServer
) -> None:
    wall = Wall()
    evaluator = service(sink, wall, httpserver.url_for("/hook"))
    httpserver.expect_request("/hook").respond_with_data("", status=503)
    episode(sink, wall, evaluator)
    for _ in range(4):
        wall.now += 400
        evaluator.sender.send_due()
    httpserver.clear_all_handlers()
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall.now += 400
    evaluator.sender.send_due()
    wall.now += 1
    evaluator.sender.send_due()
    assert [n["status"] for n in received(httpserver)] == ["firing", "resolved"]


def test_a_notice_refused_for_good_is_not_retried(sink: Any, httpserver: HTTPServer) -> None:
    """413 refuses this notice, not the channel: failed, and not retried; its
    resolve is not sent (no resolve of a firing the receiver never had)."""
    httpserver.expect_request("/hook").respond_with_data("too large", status=413)
    wall = Wall()
    evaluator = service(sink, wall, httpserver.url_for("/hook"))
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()
    wall.now += 3600
    evaluator.sender.send_due()
    assert len(httpserver.log) == 1  # the firing, once
    resolve, firing = evaluator.store.notices(10)
    assert (firing["state"], firing["last_error"]) == ("failed", "the webhook answered 413")
    assert (resolve["state"], resolve["last_error"]) == (
        "skipped", "its firing was not delivered here"
    )  # fmt: skip
    assert evaluator.store.channel_states() == {}


@pytest.mark.parametrize(
    ("status", "state", "disabled"),
    [
        (301, "pending", True),  # redirects are not followed: no notice would pass
        (308, "pending", True),
        (405, "pending", True),
        (415, "pending", True),
        (409, "failed", False),  # refusing this notice: never retried
        (418, "failed", False),
        (408, "pending", False),  # passing: retried
        (425, "pending", False),
        (503, "pending", False),
    ],
)
def test_only_a_passing_fault_is_retried(
    sink: Any, httpserver: HTTPServer, status: int, state: str, disabled: bool
) -> None:
    """As Alertmanager's notifiers: 5xx, 408, 425 and 429 are retried; an
    answer every notice would get disables the channel; any other refusal
    fails the notice for good (retried, it would be refused for ever and
    hold the alert's later notices back)."""
    httpserver.expect_request("/hook").respond_with_data("", status=status)
    wall = Wall()
    evaluator = service(sink, wall, httpserver.url_for("/hook"))
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()
    firing = evaluator.store.notices(10)[-1]
    assert (firing["state"], firing["last_error"]) == (state, f"the webhook answered {status}")
    assert bool(evaluator.store.channel_states()) == disabled


def test_two_senders_deliver_each_notice_once(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    one = service(sink, wall, httpserver.url_for("/hook"))
    other = service(sink, wall, httpserver.url_for("/hook"))
    episode(sink, wall, one)
    for _ in range(3):
        other.sender.send_due()
        one.sender.send_due()
    assert [n["status"] for n in received(httpserver)] == ["firing", "resolved"]


def test_the_hosts_own_network_is_refused_at_send_time(sink: Any, httpserver: HTTPServer) -> None:
    """A name (localhost) resolving to a loopback address: refused for good
    unless allow_private; nothing reaches the receiver."""
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    url = httpserver.url_for("/hook").replace("127.0.0.1", "localhost")
    evaluator = service(sink, wall, url, allow_private=False)
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()
    assert httpserver.log == []
    [*_, first] = evaluator.store.notices(10)
    # Every notice would meet it: the channel is disabled, the notice kept.
    assert first["state"] == "pending" and "loopback" in first["last_error"]
    assert "loopback" in evaluator.store.channel_states()["hook"].reason


@pytest.mark.parametrize(
    ("settings", "where", "allowed"),
    [
        ({"type": "sms"}, "alert_channels.c.type", "one of webhook, slack, pagerduty"),
        ({"type": "webhook", "url": "https://h.example", "colour": 1}, "alert_channels.c.colour",
         "one of allow_private"),
        ({"type": "webhook", "url": "ftp://x"}, "alert_channels.c.url", "http:// or https://"),
        ({"type": "webhook", "url": "http://10.1.2.3/h"}, "alert_channels.c.url", "private"),
        ({"type": "webhook", "url": "http://169.254.169.254/"}, "alert_channels.c.url", "link-local"),
        ({"type": "webhook", "url": "http://[::1]/"}, "alert_channels.c.url", "loopback"),
        ({"type": "webhook", "url": "http://100.100.100.200/"}, "alert_channels.c.url",
         "non-public"),
        ({"type": "webhook", "url": "http://[2002:a9fe:a9fe::1]/"}, "alert_channels.c.url",
         "link-local"),
        ({"type": "webhook", "url": "http://[::ffff:127.0.0.1]/"}, "alert_channels.c.url",
         "loopback"),
        ({"type": "webhook", "url": "http://h.example:99999/"}, "alert_channels.c.url",
         "a valid port"),
        ({"type": "webhook", "url": "env:AEGIS_TEST_UNSET_HOOK"}, "alert_channels.c.url",
         "is not set"),
        ({"type": "webhook", "url": "https://h.example", "secret": "c2hvcnQ="},
         "alert_channels.c.secret", "at least 16 bytes"),
        ({"type": "webhook", "url": "https://h.example", "secret": "not base64!"},
         "alert_channels.c.secret", "base64"),
        ({"type": "webhook", "url": "http://h.example", "ca_file": "x.pem"},
         "alert_channels.c.ca_file", "no ca_file for an http:// URL"),
        ({"type": "webhook", "url": "https://h.example", "ca_file": "no-such.pem"},
         "alert_channels.c.ca_file", "a PEM file of certificates (FileNotFoundError)"),
        ({"type": "webhook", "url": "https://h.example", "timeout": 0}, "alert_channels.c.timeout",
         "> 0 and <= 60"),
        ({"type": "webhook", "url": "https://h.example", "severities": ["page"]},
         "alert_channels.c.severities", "a list of info"),
    ],
)  # fmt: skip
def test_channel_settings_are_checked_and_secrets_never_shown(
    settings: dict[str, Any], where: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_config({"c": settings})
    shown = str(caught.value)
    assert caught.value.option == where and allowed in shown
    for key in ("url", "secret"):  # a webhook's URL is a secret too (Slack's are)
        value = settings.get(key)
        if isinstance(value, str) and not value.startswith("env:"):
            assert value not in shown


def test_secrets_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text(f"whsec_{SECRET}\n", encoding="utf-8")
    monkeypatch.setenv("AEGIS_TEST_HOOK", "https://hooks.example/abc")
    [channel] = channels_from_config(
        {"ops": {"type": "webhook", "url": "env:AEGIS_TEST_HOOK",
                 "secret": f"file:{tmp_path / 'secret'}"}}
    ).values()  # fmt: skip
    assert channel.url == "https://hooks.example/abc"  # type: ignore[union-attr]
    assert "hooks.example" not in repr(channel) and SECRET not in repr(channel)


def test_the_option_names_the_channel_and_hides_its_url() -> None:
    from aegis_mw.core.settings import AegisSettings

    with pytest.raises(ConfigError) as caught:
        AegisSettings(alert_channels={"ops": {"type": "webhook", "url": "http://10.9.8.7/x"}})
    assert "alert_channels.ops.url" in str(caught.value)
    assert "10.9.8.7" not in str(caught.value)


def test_an_apps_threads_evaluate_and_deliver(
    tmp_path: Path, httpserver: HTTPServer, make_aegis: Any
) -> None:
    """An Aegis with a rule and a webhook, its own threads at work (an
    evaluation a second): the receiver gets the firing, once."""
    import time

    httpserver.expect_request("/hook").respond_with_data("ok")
    url = f"sqlite:///{tmp_path / 'aegis.db'}"
    sink = open_sink("sqlite", None, tmp_path)
    now = time.time()
    for second in range(15, 60, 5):
        write(sink, now - second, 20, 10, f"w{second}-")
    sink.close()
    aegis = make_aegis(
        sink=url, alert_rules=[RULE], alert_interval=1,
        alert_channels={"hook": {"type": "webhook", "url": httpserver.url_for("/hook"),
                                 "allow_private": True, "group_wait": "0s"}},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not httpserver.log:
        time.sleep(0.05)  # polling the receiver for a condition, with a deadline
    assert aegis.shutdown(10)
    assert [n["status"] for n in received(httpserver)] == ["firing"]


def test_a_sender_leaves_channels_it_does_not_know(sink: Any, httpserver: HTTPServer) -> None:
    """A process without the channel (an older configuration) neither sends
    nor fails its notices; a process with it sends them."""
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    knows = service(sink, wall, httpserver.url_for("/hook"))
    episode(sink, wall, knows)
    other = AlertService(
        [RULE], sink.alert_store(), sink, interval=10, wall=wall,
        channels=channels_from_config(
            {"other": {"type": "webhook", "url": httpserver.url_for("/other"),
                       "allow_private": True}}
        ),
    )  # fmt: skip
    assert other.sender.send_due() == 0
    assert knows.sender.send_due() == 1 and knows.sender.send_due() == 1
    assert [n["status"] for n in received(httpserver)] == ["firing", "resolved"]


def test_a_lost_claim_is_not_sent(store: Any) -> None:
    from aegis_mw.alerts.outbox import CLAIM_SECONDS, Notice

    token = store.claim("a", START, 15)
    notice = Notice("hook", "k1", '["errors", []]', "ep1", "{}", START)
    assert store.commit("a", token, [], [], [], START + 15, [notice])
    [row] = store.claim_notices("s1", START, CLAIM_SECONDS, 5, ["hook"])
    later = START + CLAIM_SECONDS + 1
    [again] = store.claim_notices("s2", later, CLAIM_SECONDS, 5, ["hook"])
    assert not store.renew_claim(row.id, row.claim, later + 60, later)
    assert store.renew_claim(again.id, again.claim, later + 60, later)


def test_an_alerts_notices_go_in_order_across_episodes(store: Any) -> None:
    """A new episode's firing waits behind the old episode's resolve (and a
    resolve written in the same evaluation as its firing follows it)."""
    from aegis_mw.alerts.outbox import Notice

    token = store.claim("a", START, 15)
    alert = '["errors", []]'
    notices = [
        Notice("hook", "ep1.firing", alert, "ep1", "{}", START),
        Notice(None, "ep1.resolved", alert, "ep1", "{}", START + 1),
        Notice("hook", "ep2.firing", alert, "ep2", "{}", START + 2),
    ]
    assert store.commit("a", token, [], [], [], START + 15, notices)
    order = []
    for step in range(3):
        [row] = store.claim_notices("s", START + step, 60, 5, ["hook"])
        order.append(row.key)
        store.finish_notice(row.id, row.claim, "delivered", START, "", START + step)
    assert order == ["ep1.firing", "ep1.resolved", "ep2.firing"]


def test_settings_with_channels_can_be_replaced() -> None:
    from aegis_mw.core.settings import AegisSettings

    settings = AegisSettings(
        alert_channels={"ops": {"type": "webhook", "url": "https://hooks.example/x"}}
    )
    again = settings.replace(alert_interval=20)
    assert again.alert_channels == settings.alert_channels
    assert "hooks.example" not in repr(again)


def test_a_receiver_that_answers_a_byte_at_a_time_is_cut_off() -> None:
    """The timeout bounds the whole send, not each read."""
    import time

    from aegis_mw.alerts.channels import WebhookChannel

    with dripping_server(SLOW_ANSWER, reads_first=True) as port:
        channel = WebhookChannel(
            "slow", f"http://127.0.0.1:{port}/h", allow_private=True, timeout=1.0
        )
        started = time.monotonic()
        result = channel.send("k", {})
        took = time.monotonic() - started
    assert not result.delivered and not result.permanent
    assert took < 3.0, took


def test_a_tls_receiver_that_answers_a_byte_at_a_time_is_cut_off(
    certificate: tuple[Path, Path],
) -> None:
    """Over TLS too (the cut reaches the connection however TLS wrapped it),
    with a private CA trusted through ca_file."""
    import ssl
    import time

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*certificate)
    with dripping_server(SLOW_ANSWER, reads_first=True, tls=server) as port:
        [channel] = channels_from_config({
            "slow": {"type": "webhook", "url": f"https://localhost:{port}/h",
                     "allow_private": True, "timeout": 1.0, "ca_file": str(certificate[0])},
        }).values()  # fmt: skip
        started = time.monotonic()
        result = channel.send("k", {})
        took = time.monotonic() - started
    assert not result.delivered and not result.permanent, result
    assert took < 3.0, took


def test_a_private_ca_is_trusted_only_through_ca_file(
    certificate: tuple[Path, Path],
) -> None:
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever)
    thread.start()
    try:
        url = f"https://localhost:{httpd.server_address[1]}/h"
        trusting, default = channels_from_config({
            "trusting": {"type": "webhook", "url": url, "allow_private": True,
                         "ca_file": str(certificate[0])},
            "default": {"type": "webhook", "url": url, "allow_private": True},
        }).values()  # fmt: skip
        assert trusting.send("k", {}).delivered
        refused = default.send("k", {})
        assert (refused.delivered, refused.permanent, refused.broken) == (False, True, True)
        assert refused.error == "the webhook's TLS certificate was refused"
    finally:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()


def test_a_slack_channel_gets_one_line_per_notice(sink: Any, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/slack", method="POST").respond_with_data("ok")
    wall = Wall()
    channels = channels_from_config(
        {
            "team": {
                "type": "slack",
                "url": httpserver.url_for("/slack"),
                "allow_private": True,
                "group_by": ["..."],
            }
        }
    )
    evaluator = AlertService(
        [RULE], sink.alert_store(), sink, interval=10, wall=wall, channels=channels
    )
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()
    evaluator.sender.send_due()  # within the second: Slack's one message a second
    assert len(httpserver.log) == 1
    wall.now += 1
    evaluator.sender.send_due()
    texts = [json.loads(request.get_data()) for request, _ in httpserver.log]
    assert texts == [
        {"text": ":red_circle: *errors* firing (critical) 30 % fail"},
        {"text": ":large_green_circle: *errors* resolved (critical) 0 % fail"},
    ]
    assert "webhook-signature" not in httpserver.log[0][0].headers


def test_slack_text_escapes_its_markup() -> None:
    from aegis_mw.alerts.channels import slack_text

    notice = {
        "status": "firing",
        "alerts": [{"labels": {"alertname": "a", "route": "/x/<id>"},
                    "annotations": {"summary": "p99 > 1 s & rising"}}],
    }  # fmt: skip
    assert (
        slack_text(notice)
        == ":red_circle: *a* firing route=/x/&lt;id&gt; p99 &gt; 1 s &amp; rising"
    )


def test_a_slack_channel_takes_no_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_config(
            {"s": {"type": "slack", "url": "https://hooks.slack.com/x", "secret": SECRET}}
        )
    assert caught.value.option == "alert_channels.s.secret"
    assert SECRET not in str(caught.value) and "hooks.slack.com" not in str(caught.value)


def test_a_pagerduty_channel_triggers_and_resolves_one_incident(
    sink: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events API v2 (202 Accepted): one dedup key per episode, the routing
    key from the environment, never stored in the outbox."""
    httpserver.expect_request("/v2/enqueue", method="POST").respond_with_json(
        {"status": "success", "message": "Event processed"}, status=202
    )
    monkeypatch.setenv("AEGIS_TEST_PD_KEY", "R0UTINGKEY0123456789abcdef012345")
    wall = Wall()
    channels = channels_from_config(
        {"pager": {"type": "pagerduty", "routing_key": "env:AEGIS_TEST_PD_KEY",
                   "url": httpserver.url_for("/v2/enqueue"), "allow_private": True}}
    )  # fmt: skip
    evaluator = AlertService(
        [RULE], sink.alert_store(), sink, interval=10, wall=wall, channels=channels
    )
    episode(sink, wall, evaluator)
    evaluator.sender.send_due()
    evaluator.sender.send_due()
    trigger, resolve = (json.loads(request.get_data()) for request, _ in httpserver.log)
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] != "aegis-"
    assert trigger["routing_key"] == "R0UTINGKEY0123456789abcdef012345"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["summary"] == "errors firing (critical) 30 % fail"
    assert [n["state"] for n in evaluator.store.notices(10)] == ["delivered", "delivered"]
    stored = json.dumps(sink.alert_store().history(10)) + json.dumps(evaluator.store.notices(10))
    assert "R0UTINGKEY" not in stored and "R0UTINGKEY" not in repr(channels)


def test_a_pagerduty_channel_needs_its_routing_key() -> None:
    with pytest.raises(ConfigError) as caught:
        channels_from_config({"p": {"type": "pagerduty"}})
    assert caught.value.option == "alert_channels.p.routing_key"
    [channel] = channels_from_config({"p": {"type": "pagerduty", "routing_key": "k" * 32}}).values()
    assert channel.url == "https://events.pagerduty.com/v2/enqueue"


def test_the_rows_of_an_alert_still_firing_outlive_the_retention(
    sink: Any, httpserver: HTTPServer
) -> None:
    """Pruned only once its resolve is done: they say where the resolve goes
    and that the channel was told (no second firing after a prune)."""
    httpserver.expect_request("/hook").respond_with_data("ok")
    wall = Wall()
    evaluator = service(sink, wall, httpserver.url_for("/hook"))
    for second in range(0, 120, 5):
        write(sink, START + second, 20, 6, f"bad{second}-")
    wall.now = START + 80
    evaluator.tick()
    evaluator.sender.send_due()
    evaluator.store.prune_history(wall.now + 10**6, 100)
    [firing] = evaluator.store.notices(10)
    assert firing["state"] == "delivered"
    for second in range(120, 220, 5):
        write(sink, START + second, 20, 0, f"ok{second}-")
    wall.now = START + 230
    evaluator.tick()
    evaluator.sender.send_due()
    assert [n["status"] for n in received(httpserver)] == ["firing", "resolved"]
    evaluator.store.prune_history(wall.now + 10**6, 100)
    assert evaluator.store.notices(10) == []

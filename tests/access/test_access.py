"""Access rules per route group: parsing at start, and deciding requests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware, AegisSettings, ConfigError
from aegis_mw.access import decide
from aegis_mw.core.access_rules import parse_access, parse_rule
from tests.harness import call, http_scope

TOKEN, ADMIN_TOKEN = "viewer-token-123", "admin-token-456"


async def no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the middleware answers its own routes")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


RULE = parse_rule(
    "api",
    {
        "tokens": [TOKEN],
        "admin_tokens": [ADMIN_TOKEN],
        "basic": {"grafana": "grafana-pass"},
        "admin_basic": {"ops": "ops-password"},
    },
)


@pytest.mark.parametrize(
    ("authorization", "role"),
    [
        (f"Bearer {TOKEN}", "viewer"),
        (f"bearer   {ADMIN_TOKEN}", "admin"),
        (basic("grafana", "grafana-pass"), "viewer"),
        (basic("ops", "ops-password"), "admin"),
    ],
)
def test_good_credentials_give_their_role(authorization: str, role: str) -> None:
    decision = decide(RULE, authorization=authorization, client_ip="10.1.2.3")
    assert (decision.allowed, decision.role) == (True, role)


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer wrong-token-000",
        f"Bearer {TOKEN}x",
        basic("grafana", "wrong-password"),
        basic("nobody", "grafana-pass"),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        f"Token {TOKEN}",
    ],
)
def test_bad_or_missing_credentials_get_401_with_challenges(authorization: str) -> None:
    decision = decide(RULE, authorization=authorization, client_ip="10.1.2.3")
    assert (decision.allowed, decision.status, decision.code) == (False, 401, "unauthorized")
    assert decision.headers == [
        ("www-authenticate", 'Bearer realm="aegis"'),
        ("www-authenticate", 'Basic realm="aegis", charset="UTF-8"'),
    ]


def test_a_token_from_a_cookie_or_query_counts_too() -> None:
    assert decide(RULE, authorization="", client_ip=None, token=TOKEN).role == "viewer"


def test_ip_allowlist_alone_and_combined() -> None:
    only_ips = parse_rule("metrics", {"allow_ips": ["10.0.0.0/8", "fd00::/8"]})
    for ip, allowed in (
        ("10.9.9.9", True), ("fd00::1", True), ("::ffff:10.0.0.5", True),
        ("192.168.1.1", False), (None, False), ("not-an-ip", False),
    ):  # fmt: skip
        decision = decide(only_ips, authorization="", client_ip=ip)
        assert decision.allowed is allowed, ip
        if not allowed:
            assert (decision.status, decision.code) == (403, "forbidden")

    both = parse_rule("metrics", {"allow_ips": "10.0.0.0/8", "tokens": [TOKEN]})
    inside_no_token = decide(both, authorization="", client_ip="10.0.0.1")
    assert (inside_no_token.allowed, inside_no_token.status) == (False, 401)
    outside_with_token = decide(both, authorization=f"Bearer {TOKEN}", client_ip="8.8.8.8")
    assert (outside_with_token.allowed, outside_with_token.status) == (False, 403)
    assert decide(both, authorization=f"Bearer {TOKEN}", client_ip="10.0.0.1").allowed


def test_no_rule_is_open_as_a_viewer() -> None:
    decision = decide(None, authorization="", client_ip=None)
    assert (decision.allowed, decision.role) == (True, "viewer")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"nope": {}}, "unknown route groups ['nope']"),
        ({"metrics": {"tokens": ["short"]}}, "at least 8 characters"),
        ({"metrics": {"token": [TOKEN]}}, "unknown fields ['token']"),
        ({"metrics": {"allow_ips": ["10.0.0.0/33"]}}, "access['metrics'].allow_ips"),
        ({"metrics": {"basic": {"a:b": "password1"}}}, "without ':'"),
        ({"metrics": "closed"}, "must be 'open' or a table"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_rules_fail_at_start_without_echoing_secrets(value: object, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AegisSettings(access=value)
    message = str(caught.value)
    assert "'access'" in message and words in message
    assert TOKEN not in message and "password1" not in message


def test_rules_from_the_environment_and_a_file(tmp_path: Path) -> None:
    settings = AegisSettings.load(
        environ={"AEGIS_ACCESS": f'{{"metrics": {{"tokens": ["{TOKEN}"]}}}}'}
    )
    [(group, rule)] = settings.access
    assert (group, rule.tokens) == ("metrics", (TOKEN,))
    config = tmp_path / "aegis.toml"
    config.write_text(
        '[aegis.access.health]\nallow_ips = ["127.0.0.1/32"]\n'
        f'[aegis.access.health.basic]\nprobe = "{TOKEN}"\n'
    )
    settings = AegisSettings.load(environ={"AEGIS_CONFIG": str(config)})
    [(group, rule)] = settings.access
    assert group == "health" and rule.basic == (("probe", TOKEN),)
    assert TOKEN not in repr(settings) and TOKEN not in repr(rule)


def test_parse_access_keeps_its_checked_form() -> None:
    checked = parse_access({"metrics": {"tokens": [TOKEN]}})
    assert parse_access(checked) == checked


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic é",  # non-ASCII: the header is read as latin-1
        "Basic \xff\xfe\xfd\xfc",
        "Basic " + base64.b64encode(b"\xff\xfe:\xfd").decode(),  # not UTF-8 inside
        "Basic " + base64.b64encode(b"grafana:grafana-pass").decode() + "!",
        "Basic",
        "Bearer",
    ],
)
def test_malformed_basic_credentials_are_a_401_not_an_error(authorization: str) -> None:
    decision = decide(RULE, authorization=authorization, client_ip="10.1.2.3")
    assert (decision.allowed, decision.status, decision.code) == (False, 401, "unauthorized")


@pytest.mark.anyio
async def test_a_non_ascii_authorization_header_on_a_route_gets_a_json_401(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(
        metrics_registry="none", access={"metrics": {"basic": {"grafana": "grafana-pass"}}}
    )
    middleware = AegisMiddleware(no_app, aegis=aegis)
    scope = http_scope("/metrics", headers=[(b"authorization", "Basic é€".encode())])
    exchange = await call(middleware, scope)
    assert exchange.status == 401
    assert json.loads(exchange.body)["error"]["code"] == "unauthorized"


def test_a_secret_that_cannot_be_encoded_does_not_break_matching() -> None:
    rule = parse_rule("metrics", {"basic": {"odd": "pass\udcffword"}})
    assert decide(rule, authorization=basic("odd", "password"), client_ip=None).status == 401


@pytest.mark.parametrize(
    "token", ["scrape-token-1234\n", " scrape-token-1234", "scrape\ttoken-1234", "tökenvalue1234"]
)
def test_a_token_no_header_can_carry_fails_at_start(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AegisSettings(access={"metrics": {"tokens": [token]}})
    assert "printable ASCII" in str(caught.value)
    assert token not in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "value", "status"),
    [
        (b"x-forwarded-for", b"10.1.2.3", 200),
        (b"x-forwarded-for", b"203.0.113.9", 403),
        # Not an address: the proxy's own (allowed) address must not stand in for it.
        (b"x-forwarded-for", b"unknown", 403),
        (b"forwarded", b"for=_hidden", 403),
        (b"forwarded", b'for="[fd00::1]"', 200),
    ],
)
async def test_allow_ips_behind_a_trusted_proxy_needs_a_readable_client_address(
    make_aegis: Callable[..., Aegis], header: bytes, value: bytes, status: int
) -> None:
    aegis = make_aegis(
        metrics_registry="none",
        trusted_proxies=["10.0.0.0/8"],
        forwarded_header=header.decode(),
        access={"metrics": {"allow_ips": ["10.0.0.0/8", "fd00::/8"]}},
    )
    middleware = AegisMiddleware(no_app, aegis=aegis)
    scope = http_scope("/metrics", headers=[(header, value)], client=("10.0.0.1", 4000))
    exchange = await call(middleware, scope)
    assert exchange.status == status

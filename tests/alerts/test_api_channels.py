"""Channels written through the API: for the admin role only, their
addresses checked when written and at every send, their secrets never
shown, picked up by every process of the app. The middleware is the real
one over a real SQLite file; the receivers are real HTTP servers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from pytest_httpserver import HTTPServer

from aegis_mw import Aegis
from aegis_mw.alerts.store import CHANNEL
from aegis_mw.core.errors import ConfigError
from tests.endpoints.test_api import client, flush

from .test_api_writes import ADMIN, API, EDITOR, RULE, VIEWER, app_with, bearer, tick

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("names")]

SECRET = base64.b64encode(b"0123456789abcdef0123").decode()
LOOPBACK = ["127.0.0.1/32", "::1/128"]


def hook(httpserver: HTTPServer, path: str = "/hook", **extra: Any) -> dict[str, Any]:
    return {"name": "ops", "type": "webhook", "url": httpserver.url_for(path), **extra}


async def send_due(aegis: Aegis) -> int:
    assert aegis.alerts is not None
    return await anyio.to_thread.run_sync(aegis.alerts.sender.send_due)


async def test_only_the_admin_writes_channels_and_everyone_reads_them_without_secrets(
    make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("ALERT_SECRET_OPS", SECRET)
    aegis, app, _ = await app_with(make_aegis, tmp_path, alert_api_networks=LOOPBACK)
    body = hook(httpserver, secret="env:ALERT_SECRET_OPS", severities=["critical"])
    async with client(app) as http:
        for token in (VIEWER, EDITOR):
            refused = await http.put(f"{API}/alert-channels", json=body, headers=bearer(token))
            assert refused.status_code == 403
            assert "admin role" in refused.json()["error"]["message"]
        made = await http.put(f"{API}/alert-channels", json=body, headers=bearer(ADMIN))
        assert made.status_code == 201, made.text
        assert made.json()["data"] == {
            "action": "create",
            "channel": {**body, "url": "(hidden)"},
        }
        again = await http.put(f"{API}/alert-channels", json=body, headers=bearer(ADMIN))
        assert again.status_code == 200 and again.json()["data"]["action"] == "update"
        listed = await http.get(f"{API}/alert-channels", headers=bearer(VIEWER))
        editor_delete = await http.delete(
            f"{API}/alert-channels", params={"name": "ops"}, headers=bearer(EDITOR)
        )
        assert editor_delete.status_code == 403
    [channel] = listed.json()["data"]["channels"]
    assert (channel["name"], channel["type"], channel["source"]) == ("ops", "webhook", "api")
    assert channel["severities"] == ["critical"]
    assert channel["settings"]["url"] == "(hidden)"
    assert channel["settings"]["secret"] == "env:ALERT_SECRET_OPS"  # a name, not the secret
    assert channel["updated_by"].startswith("admin token 1")
    assert listed.json()["data"]["left_out"] == []
    # Neither the URL nor the secret is in any answer or in the audit.
    assert aegis.alerts is not None
    for text in (made.text, listed.text, repr(aegis.alerts.store.audit(10))):
        assert httpserver.url_for("/hook") not in text and SECRET not in text


async def test_a_channel_of_the_api_gets_the_firing_signed(
    make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Written through the API, it is used at once by its process: a test
    notice, then a rule's firing, signed with the referenced secret."""
    monkeypatch.setenv("ALERT_SECRET_OPS", SECRET)
    aegis, app, clock = await app_with(make_aegis, tmp_path, alert_api_networks=LOOPBACK)
    for _ in ("test", "firing"):
        httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")
    async with client(app) as http:
        body = hook(httpserver, secret="env:ALERT_SECRET_OPS", group_wait="0s")
        made = await http.put(f"{API}/alert-channels", json=body, headers=bearer(ADMIN))
        assert made.status_code == 201, made.text
        tested = await http.post(
            f"{API}/channel-test", json={"channel": "ops"}, headers=bearer(EDITOR)
        )
        assert tested.json()["data"] == {"channel": "ops", "delivered": True, "error": None}
        rule = await http.put(f"{API}/alert-rules", json=RULE, headers=bearer(EDITOR))
        assert rule.status_code == 201
        for _ in range(5):
            assert (await http.get("/boom")).status_code == 500
        await flush(aegis)
        clock.advance(20)
        # The channel's sender (a thread of its own since the channel came)
        # is woken by the commit.
        with httpserver.wait(timeout=10) as waited:
            await tick(aegis)
        assert waited.result
    test_notice, firing = httpserver.log
    assert json.loads(test_notice[0].data)["alerts"][0]["labels"]["alertname"] == "aegis_test"
    request = firing[0]
    notice = json.loads(request.data)
    assert (notice["status"], notice["receiver"]) == ("firing", "ops")
    assert notice["alerts"][0]["labels"]["alertname"] == "boom_errors"
    signed = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode()
        + request.data
    )
    digest = hmac.new(base64.b64decode(SECRET), signed, hashlib.sha256).digest()
    assert request.headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"name": "no spaces"}, "name", "letters, digits"),
        ({"name": None}, "name", "letters, digits"),
        ({"type": "fax"}, "type", "one of webhook"),
        ({"colour": "red"}, "colour", "one of"),
        ({"allow_private": True}, "allow_private", "alert_api_networks"),
        ({"ca_file": "/etc/ssl/certs/ca-certificates.crt"}, "ca_file", "not through the API"),
        ({"url": "file:/etc/passwd"}, "url", "no file: reference"),
        ({"url": "env:HOME"}, "url", "env:ALERT_SECRET_NAME"),
        ({"secret": "env:PATH"}, "secret", "env:ALERT_SECRET_NAME"),
        # The app's own settings (the settings' channels among them) are
        # AEGIS_ variables: never a secret a channel of the API may send.
        (
            {"type": "pagerduty", "routing_key": "env:AEGIS_ALERT_CHANNELS"},
            "routing_key",
            "env:ALERT_SECRET_NAME",
        ),
        (
            {
                "type": "email",
                "host": "mail.example",
                "sender": "a@b.example",
                "to": ["c@b.example"],
                "username": "u",
                "password": "env:AEGIS_ACCESS_TOKEN",
            },
            "password",
            "env:ALERT_SECRET_NAME",
        ),
        ({"url": "env:ALERT_SECRET_NOT_SET_ANYWHERE"}, "url", "is not set"),
        ({"url": "ftp://files.example/"}, "url", "http:// or https://"),
        ({"url": "http://10.1.2.3/hook"}, "url", "a private address"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url", "link-local"),
        ({"url": "http://localhost:9/hook"}, "url", "resolves to a loopback address"),
        ({"url": "http://rebound.example/hook"}, "url", "resolves to a private address"),
        ({"severities": ["urgent"]}, "severities", "a list of"),
        ({"mute_windows": ["nights"]}, "mute_windows", "none defined"),
    ],
)
async def test_bad_channels_are_refused_naming_the_field(
    make_aegis: Callable[..., Aegis], tmp_path: Path, change: dict[str, Any], field: str,
    says: str, names: dict[str, str],
) -> None:  # fmt: skip
    """Each a 400 naming the field; no value of the environment and no
    secret in the answer; nothing stored."""
    names["rebound.example"] = "10.0.0.8"
    aegis, app, _ = await app_with(make_aegis, tmp_path)
    body = {"name": "ops", "type": "webhook", "url": "https://hooks.example/x", **change}
    async with client(app, **bearer(ADMIN)) as http:
        answer = await http.put(f"{API}/alert-channels", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_field", field)
    assert says in error["message"], error["message"]
    import os

    for value in (os.environ.get("HOME", ""), os.environ.get("PATH", "")):
        assert len(value) < 4 or value not in answer.text
    assert aegis.alerts is not None and aegis.alerts.store.api_items(CHANNEL) == (0, [])


async def test_the_settings_channels_are_not_the_apis(
    make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer
) -> None:
    settings = {"ops": {"type": "webhook", "url": httpserver.url_for("/settings"),
                        "allow_private": True}}  # fmt: skip
    _, app, _ = await app_with(
        make_aegis, tmp_path, alert_channels=settings, alert_api_networks=LOOPBACK
    )
    async with client(app, **bearer(ADMIN)) as http:
        taken = await http.put(f"{API}/alert-channels", json=hook(httpserver))
        assert taken.status_code == 409 and taken.json()["error"]["field"] == "name"
        kept = await http.delete(f"{API}/alert-channels", params={"name": "ops"})
        assert kept.status_code == 409 and kept.json()["error"]["parameter"] == "name"
        unknown = await http.delete(f"{API}/alert-channels", params={"name": "nope"})
        assert unknown.status_code == 404
        [listed] = (await http.get(f"{API}/alert-channels")).json()["data"]["channels"]
    assert (listed["source"], listed["settings"], listed["updated_by"]) == (
        "settings", None, None
    )  # fmt: skip
    assert httpserver.url_for("/settings") not in repr(listed)


async def test_a_deleted_channel_gets_nothing_more(
    make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer
) -> None:
    """Its receiver down, a firing waits in the outbox; the channel deleted,
    the notice is skipped (never sent later), and the rule's built-in
    channel alert goes with the last channel."""
    aegis, app, clock = await app_with(make_aegis, tmp_path, alert_api_networks=LOOPBACK)
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("down", status=503)
    assert aegis.alerts is not None
    async with client(app) as http:
        made = await http.put(
            f"{API}/alert-channels", json=hook(httpserver, group_wait="0s"),
            headers=bearer(ADMIN),
        )  # fmt: skip
        assert made.status_code == 201
        assert "aegis_channel_disabled" in [rule.name for rule in aegis.alerts.rules]
        await http.put(f"{API}/alert-rules", json=RULE, headers=bearer(EDITOR))
        for _ in range(5):
            await http.get("/boom")
        await flush(aegis)
        clock.advance(20)
        with httpserver.wait(timeout=10) as waited:  # tried once, failed: kept for a retry
            await tick(aegis)
        assert waited.result
        gone = await http.delete(
            f"{API}/alert-channels", params={"name": "ops"}, headers=bearer(ADMIN)
        )
        assert gone.status_code == 200
        assert aegis.alerts.channels == {}
        assert "aegis_channel_disabled" not in [rule.name for rule in aegis.alerts.rules]
        clock.advance(3600)
        assert await send_due(aegis) == 0
    [skipped] = aegis.alerts.store.notices(10)
    assert (skipped["state"], skipped["last_error"]) == (
        "skipped", "the channel was deleted through the API"
    )  # fmt: skip
    assert len(httpserver.log) == 1


async def test_another_process_takes_the_channel_at_its_next_tick(
    make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer
) -> None:
    """Two pipelines over one SQLite file (two workers): a channel written
    through one is used by the other after its next tick; a stored channel
    that does not build there is left out, listed with why, never a failed
    tick."""
    writer, app, _ = await app_with(make_aegis, tmp_path, alert_api_networks=LOOPBACK)
    reader, reader_app, _ = await app_with(make_aegis, tmp_path, alert_api_networks=LOOPBACK)
    assert writer.alerts is not None and reader.alerts is not None
    async with client(app, **bearer(ADMIN)) as http:
        assert (await http.put(f"{API}/alert-channels", json=hook(httpserver))).status_code == 201
    await tick(reader)
    assert list(reader.alerts.channels) == ["ops"]
    assert reader.alerts.sender.channels == reader.alerts.channels
    # Written by another version, or by hand: left out, named.
    reader.alerts.store.put_item(CHANNEL, "odd", {"type": "fax"}, "test", 0.0, 10)
    await tick(reader)
    assert list(reader.alerts.channels) == ["ops"] and reader.alerts.failures == 0
    async with client(reader_app, **bearer(VIEWER)) as http:
        data = (await http.get(f"{API}/alert-channels")).json()["data"]
    assert [c["name"] for c in data["channels"]] == ["ops"]
    [left_out] = data["left_out"]
    assert left_out["name"] == "odd" and "one of webhook" in left_out["reason"]


async def test_the_channel_limit(
    make_aegis: Callable[..., Aegis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aegis_mw.endpoints.alert_writes as writes

    monkeypatch.setattr(writes, "API_CHANNEL_LIMIT", 2)
    _, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app, **bearer(ADMIN)) as http:
        for name in ("a", "b"):
            body = {"name": name, "type": "slack", "url": f"https://hooks.example/{name}"}
            assert (await http.put(f"{API}/alert-channels", json=body)).status_code == 201
        body = {"name": "c", "type": "slack", "url": "https://hooks.example/c"}
        over = await http.put(f"{API}/alert-channels", json=body)
        assert over.status_code == 409 and over.json()["error"]["code"] == "too_many_channels"
        replaced = await http.put(f"{API}/alert-channels", json={**body, "name": "b"})
        assert replaced.status_code == 200


def test_the_networks_setting_is_checked() -> None:
    from aegis_mw import AegisConfigWarning
    from aegis_mw.core.settings import AegisSettings

    with pytest.raises(ConfigError) as caught:
        AegisSettings.load({}, alert_api_networks=["10.0.0.300/8"])
    assert caught.value.option == "alert_api_networks"
    for broad in ("0.0.0.0/0", "169.254.0.0/16", "fd00:ec2::/64"):
        with pytest.warns(AegisConfigWarning, match="cloud metadata"):
            AegisSettings.load({}, alert_api_networks=[broad])


async def test_a_name_that_resolves_to_the_host_later_is_refused_at_send(
    make_aegis: Callable[..., Aegis], tmp_path: Path, names: dict[str, str]
) -> None:
    """Public when written, the host's own loopback when sent (DNS
    rebinding): the send is refused, nothing is connected to."""
    _, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app, **bearer(ADMIN)) as http:
        body = {"name": "ops", "type": "webhook", "url": "http://rebinding.example/hook"}
        assert (await http.put(f"{API}/alert-channels", json=body)).status_code == 201
        names["rebinding.example"] = "127.0.0.1"
        tested = await http.post(f"{API}/channel-test", json={"channel": "ops"})
    data = tested.json()["data"]
    assert data["delivered"] is False
    assert (
        data["error"]
        == "the webhook's host resolves to a loopback address (not an allowed network)"
    )


async def test_deleting_a_stored_channel_the_settings_shadow_keeps_their_notices(
    make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer
) -> None:
    """A channel of the API written before the settings took its name: it
    can be deleted, and the settings' channel of that name keeps its
    pending notices."""
    from aegis_mw.alerts.outbox import Notice

    settings = {"ops": {"type": "webhook", "url": httpserver.url_for("/settings"),
                        "allow_private": True}}  # fmt: skip
    aegis, app, _ = await app_with(make_aegis, tmp_path, alert_channels=settings)
    assert aegis.alerts is not None
    store = aegis.alerts.store
    store.put_item(CHANNEL, "ops", {"type": "slack", "url": "https://hooks.example/s"}, "t", 0, 9)
    await tick(aegis)
    assert aegis.alerts.channels_left_out == {"ops": "a channel of the settings has its name"}
    # A pending notice of the settings' channel, written as the evaluator writes it.
    notice = Notice("ops", "k1", '["errors", []]', "ep1", "{}", aegis.alerts.wall())
    holder, token = aegis.alerts.holder, aegis.alerts.token
    assert store.commit(holder, token, [], [], [], aegis.alerts.wall() + 3600, [notice])
    async with client(app, **bearer(ADMIN)) as http:
        gone = await http.delete(f"{API}/alert-channels", params={"name": "ops"})
        assert gone.status_code == 200
        again = await http.delete(f"{API}/alert-channels", params={"name": "ops"})
        assert again.status_code == 409  # the settings' own now
    [kept] = store.notices(10)
    assert kept["state"] == "pending"
    assert store.api_items(CHANNEL) == (2, [])


async def test_a_stored_channel_that_does_not_read_is_left_out(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Settings that are not a mapping (written by hand): left out, never a
    failed tick."""
    import sqlite3

    aegis, _, _ = await app_with(make_aegis, tmp_path)
    await tick(aegis)  # the store made
    with sqlite3.connect(tmp_path / "aegis.db") as connection:
        connection.execute(
            "INSERT INTO aegis_alert_channel_configs VALUES ('odd', '[1, 2]', 7, 0, 'hand')"
        )
    await tick(aegis)
    assert aegis.alerts is not None and aegis.alerts.failures == 0
    assert aegis.alerts.channels_left_out == {"odd": "unreadable settings (AttributeError)"}

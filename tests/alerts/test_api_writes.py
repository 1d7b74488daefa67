"""The API's writes: alert rules, silences, a test notice and a dry run,
for the editor role only, same-site only, bodies checked, every change
audited. The middleware is the real one over a real SQLite file; the
receiver of the test notice is a real HTTP server."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from pytest_httpserver import HTTPServer

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.alerts.store import RULE as RULE_KIND
from aegis_mw.testing import FakeClock
from tests.endpoints.test_api import client, flush, starlette_app

pytestmark = pytest.mark.anyio

API = "/api/metrics"
VIEWER, EDITOR, ADMIN = "viewer-token-1", "editor-token-1", "admin-token-1"
ACCESS = {
    "api": {
        "tokens": [VIEWER], "editor_tokens": ["editor-token-0", EDITOR], "admin_tokens": [ADMIN],
        "editor_basic": {"ana": "ana-password"},
    }
}  # fmt: skip
RULE = {
    "name": "boom_errors", "input": "error_ratio", "operator": ">", "threshold": 0.2,
    "window": "1m", "route": "/boom", "min_requests": 3, "severity": "critical",
}  # fmt: skip


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def app_with(
    make_aegis: Callable[..., Aegis], tmp_path: Path, **options: Any
) -> tuple[Aegis, Any, FakeClock]:
    clock = FakeClock()
    options.setdefault("access", ACCESS)
    options.setdefault("alerts_enabled", True)
    aegis = make_aegis(
        sink=f"sqlite:///{tmp_path / 'aegis.db'}", clock=clock, alert_interval=3600,
        metrics_registry="none", **options,
    )  # fmt: skip
    return aegis, AegisMiddleware(starlette_app(clock), aegis=aegis), clock


async def tick(aegis: Aegis) -> None:
    assert aegis.alerts is not None
    await anyio.to_thread.run_sync(aegis.alerts.tick)


# -- roles ---------------------------------------------------------------------------


async def test_writes_need_the_editor_role(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app) as http:
        refused = await http.put(f"{API}/alert-rules", json=RULE, headers=bearer(VIEWER))
        assert refused.status_code == 403 and "editor role" in refused.json()["error"]["message"]
        nobody = await http.put(f"{API}/alert-rules", json=RULE)
        assert nobody.status_code == 401
        made = await http.put(f"{API}/alert-rules", json=RULE, headers=bearer(EDITOR))
        assert made.status_code == 201 and made.json()["data"]["action"] == "create"
        again = await http.put(f"{API}/alert-rules", json=RULE, headers=bearer(ADMIN))
        assert again.status_code == 200 and again.json()["data"]["action"] == "update"
        basic = base64.b64encode(b"ana:ana-password").decode()
        gone = await http.delete(
            f"{API}/alert-rules", params={"name": "boom_errors"},
            headers={"authorization": f"Basic {basic}"},
        )  # fmt: skip
        assert gone.status_code == 200
        # Reads stay the viewer's.
        assert (await http.get(f"{API}/alert-rules", headers=bearer(VIEWER))).status_code == 200
    assert aegis.alerts is not None
    audit = aegis.alerts.store.audit(10)
    # Who: the basic user by name, a token by its place in its list, never the secret.
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("delete", "ana via api from 127.0.0.1"),
        ("update", "admin token 1 via api from 127.0.0.1"),
        ("create", "editor token 2 via api from 127.0.0.1"),
    ]
    assert all(EDITOR not in json.dumps(a) and ADMIN not in json.dumps(a) for a in audit)


@pytest.mark.parametrize(
    "access",
    [
        {},  # the app's token: a viewer's
        {"api": "open", "dashboard": "open"},  # an open group never grants writes
        {"api": {"allow_ips": ["127.0.0.0/8"]}},  # an address is not a credential
    ],
)
async def test_no_write_without_an_editor_credential(
    access: dict[str, Any], make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis, app, _ = await app_with(make_aegis, tmp_path, access=access)
    headers = bearer(aegis.access_token.value) if aegis.access_token is not None else {}
    async with client(app) as http:
        answer = await http.post(
            f"{API}/silences", headers=headers,
            json={"matchers": ['alertname="x"'], "duration": "1h", "comment": "c"},
        )  # fmt: skip
        assert answer.status_code == 403, answer.text
        assert (await http.get(f"{API}/silences", headers=headers)).status_code == 200
    assert aegis.alerts is not None and aegis.alerts.store.audit(10) == []


# -- from another site ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"origin": "https://evil.example"}, 403, "cross_site"),
        ({"origin": "null"}, 403, "cross_site"),
        ({"sec-fetch-site": "cross-site"}, 403, "cross_site"),
        ({"sec-fetch-site": "same-site"}, 403, "cross_site"),
        ({"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ],
)
async def test_a_write_from_another_site_is_refused(
    headers: dict[str, str], status: int, code: str, make_aegis: Callable[..., Aegis],
    tmp_path: Path,
) -> None:  # fmt: skip
    aegis, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app) as http:
        answer = await http.put(
            f"{API}/alert-rules", content=json.dumps(RULE),
            headers={"content-type": "application/json", **bearer(EDITOR), **headers},
        )  # fmt: skip
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    assert aegis.alerts is not None and aegis.alerts.store.api_items(RULE_KIND)[1] == []


async def test_the_cookie_writes_only_with_its_own_origin(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The page's cookie is sent by the browser whatever page asks: alone it
    authorises no write; with the page's own Origin it does."""
    _, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app) as http:
        login = await http.get("/dashboard", params={"token": EDITOR})
        assert login.status_code == 303 and any(c.name == "aegis_token" for c in http.cookies.jar)
        alone = await http.put(f"{API}/alert-rules", json=RULE)
        assert alone.status_code == 403 and alone.json()["error"]["code"] == "cross_site"
        other = await http.put(f"{API}/alert-rules", json=RULE, headers={"origin": "http://x.test"})
        assert other.status_code == 403
        own = await http.put(
            f"{API}/alert-rules", json=RULE,
            headers={"origin": "http://testserver", "sec-fetch-site": "same-origin"},
        )  # fmt: skip
        assert own.status_code == 201


# -- bodies ---------------------------------------------------------------------------


async def test_bodies_are_checked(make_aegis: Callable[..., Aegis], tmp_path: Path) -> None:
    aegis, app, _ = await app_with(make_aegis, tmp_path, retention_raw="3h")
    json_editor = {"content-type": "application/json", **bearer(EDITOR)}
    async with client(app) as http:
        cases = [
            (b"{", 400, "body"),
            (b"[1, 2]", 400, "body"),
            (b'{"name": "x", "threshold": NaN}', 400, "body"),
            (b"\xff\xfe", 400, "body"),
            (json.dumps({**RULE, "threshold": "high"}).encode(), 400, "threshold"),
            (json.dumps({**RULE, "colour": "red"}).encode(), 400, "colour"),
            (json.dumps({**RULE, "window": "2d"}).encode(), 400, "window"),
            (json.dumps({k: v for k, v in RULE.items() if k != "input"}).encode(), 400, "input"),
            (b"{" + b" " * 70_000 + b"}", 413, None),
        ]
        for body, status, field in cases:
            answer = await http.put(f"{API}/alert-rules", content=body, headers=json_editor)
            assert answer.status_code == status, (body[:40], answer.text)
            assert answer.json()["error"].get("field") == field
        # A window longer than its rollups are kept: refused with the reason.
        long = await http.put(
            f"{API}/alert-rules", json={**RULE, "window": "6h"}, headers=bearer(EDITOR)
        )
        assert long.status_code == 400 and "retention_raw" in long.json()["error"]["message"]
        assert (await http.delete(f"{API}/alert-rules", headers=bearer(EDITOR))).status_code == 400
        unknown = await http.delete(
            f"{API}/alert-rules", params={"name": "nope"}, headers=bearer(EDITOR)
        )
        assert unknown.status_code == 404
        assert (await http.get(f"{API}/channel-test", headers=bearer(EDITOR))).headers[
            "allow"
        ] == "POST"
        post = await http.post(f"{API}/alert-rules", json=RULE, headers=bearer(EDITOR))
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD, PUT, DELETE"
    assert aegis.alerts is not None and aegis.alerts.store.api_items(RULE_KIND)[1] == []


# -- rules ----------------------------------------------------------------------------


async def test_a_rule_written_through_the_api_fires_is_edited_and_removed(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis, app, clock = await app_with(make_aegis, tmp_path)
    assert aegis.alerts is not None
    async with client(app, **bearer(EDITOR)) as http:
        assert (await http.put(f"{API}/alert-rules", json=RULE)).status_code == 201
        for _ in range(5):
            assert (await http.get("/boom")).status_code == 500
        await flush(aegis)
        clock.advance(20)
        await tick(aegis)
        alerts = (await http.get(f"{API}/alerts")).json()["data"]
        [alert] = alerts["alerts"]
        assert (alert["name"], alert["state"]) == ("boom_errors", "firing")
        # Its own, and the built-in readiness rule its errors would be held by.
        rule, builtin = alerts["rules"]
        assert rule["source"] == "api" and rule["updated_by"].startswith("editor token 2")
        assert (builtin["name"], builtin["source"]) == ("aegis_readiness_failing", "builtin")
        # Edited while firing: the same episode goes on under the new threshold.
        edited = await http.put(f"{API}/alert-rules", json={**RULE, "threshold": 0.5})
        assert edited.status_code == 200
        clock.advance(1)
        await tick(aegis)
        [still] = (await http.get(f"{API}/alerts")).json()["data"]["alerts"]
        assert (still["state"], still["episode"]) == ("firing", alert["episode"])
        listed = (await http.get(f"{API}/alert-rules")).json()["data"]["rules"]
        assert [r["threshold"] for r in listed if r["source"] == "api"] == [0.5]
        # Removed: the firing alert is resolved, not left hanging.
        removed = await http.delete(f"{API}/alert-rules", params={"name": "boom_errors"})
        assert removed.status_code == 200
        clock.advance(1)
        await tick(aegis)
        assert (await http.get(f"{API}/alerts")).json()["data"]["alerts"] == []
        history = (await http.get(f"{API}/alert-history")).json()["data"]["transitions"]
    kinds = [(t["rule"], t["kind"]) for t in history if t["notify"]]
    assert kinds == [("boom_errors", "resolved"), ("boom_errors", "firing")]
    assert history[0]["annotations"]["summary"] == "resolved: the rule was removed"


async def test_the_settings_rules_are_not_the_apis(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    _, app, _ = await app_with(make_aegis, tmp_path, alert_rules=[RULE])
    async with client(app, **bearer(EDITOR)) as http:
        put = await http.put(f"{API}/alert-rules", json={**RULE, "threshold": 0.9})
        assert put.status_code == 409 and put.json()["error"]["field"] == "name"
        gone = await http.delete(f"{API}/alert-rules", params={"name": RULE["name"]})
        assert gone.status_code == 409
        rule, builtin = (await http.get(f"{API}/alert-rules")).json()["data"]["rules"]
        assert (rule["source"], rule["threshold"], rule["updated_by"]) == ("settings", 0.2, None)
        assert builtin["source"] == "builtin"
        for name in ("aegis_readiness_failing", "aegis_channel_disabled"):
            taken = await http.put(f"{API}/alert-rules", json={**RULE, "name": name})
            assert taken.status_code == 409, name


async def test_another_process_takes_the_rule_at_its_next_tick(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Two pipelines over one SQLite file (two workers): a rule written
    through one is evaluated and listed by the other; a stored rule that no
    longer reads is left out, never a failed tick."""
    writer, app, _ = await app_with(make_aegis, tmp_path)
    reader, _, _ = await app_with(make_aegis, tmp_path)
    assert writer.alerts is not None and reader.alerts is not None
    async with client(app, **bearer(EDITOR)) as http:
        assert (await http.put(f"{API}/alert-rules", json=RULE)).status_code == 201
    await tick(reader)
    assert [r.name for r in reader.alerts.rules] == ["boom_errors", "aegis_readiness_failing"]
    reader.alerts.store.put_item(
        RULE_KIND, "broken", {"name": "broken", "input": "nope"}, "test", 0.0, 10
    )
    await tick(reader)
    assert [r.name for r in reader.alerts.rules] == ["boom_errors", "aegis_readiness_failing"]
    assert reader.alerts.failures == 0
    reader.alerts.store.delete_item(RULE_KIND, "boom_errors", "test", 0.0)
    await tick(reader)
    assert reader.alerts.rules == ()


# -- silences -------------------------------------------------------------------------


async def test_silences_are_made_changed_and_expired(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis, app, clock = await app_with(make_aegis, tmp_path, alert_rules=[RULE])
    async with client(app, **bearer(EDITOR)) as http:
        made = await http.post(
            f"{API}/silences",
            json={"matchers": ['alertname="boom_errors"'], "duration": "2h", "comment": "deploy"},
        )
        assert made.status_code == 201, made.text
        silence = made.json()["data"]
        assert silence["state"] == "active" and silence["created_by"].startswith("editor token 2")
        assert silence["ends_at"] - silence["starts_at"] == 7200
        for _ in range(5):
            await http.get("/boom")
        await flush(aegis)
        clock.advance(20)
        await tick(aegis)
        [alert] = (await http.get(f"{API}/alerts")).json()["data"]["alerts"]
        assert alert["muted"] == f"silenced by {silence['id']}"
        changed = await http.post(
            f"{API}/silences", json={**silence, "comment": "deploy, longer", "state": None}
        )
        assert changed.status_code == 400 and changed.json()["error"]["field"] == "state"
        fields = {k: v for k, v in silence.items() if k != "state"}
        changed = await http.post(f"{API}/silences", json={**fields, "comment": "longer"})
        assert changed.status_code == 200 and changed.json()["data"]["comment"] == "longer"
        unknown = await http.post(f"{API}/silences", json={**fields, "id": "no-such"})
        assert unknown.status_code == 404
        for bad, field in [
            ({"matchers": ['alertname=~".*"'], "duration": "1h", "comment": "c"}, "matchers"),
            ({"matchers": ["x"], "duration": "1h", "comment": "c"}, "matchers[0]"),
            ({"matchers": ['a="b"'], "duration": "1h", "ends_at": 1, "comment": "c"}, "duration"),
            ({"matchers": ['a="b"'], "duration": "soon", "comment": "c"}, "duration"),
            ({"matchers": ['a="b"'], "duration": "1h"}, "comment"),
            ({"matchers": ['a="b"'], "ends_at": 1.0, "comment": "c"}, "ends_at"),
            ({"matchers": ['a="b"'], "duration": "1h", "comment": "c", "id": 5}, "id"),
        ]:
            answer = await http.post(f"{API}/silences", json=bad)
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["error"]["field"] == field, (bad, answer.text)
        expired = await http.delete(f"{API}/silences", params={"id": silence["id"]})
        assert expired.status_code == 200
        again = await http.delete(f"{API}/silences", params={"id": silence["id"]})
        assert again.status_code == 404
        listed = (await http.get(f"{API}/silences")).json()["data"]
    assert [s["state"] for s in listed["silences"]] == ["expired"]
    actions = [(a["action"], a["object"].split()[0]) for a in listed["audit"]]
    assert actions == [("expire", "silence"), ("update", "silence"), ("create", "silence")]


# -- a test notice --------------------------------------------------------------------


async def test_a_test_notice_says_delivered_or_failed_and_nothing_more(
    make_aegis: Callable[..., Aegis], tmp_path: Path, httpserver: HTTPServer
) -> None:
    channels = {
        name: {"type": "webhook", "url": httpserver.url_for(f"/{name}"), "allow_private": True}
        for name in ("hook", "down")
    }
    aegis, app, _ = await app_with(make_aegis, tmp_path, alert_channels=channels)
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")
    httpserver.expect_oneshot_request("/down", method="POST").respond_with_data(
        "secret internal detail", status=500
    )
    async with client(app, **bearer(EDITOR)) as http:
        sent = await http.post(f"{API}/channel-test", json={"channel": "hook"})
        assert sent.json()["data"] == {"channel": "hook", "delivered": True, "error": None}
        failed = await http.post(f"{API}/channel-test", json={"channel": "down"})
        assert failed.status_code == 200
        data = failed.json()["data"]
        assert data["delivered"] is False and "500" in data["error"]
        assert "secret internal detail" not in failed.text
        assert httpserver.url_for("/down") not in failed.text
        # One test a channel per cooldown: a loop cannot hold the lane's threads.
        again = await http.post(f"{API}/channel-test", json={"channel": "hook"})
        assert again.status_code == 429 and 1 <= int(again.headers["retry-after"]) <= 10
        unknown = await http.post(f"{API}/channel-test", json={"channel": "nope"})
        assert unknown.status_code == 404
        bad = await http.post(f"{API}/channel-test", json={"channel": "hook", "x": 1})
        assert bad.status_code == 400
    sent = [json.loads(request.data) for request, _ in httpserver.log]
    assert [n["alerts"][0]["labels"]["alertname"] for n in sent] == ["aegis_test"] * 2
    assert aegis.alerts is not None
    tests = [a for a in aegis.alerts.store.audit(10) if a["action"] == "test"]
    assert [(a["object"], a["detail"]["delivered"]) for a in tests] == [
        ("channel down", False), ("channel hook", True)
    ]  # fmt: skip


# -- a dry run ------------------------------------------------------------------------


async def test_a_dry_run_tells_whether_and_when_a_rule_would_fire(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis, app, clock = await app_with(make_aegis, tmp_path)
    assert aegis.alerts is not None
    async with client(app, **bearer(EDITOR)) as http:
        for _ in range(5):
            await http.get("/boom")
        await flush(aegis)
        clock.advance(60)
        answer = await http.post(
            f"{API}/alert-rules/dry-run", json={"rule": RULE, "hours": 1, "step": "10s"}
        )
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        assert data["health"] == "" and len(data["periods"]) == 1
        assert "firing" in [t["kind"] for t in data["transitions"]]
        # Nothing written, nobody told.
        assert (
            aegis.alerts.store.history(10) == []
            and aegis.alerts.store.api_items(RULE_KIND)[1] == []
        )
        too_fine = await http.post(
            f"{API}/alert-rules/dry-run", json={"rule": RULE, "hours": 24, "step": "1s"}
        )
        assert too_fine.status_code == 400 and too_fine.json()["error"]["field"] == "step"
        both = await http.post(
            f"{API}/alert-rules/dry-run", json={"rule": RULE, "name": "boom_errors"}
        )
        assert both.status_code == 400
        bad = await http.post(
            f"{API}/alert-rules/dry-run", json={"rule": {**RULE, "operator": "=="}}
        )
        assert bad.json()["error"]["field"] == "rule.operator"
        # One at a time per process: the next answers 429 at once.
        writes = app._mounted.writes.alerts
        writes._replaying.acquire()
        try:
            busy = await http.post(f"{API}/alert-rules/dry-run", json={"rule": RULE})
        finally:
            writes._replaying.release()
        assert busy.status_code == 429 and busy.headers["retry-after"] == "5"


async def test_writes_with_alerts_off_say_how_to_turn_them_on(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    _, app, _ = await app_with(make_aegis, tmp_path, alerts_enabled=False)
    async with client(app, **bearer(EDITOR)) as http:
        answer = await http.put(f"{API}/alert-rules", json=RULE)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "alerts_off"
    assert "alerts_enabled" in answer.json()["error"]["message"]


async def test_the_builtin_names_are_taken_even_when_not_in_use(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """No channels and no error rule: neither built-in rule is evaluated,
    and still neither name can be written (it would be left out later)."""
    aegis, app, _ = await app_with(make_aegis, tmp_path)
    assert aegis.alerts is not None and aegis.alerts.rules == ()
    rate = {"name": "x", "input": "request_rate", "operator": ">", "threshold": 1}
    async with client(app, **bearer(EDITOR)) as http:
        for name in ("aegis_readiness_failing", "aegis_channel_disabled"):
            answer = await http.put(f"{API}/alert-rules", json={**rate, "name": name})
            assert answer.status_code == 409, answer.text


async def test_a_store_that_fails_answers_503_not_500(
    make_aegis: Callable[..., Aegis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aegis, app, _ = await app_with(make_aegis, tmp_path)
    assert aegis.alerts is not None

    def down(*args: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(aegis.alerts.store, "put_item", down)
    async with client(app, **bearer(EDITOR)) as http:
        answer = await http.put(f"{API}/alert-rules", json=RULE)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "storage_unavailable"


def test_the_real_server_takes_writes_over_loopback(tmp_path: Path) -> None:
    """uvicorn serving the middleware: a rule written over HTTP is listed."""
    from tests.servers import child_environment, uvicorn_server

    (tmp_path / "app.py").write_text(
        "from starlette.applications import Starlette\n"
        "from aegis_mw import AegisMiddleware\n"
        f"app = AegisMiddleware(Starlette(), sink='sqlite:///aegis.db', alerts_enabled=True,"
        f" access={ACCESS!r})\n"
    )
    env = child_environment()
    with (
        uvicorn_server("app:app", tmp_path, env=env) as server,
        httpx.Client(base_url=server.url, headers=bearer(EDITOR), timeout=10) as http,
    ):
        made = http.put(f"{API}/alert-rules", json=RULE)
        assert made.status_code == 201, made.text
        # The silences' audit holds theirs only; the whole log is the admin's.
        assert http.get(f"{API}/silences").json()["data"]["audit"] == []
        log = http.get(f"{API}/audit", headers=bearer(ADMIN)).json()["data"]["entries"]
        assert (log[0]["actor"], log[0]["object"]) == (
            "editor token 2 via api from 127.0.0.1", "rule boom_errors",
        )  # fmt: skip
        big = http.put(
                f"{API}/alert-rules", content=b"{" + b" " * 100_000 + b"}",
                headers={"content-type": "application/json"},
            )  # fmt: skip
        assert big.status_code == 413

        def chunks() -> Any:
            for _ in range(20):
                yield b" " * 4096  # no Content-Length: counted as it comes

        streamed = http.put(
            f"{API}/alert-rules", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        # The connection and the server are fine after a refused body.
        assert http.get(f"{API}/alert-rules").status_code == 200


# -- what a review asked for -------------------------------------------------------------


async def test_the_cookie_with_a_header_that_grants_nothing_still_needs_the_origin(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """A header that matches no credential leaves the cookie to grant the
    role: the write is then the cookie's, and needs the page's Origin."""
    _, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app) as http:
        await http.get("/dashboard", params={"token": EDITOR})
        for junk in ("Basic !!!", "Bearer", "Foo x"):
            answer = await http.put(
                f"{API}/alert-rules", json=RULE, headers={"authorization": junk}
            )
            assert answer.status_code == 403, (junk, answer.text)
            assert answer.json()["error"]["code"] == "cross_site"


async def test_the_limits_of_rules_and_silences(
    make_aegis: Callable[..., Aegis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aegis_mw.endpoints import alert_writes

    monkeypatch.setattr(alert_writes, "API_RULE_LIMIT", 1)
    monkeypatch.setattr(alert_writes, "SILENCE_LIMIT", 1)
    _, app, _ = await app_with(make_aegis, tmp_path)
    silence = {"matchers": ['alertname="x"'], "duration": "1h", "comment": "c"}
    async with client(app, **bearer(EDITOR)) as http:
        assert (await http.put(f"{API}/alert-rules", json=RULE)).status_code == 201
        second = await http.put(f"{API}/alert-rules", json={**RULE, "name": "other"})
        assert second.status_code == 409 and second.json()["error"]["code"] == "too_many_rules"
        assert (await http.put(f"{API}/alert-rules", json=RULE)).status_code == 200  # a change
        assert (await http.post(f"{API}/silences", json=silence)).status_code == 201
        more = await http.post(f"{API}/silences", json=silence)
        assert more.status_code == 409 and more.json()["error"]["code"] == "too_many_silences"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**RULE, "annotations": {"summary": "a\x1b[2Jb"}}, "annotations.summary"),
        ({**RULE, "labels": {"team": "x\x00"}}, "labels.team"),
        ({**RULE, "route": "/a\x07"}, "route"),
        ({**RULE, "group_by": ["route\x9b"]}, "group_by[0]"),
    ],
)
async def test_control_characters_are_refused_by_field(
    body: dict[str, Any], field: str, make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Stored text is printed by the CLI: no terminal escapes get in. A
    description may still have lines."""
    _, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app, **bearer(EDITOR)) as http:
        answer = await http.put(f"{API}/alert-rules", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["field"] == field
        lines = {**RULE, "annotations": {"description": "first\n\tsecond"}}
        assert (await http.put(f"{API}/alert-rules", json=lines)).status_code == 201
        silence = {"matchers": ['a="b"'], "duration": "1h", "comment": "deploy\x1b]0;x\x07"}
        refused = await http.post(f"{API}/silences", json=silence)
        assert refused.json()["error"]["field"] == "comment"


async def test_query_problems_name_the_parameter(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    _, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app, **bearer(EDITOR)) as http:
        for params, parameter, code in [
            ({}, "name", "invalid_parameter"),
            ({"name": "a", "colour": "red"}, "colour", "unknown_parameter"),
            ({"name": "a\x1b"}, "name", "invalid_parameter"),
        ]:
            answer = await http.delete(f"{API}/alert-rules", params=params)
            error = answer.json()["error"]
            assert answer.status_code == 400, params
            assert (error["parameter"], error["code"]) == (parameter, code), error


async def test_a_client_that_leaves_mid_body_gets_nothing_and_writes_nothing(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis, app, _ = await app_with(make_aegis, tmp_path)
    messages = iter([
        {"type": "http.request", "body": b'{"name": "boom', "more_body": True},
        {"type": "http.disconnect"},
    ])  # fmt: skip
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT",
        "scheme": "http", "path": f"{API}/alert-rules", "raw_path": b"", "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {EDITOR}".encode())],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)
    assert sent == []
    assert aegis.alerts is not None and aegis.alerts.store.api_items(RULE_KIND)[1] == []


async def test_a_stored_rule_a_settings_rule_shadows_is_listed_and_can_go(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Written through the API before the settings took the name: left out
    of the evaluation (the settings' rule wins), listed with why, and
    deletable."""
    _, app, _ = await app_with(make_aegis, tmp_path)
    async with client(app, **bearer(EDITOR)) as http:
        assert (await http.put(f"{API}/alert-rules", json=RULE)).status_code == 201
    settled, app, _ = await app_with(make_aegis, tmp_path, alert_rules=[RULE])
    await tick(settled)
    async with client(app, **bearer(EDITOR)) as http:
        listed = (await http.get(f"{API}/alert-rules")).json()["data"]
        assert [r["source"] for r in listed["rules"]] == ["settings", "builtin"]
        assert listed["left_out"] == [
            {"name": "boom_errors", "reason": "a rule of the settings has its name"}
        ]
        gone = await http.delete(f"{API}/alert-rules", params={"name": "boom_errors"})
        assert gone.status_code == 200
        again = await http.delete(f"{API}/alert-rules", params={"name": "boom_errors"})
        assert again.status_code == 409  # now only the settings' own is left
    await tick(settled)
    assert settled.alerts is not None and settled.alerts.left_out == {}


def test_channels_without_a_history_sink_are_a_config_error(tmp_path: Path) -> None:
    from aegis_mw.core.errors import ConfigError

    channels = {"ops": {"type": "webhook", "url": "https://hooks.example.com/x"}}
    with pytest.raises(ConfigError, match=r"alert_channels.*ops.*keeps history"):
        Aegis(sink=f"jsonl://{tmp_path / 'a.jsonl'}", environ={}, alert_channels=channels)

"""``{api_path}/incidents``, ``/incident`` and ``/incident-timeline`` over the
mounted API, under ASGI (a Starlette app with ``install``) and under WSGI (a
Flask app with the extension): an opening is 201, a second of its key 200
(attached); a change is audited with who made it; unknown ids are 404, a
reopening that collides 409, a bad field a 400 naming it; writes need the
editor role, reads the viewer's; the list filters and names a bad
parameter; the timeline merges the incident's updates, the app's events and
the request log's errors from 900 s before it opened to its resolution, in
pages; the summary counts the failed requests; never a 500; and without a
sink that keeps history, a 409 for writes and a 503 for reads."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegis_mw.endpoints.incidents import INCIDENT_PARAMETERS
from aegis_mw.incidents.model import MAX_TEXT, MAX_TITLE
from aegis_mw.testing import FakeClock
from tests import api_apps
from tests.api_apps import ADMIN, API, EDITOR, VIEWER, Served, seconds, serving

pytestmark = pytest.mark.anyio

INCIDENTS, INCIDENT, TIMELINE = f"{API}/incidents", f"{API}/incident", f"{API}/incident-timeline"
#: An hour boundary some hours ago (inside the raw retention): an incident of
#: the timeline test opens then, so the rollups' buckets split at it.
OPEN = float(math.floor((datetime.now(tz=timezone.utc).timestamp() - 6 * 3600) / 3600) * 3600)


class IncidentsServed(Served):
    """The app, and calls of ``{api_path}/incidents``, ``/incident`` and
    ``/incident-timeline``."""

    async def write(
        self, method: str, path: str, body: Any, *, token: str | None = EDITOR,
        key: str | None = None,
    ) -> httpx.Response:  # fmt: skip
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["idempotency-key"] = key
        content = json.dumps(body).encode()  # so that a body of None is sent as null
        return await self.request(method, path, token=token, content=content, headers=headers)

    async def open(
        self, body: Any, *, token: str | None = EDITOR, key: str | None = None
    ) -> httpx.Response:
        return await self.write("POST", INCIDENTS, body, token=token, key=key)

    async def change(
        self, incident_id: str, body: Any, *, token: str | None = EDITOR
    ) -> httpx.Response:
        return await self.write("PATCH", f"{INCIDENTS}?id={incident_id}", body, token=token)

    async def opened(self, body: Any, *, token: str = EDITOR) -> dict[str, Any]:
        answer = await self.open(body, token=token)
        assert answer.status_code in (200, 201), answer.text
        assert answer.headers["content-type"] == "application/json"
        data: dict[str, Any] = answer.json()["data"]
        assert set(data) == {"incident", "created"}
        assert (answer.status_code == 201) == data["created"]
        return data

    async def changed(self, incident_id: str, body: Any, *, token: str = EDITOR) -> dict[str, Any]:
        answer = await self.change(incident_id, body, token=token)
        assert answer.status_code == 200, answer.text
        incident: dict[str, Any] = answer.json()["data"]["incident"]
        return incident

    async def get(self, path: str, query: str = "", *, token: str | None = VIEWER) -> Any:
        response = await self.request("GET", f"{path}?{query}" if query else path, token=token)
        assert response.status_code == 200, (path, query, response.text)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert list(body) == ["data"]
        return body["data"]

    async def incident(self, incident_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.get(INCIDENT, f"id={incident_id}")
        assert set(data) == {"incident", "updates", "updates_total", "summary"}
        return data

    async def ids(self, query: str = "") -> list[str]:
        data = await self.get(INCIDENTS, query)
        assert set(data) == {"limit", "offset", "incidents"}
        return [incident["id"] for incident in data["incidents"]]


Serve = Callable[..., Awaitable[IncidentsServed]]
serve = serving(IncidentsServed)


# -- open, attach, change ---------------------------------------------------------------


async def test_an_opening_is_201_and_another_of_its_key_attaches_with_200(
    serve: Serve, history_sink_url: str
) -> None:
    served = await serve(sink=history_sink_url)
    body = {
        "title": "checkout fails", "description": "500s on /pay\nsince the deploy",
        "severity": "high", "assignee": "alice", "correlation_key": "checkout",
    }  # fmt: skip
    first = await served.opened(body)
    assert first["created"] is True
    incident = first["incident"]
    assert incident["id"].startswith("inc-")
    assert {k: incident[k] for k in body} == body
    assert (incident["status"], incident["root_cause"], incident["resolved_at"]) == (
        "open", "", None,
    )  # fmt: skip
    assert "editor token 1" in incident["created_by"]
    assert incident["created_at"] == incident["updated_at"]

    second = await served.opened(
        {"title": "checkout fails again", "severity": "low", "correlation_key": "checkout"},
        token=ADMIN,
    )
    assert second["created"] is False
    assert second["incident"]["id"] == incident["id"]
    assert second["incident"]["title"] == "checkout fails"  # the first opening's fields stand
    assert second["incident"]["severity"] == "high"

    other = await served.opened({"title": "another key", "correlation_key": "search"})
    assert other["created"] is True and other["incident"]["id"] != incident["id"]
    keyless = [await served.opened({"title": "no key"}) for _ in range(2)]
    assert all(made["created"] for made in keyless)
    assert keyless[0]["incident"]["id"] != keyless[1]["incident"]["id"]
    assert len(await served.ids()) == 4

    data = await served.incident(incident["id"])
    assert data["incident"]["id"] == incident["id"]
    updates = data["updates"]
    assert [(u["seq"], u["kind"]) for u in updates] == [(1, "created"), (2, "attached")]
    assert "editor token 1" in updates[0]["actor"]
    assert "admin token 1" in updates[1]["actor"]
    assert updates[1]["changes"]["title"] == "checkout fails again"
    assert updates[1]["changes"]["severity"] == "low"


async def test_changes_are_audited_with_who_made_them_and_what_changed(
    serve: Serve, history_sink_url: str
) -> None:
    served = await serve(sink=history_sink_url)
    incident_id = (await served.opened({"title": "slow search", "correlation_key": "search"}))[
        "incident"
    ]["id"]
    after = await served.changed(incident_id, {"status": "investigating", "assignee": "bob"})
    assert (after["status"], after["assignee"]) == ("investigating", "bob")
    noted = await served.changed(incident_id, {"note": "the index is rebuilding"}, token=ADMIN)
    assert noted["status"] == "investigating"
    await served.changed(
        incident_id,
        {"severity": "critical", "title": "search is down", "root_cause": "a full disk",
         "description": "every query\ntimes out", "note": "worse"},
    )  # fmt: skip
    resolved = await served.changed(incident_id, {"status": "resolved", "assignee": None})
    assert resolved["status"] == "resolved" and resolved["resolved_at"] is not None
    assert resolved["assignee"] is None

    data = await served.incident(incident_id)
    assert data["incident"] == resolved
    updates = data["updates"]
    assert [u["seq"] for u in updates] == [1, 2, 3, 4, 5]
    assert [u["kind"] for u in updates] == ["created", "changed", "note", "changed", "changed"]
    actors = [u["actor"] for u in updates]
    assert all("editor token 1" in actors[n] for n in (0, 1, 3, 4)), actors
    assert "admin token 1" in actors[2], actors
    assert all(" via api" in actor for actor in actors), actors
    assert updates[1]["changes"] == {"status": ["open", "investigating"], "assignee": [None, "bob"]}
    assert (updates[2]["changes"], updates[2]["note"]) == ({}, "the index is rebuilding")
    assert updates[3]["changes"] == {
        "severity": ["medium", "critical"], "title": ["slow search", "search is down"],
        "root_cause": ["", "a full disk"], "description": ["", "every query\ntimes out"],
    }  # fmt: skip
    assert updates[3]["note"] == "worse"
    assert updates[4]["changes"] == {"status": ["investigating", "resolved"],
                                     "assignee": ["bob", None]}  # fmt: skip
    times = [seconds(u["at"]) for u in updates]
    assert times == sorted(times)
    assert data["summary"]["resolved"] is True

    # Resolved: the key is free, a new opening makes a new incident ...
    fresh = await served.opened({"title": "search again", "correlation_key": "search"})
    assert fresh["created"] is True and fresh["incident"]["id"] != incident_id
    # ... and the first may not come back while it is active: 409, nothing written.
    conflict = await served.change(incident_id, {"status": "open", "note": "back"})
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["code"] == "incident_conflict"
    assert len((await served.incident(incident_id))["updates"]) == 5
    assert (await served.incident(incident_id))["incident"]["status"] == "resolved"
    await served.changed(fresh["incident"]["id"], {"status": "resolved"})
    reopened = await served.changed(incident_id, {"status": "monitoring"})
    assert reopened["status"] == "monitoring" and reopened["resolved_at"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": None}, "title"),
        ({"title": 12}, "title"),
        ({"title": "t" * (MAX_TITLE + 1)}, "title"),
        ({"title": "two\nlines"}, "title"),
        ({"title": "bell\u0007"}, "title"),
        ({"title": "t", "severity": "urgent"}, "severity"),
        ({"title": "t", "status": "resolved"}, "status"),
        ({"title": "t", "status": "closed"}, "status"),
        ({"title": "t", "assignee": ""}, "assignee"),
        ({"title": "t", "description": "d" * (MAX_TEXT + 1)}, "description"),
        ({"title": "t", "correlation_key": ""}, "correlation_key"),
        ({"title": "t", "correlation_key": 5}, "correlation_key"),
        ({"title": "t", "note": "n"}, "note"),
        ({"title": "t", "colour": "red"}, "colour"),
        ({"title": "t", "id": "inc-mine"}, "id"),
        (None, "body"),
        ([], "body"),
        ([{"title": "t"}], "body"),
        ("title", "body"),
        (5, "body"),
    ],
)
async def test_a_bad_opening_is_a_400_naming_the_field(serve: Serve, body: Any, field: str) -> None:
    served = await serve()
    api_apps.assert_bad_field(await served.open(body), field)
    assert await served.ids() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"note": ""}, "body"),
        ({"note": "  "}, "body"),
        ({"status": "closed"}, "status"),
        ({"status": "active"}, "status"),
        ({"severity": "HIGH"}, "severity"),
        ({"title": ""}, "title"),
        ({"assignee": 3}, "assignee"),
        ({"note": 5}, "note"),
        ({"note": "n" * (MAX_TEXT + 1)}, "note"),
        ({"correlation_key": "other"}, "correlation_key"),
        ({"status": "open", "colour": "red"}, "colour"),
        ([], "body"),
        (None, "body"),
    ],
)
async def test_a_bad_change_is_a_400_naming_the_field_and_writes_nothing(
    serve: Serve, body: Any, field: str
) -> None:
    served = await serve()
    incident_id = (await served.opened({"title": "t"}))["incident"]["id"]
    answer = await served.change(incident_id, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_field", field)
    assert error["message"]
    assert [u["kind"] for u in (await served.incident(incident_id))["updates"]] == ["created"]


async def test_unknown_ids_are_404_and_a_missing_id_400(serve: Serve) -> None:
    served = await serve()
    await served.opened({"title": "t"})
    answer = await served.change("inc-000000000000", {"status": "resolved"})
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"
    for path in (INCIDENT, TIMELINE):
        missing = await served.request("GET", f"{path}?id=inc-nope", token=VIEWER)
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "not_found"
        for query in ("", "?id="):
            no_id = await served.request("GET", f"{path}{query}", token=VIEWER)
            assert no_id.status_code == 400, no_id.text
            assert no_id.json()["error"]["parameter"] == "id"
    for target in (INCIDENTS, f"{INCIDENTS}?id="):
        no_id = await served.request("PATCH", target, token=EDITOR, json={"status": "resolved"})
        assert no_id.status_code == 400, no_id.text
        assert no_id.json()["error"]["parameter"] == "id"
    other = await served.request(
        "PATCH", f"{INCIDENTS}?id=x&colour=red", token=EDITOR, json={"status": "resolved"}
    )
    assert other.status_code == 400 and other.json()["error"]["parameter"] == "colour"


async def test_an_idempotency_key_opens_once_and_answers_its_retries_alike(
    serve: Serve, history_sink_url: str
) -> None:
    """A retry after a lost answer sends the same key: it answers as the first
    opening did (201, the same incident), says it is a replay, and opens
    nothing more; the key with other fields is a 422; another credential's
    same key is its own; the key also holds for an opening that attached."""
    served = await serve(sink=history_sink_url)
    body = {"title": "payments down", "severity": "critical"}
    first = await served.open(body, key="7f1d2c9e-retry-1")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    incident = first.json()["data"]["incident"]
    again = await served.open(dict(reversed(body.items())), key="7f1d2c9e-retry-1")
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["data"] == {"incident": incident, "created": True}
    await served.changed(incident["id"], {"status": "investigating"})
    later = await served.open(body, key="7f1d2c9e-retry-1")  # the incident as it is now
    assert later.json()["data"]["incident"]["status"] == "investigating"

    reused = await served.open({**body, "severity": "low"}, key="7f1d2c9e-retry-1")
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    by_admin = await served.open(body, key="7f1d2c9e-retry-1", token=ADMIN)
    assert by_admin.status_code == 201 and "idempotent-replayed" not in by_admin.headers
    assert by_admin.json()["data"]["incident"]["id"] != incident["id"]

    keyed = {"title": "disk full", "correlation_key": "disk"}
    assert (await served.open(keyed)).status_code == 201
    attached = await served.open(keyed, key="attach-once")
    assert attached.status_code == 200 and not attached.json()["data"]["created"]
    replayed = await served.open(keyed, key="attach-once")
    assert replayed.status_code == 200 and replayed.headers["idempotent-replayed"] == "true"
    disk = attached.json()["data"]["incident"]["id"]
    kinds = [update["kind"] for update in (await served.incident(disk))["updates"]]
    assert kinds == ["created", "attached"]  # the retry attached nothing more
    assert len(await served.ids()) == 3


@pytest.mark.parametrize("key", [b"", b"x" * 256, b"tab\there", b"k\x7f", b"\x01"])
async def test_a_bad_idempotency_key_is_a_400_naming_the_header(serve: Serve, key: bytes) -> None:
    served = await serve()
    headers = {"content-type": "application/json", "idempotency-key": key}
    answer = await served.request(
        "POST", INCIDENTS, token=EDITOR, content=b'{"title": "t"}', headers=headers
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["header"]) == ("invalid_header", "Idempotency-Key"), error
    assert await served.ids() == []


async def test_writes_need_the_editor_role_and_reads_the_viewers(serve: Serve) -> None:
    served = await serve()
    await api_apps.refused_below_the_editor(
        lambda token: served.open({"title": "refused"}, token=token)
    )
    assert await served.ids() == []

    by_editor = (await served.opened({"title": "by the editor"}))["incident"]["id"]
    by_admin = (await served.opened({"title": "by the admin"}, token=ADMIN))["incident"]["id"]
    for token, status in ((None, 401), ("not-a-token-at-all", 401), (VIEWER, 403)):
        refused = await served.change(by_editor, {"status": "resolved"}, token=token)
        assert refused.status_code == status, refused.text
    assert (await served.changed(by_admin, {"note": "editor"}))["status"] == "open"
    assert (await served.changed(by_editor, {"note": "admin"}, token=ADMIN))["status"] == "open"
    await api_apps.refused_from_another_site(
        lambda headers: served.request(
            "POST", INCIDENTS, token=ADMIN, json={"title": "csrf"}, headers=headers
        )
    )

    for path, query in ((INCIDENTS, ""), (INCIDENT, f"?id={by_editor}"),
                        (TIMELINE, f"?id={by_editor}")):  # fmt: skip
        assert (await served.request("GET", path + query)).status_code == 401
        for token in (VIEWER, EDITOR, ADMIN):
            read = await served.request("GET", path + query, token=token)
            assert read.status_code == 200, read.text
    assert sorted(await served.ids()) == sorted([by_editor, by_admin])
    for method in ("PUT", "DELETE"):
        answer = await served.request(method, INCIDENTS, token=ADMIN, json={"title": "t"})
        assert answer.status_code == 405, answer.text
    assert len(await served.ids()) == 2


async def test_a_post_needs_a_json_content_type(serve: Serve) -> None:
    served = await serve()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        answer = await served.request(
            "POST", INCIDENTS, token=EDITOR, content=b'{"title": "t"}',
            headers={"content-type": content_type},
        )  # fmt: skip
        assert answer.status_code == 415, answer.text
    assert await served.ids() == []


# -- the list -------------------------------------------------------------------------------


async def test_the_list_filters_by_status_and_severity_newest_first(serve: Serve) -> None:
    clock = FakeClock(wall=OPEN)
    served = await serve(clock=clock)
    made: dict[str, tuple[str, str]] = {}
    ordered: list[str] = []
    for status, severity in [
        ("open", "high"), ("investigating", "low"), ("identified", "critical"),
        ("monitoring", "medium"), ("resolved", "high"), ("resolved", "low"), ("open", "low"),
    ]:  # fmt: skip
        clock.advance(1)
        incident_id = (await served.opened({"title": f"{status} {severity}",
                                            "severity": severity}))["incident"]["id"]  # fmt: skip
        if status != "open":
            await served.changed(incident_id, {"status": status})
        made[incident_id] = (status, severity)
        ordered.insert(0, incident_id)

    def expect(statuses: tuple[str, ...], severities: tuple[str, ...]) -> list[str]:
        return [
            i for i in ordered
            if (not statuses or made[i][0] in statuses)
            and (not severities or made[i][1] in severities)
        ]  # fmt: skip

    active = ("open", "investigating", "identified", "monitoring")
    cases = [
        ("", (), ()),
        ("status=active", active, ()),
        ("status=resolved", ("resolved",), ()),
        ("status=open,resolved", ("open", "resolved"), ()),
        ("status=open,%20monitoring", ("open", "monitoring"), ()),
        ("status=active,resolved", (), ()),
        ("status=active,open", active, ()),
        ("severity=low", (), ("low",)),
        ("severity=high,critical", (), ("high", "critical")),
        ("status=active&severity=low", active, ("low",)),
        ("status=resolved&severity=critical", ("resolved",), ("critical",)),
    ]
    for query, statuses, severities in cases:
        assert await served.ids(query) == expect(statuses, severities), query
    data = await served.get(INCIDENTS, "limit=2&offset=1")
    assert (data["limit"], data["offset"]) == (2, 1)
    assert [i["id"] for i in data["incidents"]] == ordered[1:3]
    paged: list[str] = []
    for offset in range(0, 9, 3):
        paged += await served.ids(f"limit=3&offset={offset}")
    assert paged == ordered
    assert await served.ids("offset=100000") == []
    one = (await served.get(INCIDENTS, "limit=1"))["incidents"][0]
    assert set(one) == {
        "id", "title", "description", "severity", "status", "assignee", "root_cause",
        "correlation_key", "created_at", "updated_at", "resolved_at", "created_by",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    [
        (INCIDENTS, "status=nope", "status"),
        (INCIDENTS, "status=", "status"),
        (INCIDENTS, "status=open,,resolved", "status"),
        (INCIDENTS, "status=OPEN", "status"),
        (INCIDENTS, "status=closed", "status"),
        (INCIDENTS, "severity=urgent", "severity"),
        (INCIDENTS, "severity=active", "severity"),
        (INCIDENTS, "severity=", "severity"),
        (INCIDENTS, "limit=0", "limit"),
        (INCIDENTS, "limit=1001", "limit"),
        (INCIDENTS, "limit=ten", "limit"),
        (INCIDENTS, "offset=-1", "offset"),
        (INCIDENTS, "offset=100001", "offset"),
        (INCIDENTS, "colour=red", "colour"),
        (INCIDENTS, "status=open&status=resolved", "status"),
        (INCIDENTS, "status=a%01b", "status"),
        (INCIDENTS, "status=%ff", "status"),
        (INCIDENT, "id=x&limit=3", "limit"),
        (INCIDENT, "id=a%00b", "id"),
        (INCIDENT, "id=%ED%A0%80", "id"),
        (TIMELINE, "id=%ff", "id"),
        (TIMELINE, "id=x&limit=0", "limit"),
        (TIMELINE, "id=x&offset=-5", "offset"),
        (TIMELINE, "id=x&status=open", "status"),
        (TIMELINE, "id=x&latest=yes", "latest"),
        (TIMELINE, "id=x&latest=true,true", "latest"),
        (TIMELINE, "id=x&latest=true&offset=0", "offset"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    serve: Serve, path: str, query: str, parameter: str
) -> None:
    served = await serve()
    response = await served.request("GET", f"{path}?{query}", token=VIEWER)
    api_apps.assert_bad_parameter(response, parameter)


# -- the timeline and the summary ----------------------------------------------------------


async def test_the_timeline_merges_updates_events_and_errors_in_its_window(
    serve: Serve, history_sink_url: str
) -> None:
    """From 900 s before the opening to the resolution, oldest first: what
    came before or after the window is left out; the summary counts the
    failed requests before, during and after."""
    clock = FakeClock(wall=OPEN - 1000)
    served = await serve(sink=history_sink_url, clock=clock)
    aegis = served.aegis
    assert (await served.request("GET", "/boom")).status_code == 500  # long before
    assert aegis.event("too early", event_id="too-early", timestamp=OPEN - 901)
    assert aegis.event("just inside", event_id="inside", timestamp=OPEN - 899)
    clock.advance(1000)
    body = {"title": "payments fail", "severity": "critical", "correlation_key": "payments"}
    incident_id = (await served.opened(body))["incident"]["id"]
    clock.advance(10)
    assert (await served.request("GET", "/boom")).status_code == 500
    clock.advance(10)
    assert aegis.event("rolled back", event_id="rollback", type="alert", source="deployer")
    clock.advance(10)
    assert (await served.request("GET", "/unavailable")).status_code == 503
    assert (await served.request("GET", "/ok")).status_code == 200  # not an error: not there
    clock.advance(5)
    await served.changed(incident_id, {"status": "identified", "note": "the rollback helps"})
    clock.advance(5)
    assert not (await served.opened(body, token=ADMIN))["created"]
    clock.advance(10)
    await served.changed(incident_id, {"note": "watching"})
    clock.advance(10)
    await served.changed(incident_id, {"status": "resolved"})
    clock.advance(20)
    assert (await served.request("GET", "/boom")).status_code == 500  # after: left out
    assert aegis.event("later", event_id="later")
    clock.advance(10)
    await served.flush()

    data = await served.get(TIMELINE, f"id={incident_id}")
    assert data["incident"]["id"] == incident_id
    assert (seconds(data["from"]), seconds(data["to"])) == (OPEN - 900, OPEN + 60)
    assert (data["total"], data["truncated"], data["limit"], data["offset"]) == (9, False, 100, 0)
    items = data["items"]

    def shape(item: dict[str, Any]) -> tuple[float, str, str]:
        if item["kind"] == "incident":
            what = item["update"]["kind"]
        elif item["kind"] == "request_error":
            what = item["event"]["payload"]["path"]
        else:
            what = item["event"]["id"]
        return seconds(item["at"]) - OPEN, item["kind"], what

    assert [shape(item) for item in items] == [
        (-899, "event", "inside"),
        (0, "incident", "created"),
        (10, "request_error", "/boom"),
        (20, "event", "rollback"),
        (30, "request_error", "/unavailable"),
        (35, "incident", "changed"),
        (40, "incident", "attached"),
        (50, "incident", "note"),
        (60, "incident", "changed"),
    ]
    boom = items[2]["event"]
    assert boom["payload"]["status"] == 500 and "RuntimeError: kaboom" in boom["message"]
    assert boom["id"].startswith("request:")
    assert items[3]["event"]["source"] == "deployer"
    changed = items[5]["update"]
    assert changed["changes"] == {"status": ["open", "identified"]}
    assert changed["note"] == "the rollback helps" and "editor token 1" in changed["actor"]
    assert "admin token 1" in items[6]["update"]["actor"]
    for item in items:
        assert seconds(item["at"]) == seconds(
            item["update"]["at"] if item["kind"] == "incident" else item["event"]["timestamp"]
        )

    summary = (await served.incident(incident_id))["summary"]
    assert summary["resolved"] is True
    assert summary["duration_seconds"] == 60
    assert summary["during"]["failed"] >= 1
    assert summary["during"]["failed"] == 2 and summary["requests_affected"] == 2
    assert summary["during"]["requests"] == 3  # /boom, /unavailable, /ok
    assert summary["during"]["error_rate"] == pytest.approx(2 / 3, abs=1e-5)
    assert summary["before"]["failed"] == 0  # the failure 1000 s before is not in its minute
    assert summary["after"] is not None
    assert summary["after"]["failed"] == 1


async def test_pages_of_the_timeline_cover_every_item_once(serve: Serve) -> None:
    clock = FakeClock(wall=OPEN - 300)
    served = await serve(clock=clock)
    aegis = served.aegis
    for number in range(5):
        assert aegis.event(f"before {number}", event_id=f"before-{number}",
                           timestamp=OPEN - 250 + number)  # fmt: skip
    clock.advance(300)
    incident_id = (await served.opened({"title": "t", "correlation_key": "k"}))["incident"]["id"]
    for number in range(6):
        clock.advance(1)
        assert (await served.request("GET", "/boom")).status_code == 500
        assert aegis.event(f"during {number}", event_id=f"during-{number}")
        await served.changed(incident_id, {"note": f"note {number}"})
    # Ties: an event at the same time as an update.
    assert aegis.event("tie", event_id="tie")
    await served.flush()

    whole = await served.get(TIMELINE, f"id={incident_id}&limit=1000")
    everything = whole["items"]
    assert whole["total"] == len(everything) == 5 + 1 + 6 * 3 + 1
    times = [seconds(item["at"]) for item in everything]
    assert times == sorted(times)
    for limit in (1, 2, 5, 7):
        paged: list[dict[str, Any]] = []
        for offset in range(0, len(everything) + limit, limit):
            page = await served.get(TIMELINE, f"id={incident_id}&limit={limit}&offset={offset}")
            assert (page["limit"], page["offset"], page["total"]) == (
                limit,
                offset,
                len(everything),
            )
            assert len(page["items"]) <= limit
            paged += page["items"]
        assert paged == everything, limit
    past = await served.get(TIMELINE, f"id={incident_id}&offset=1000")
    assert past["items"] == [] and past["total"] == len(everything)
    # The last page in one read (the dashboard's), its offset where it starts.
    for limit in (1, 7, len(everything), 1000):
        last = await served.get(TIMELINE, f"id={incident_id}&limit={limit}&latest=true")
        start = max(len(everything) - limit, 0)
        assert last["items"] == everything[start:], limit
        assert (last["offset"], last["limit"], last["total"]) == (start, limit, len(everything))
    first = await served.get(TIMELINE, f"id={incident_id}&limit=2&latest=false")
    assert first["items"] == everything[:2] and first["offset"] == 0


async def test_a_timeline_of_an_active_incident_runs_to_now(serve: Serve) -> None:
    clock = FakeClock(wall=OPEN)
    served = await serve(clock=clock)
    incident_id = (await served.opened({"title": "t"}))["incident"]["id"]
    clock.advance(120)
    assert (await served.request("GET", "/boom")).status_code == 500
    clock.advance(1)
    await served.flush()
    data = await served.get(TIMELINE, f"id={incident_id}")
    assert (seconds(data["from"]), seconds(data["to"])) == (OPEN - 900, OPEN + 121)
    assert [item["kind"] for item in data["items"]] == ["incident", "request_error"]
    summary = (await served.incident(incident_id))["summary"]
    assert summary["resolved"] is False and summary["after"] is None
    assert summary["duration_seconds"] == 121
    assert summary["during"]["failed"] == 1


def test_truncated_says_when_a_source_had_more_than_the_cap() -> None:
    """The timeline reads each source up to CAP items: ``truncated`` is true
    when one had more, not when it had exactly CAP."""
    import time

    from aegis_mw.core.events import build_event
    from aegis_mw.core.record import Batch
    from aegis_mw.incidents.service import CAP, Incidents
    from aegis_mw.sinks import MemorySink

    opened_at = 1_700_000_000.0
    for count, truncated in ((CAP - 1, False), (CAP, False), (CAP + 1, True)):
        sink = MemorySink()
        events = [
            build_event(
                f"m{n}", event_id=f"e{n:05d}", timestamp=opened_at - 800 + n * 0.1, now=time.time
            )
            for n in range(count)
        ]
        sink.write(Batch(events=events, batch_id="cap"))
        incidents = Incidents(sink.incident_store(), lambda: opened_at + 10,
                              events=sink.read_events)  # fmt: skip
        incident, _ = incidents.open({"title": "t"}, "tester")
        timeline = incidents.timeline(incident, 10, 0)
        assert timeline["truncated"] is truncated, count
        assert timeline["total"] == min(count, CAP) + 1, count


# -- never a 500 --------------------------------------------------------------------------


ODD_BODIES = [
    b"{not json",
    b"",
    b"null",
    b"[]",
    b'[{"title": "t"}]',
    b'"a string"',
    b"12",
    b'{"title": "t"',
    b'{"title": "\\ud800"}',
    b'{"title": "t", "description": "\\udfff"}',
    b'{"title": "t", "assignee": "\\udc00x"}',
    b'{"title": "t", "correlation_key": "\\ud83d"}',
    b'{"title": "t", "root_cause": "\\ud800\\ud800"}',
    b'{"\\ud800": "t"}',
    b'{"title": "t", "\\udfff": 1}',
    b'{"\\u0000": 1, "title": "t"}',
    b'{"title": "t\\u0000"}',
    b'{"title": "\xff\xfe"}',
    b'{"title": NaN}',
    b'{"title": 1e999}',
    b'{"title": "' + b"x" * 60_000 + b'"}',
    b'{"title": "t", "description": "' + b"y" * 60_000 + b'"}',
    b'{"title": "' + b"z" * 70_000 + b'"}',
    b'{"title": ' + b"9" * 5000 + b"}",
    b'{"title": {"nested": ' + b"[" * 3000 + b"]" * 3000 + b"}}",
    b"[" * 30_000 + b"]" * 30_000,
    b'{"title": "t", "severity": ["high"]}',
    b'{"title": "t", "status": {"a": 1}}',
    b'{"title": "t", "assignee": true}',
    b'{"title": "t", "correlation_key": null}',
    b'{"title": "t", "assignee": null, "severity": "low"}',
    b'{"title": "t", "title": "twice"}',
    b'{"title": "\\u2028 line separator \\u00a0"}',
]


@pytest.mark.parametrize("content", ODD_BODIES)
async def test_odd_bodies_never_make_a_500(serve: Serve, content: bytes) -> None:
    served = await serve()
    target = (await served.opened({"title": "target"}))["incident"]["id"]
    headers = {"content-type": "application/json"}
    opened = await served.request("POST", INCIDENTS, token=EDITOR, content=content,
                                  headers=headers)  # fmt: skip
    assert opened.status_code in (200, 201, 400, 413), opened.text
    if opened.status_code >= 400:
        assert opened.json()["error"]["code"] in ("invalid_field", "body_too_large")
    if opened.status_code == 400:
        assert opened.json()["error"]["field"]
    changed = await served.request(
        "PATCH", f"{INCIDENTS}?id={target}", token=EDITOR, content=content, headers=headers
    )
    assert changed.status_code in (200, 400, 413), changed.text
    assert (await served.request("GET", INCIDENTS, token=VIEWER)).status_code == 200
    assert (await served.request("GET", f"{INCIDENT}?id={target}", token=VIEWER)).status_code == 200
    timeline = await served.request("GET", f"{TIMELINE}?id={target}", token=VIEWER)
    assert timeline.status_code == 200


async def test_a_body_over_64_kib_is_413(serve: Serve) -> None:
    served = await serve()
    content = json.dumps({"title": "t", "description": "d" * (64 * 1024)}).encode()
    answer = await served.request(
        "POST", INCIDENTS, token=EDITOR, content=content,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "body_too_large"
    assert await served.ids() == []


# -- no sink that keeps history ------------------------------------------------------------


async def test_without_a_sink_keeping_history_writes_are_409_and_reads_503(
    serve: Serve, tmp_path: Path
) -> None:
    served = await serve(sink=f"jsonl:///{tmp_path}/records.jsonl")
    assert served.aegis.incidents is None
    answer = await served.open({"title": "nowhere to go"})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "incidents_unavailable"
    change = await served.change("inc-000000000000", {"status": "resolved"})
    assert change.status_code == 409, change.text
    assert change.json()["error"]["code"] == "incidents_unavailable"
    for path, query in ((INCIDENTS, ""), (INCIDENT, "?id=inc-x"), (TIMELINE, "?id=inc-x")):
        read = await served.request("GET", path + query, token=VIEWER)
        assert read.status_code == 503, read.text
        assert read.json()["error"]["code"] == "history_unavailable"
    # A bad parameter is still a 400 naming it.
    bad = await served.request("GET", f"{INCIDENTS}?colour=red", token=VIEWER)
    assert bad.status_code == 400 and bad.json()["error"]["parameter"] == "colour"


# -- the description ------------------------------------------------------------------------


async def test_openapi_lists_the_incidents_endpoints(serve: Serve) -> None:
    served = await serve()
    answer = await served.request("GET", f"{API}/openapi.json", token=VIEWER)
    assert answer.status_code == 200, answer.text
    paths = answer.json()["paths"]
    assert sorted(paths[INCIDENTS]) == ["get", "patch", "post"]
    for endpoint, names in INCIDENT_PARAMETERS.items():
        get = paths[f"{API}/{endpoint}"]["get"]
        assert [p["name"] for p in get["parameters"]] == list(names), endpoint
    post = paths[INCIDENTS]["post"]
    assert "requestBody" in post and "editor" in post["summary"]
    for status in ("200", "201", "400", "401", "403", "409"):
        assert status in post["responses"], status
    patch = paths[INCIDENTS]["patch"]
    assert [p["name"] for p in patch["parameters"]] == ["id"]
    for status in ("200", "400", "404", "409"):
        assert status in patch["responses"], status


async def test_the_summarys_periods_do_not_overlap(serve: Serve) -> None:
    """Before, during and after tile the time around the incident: a failed
    request is counted in one of them, whatever second the incident opened
    and was resolved at (not on a boundary of the rollups' buckets here)."""
    clock = FakeClock(wall=OPEN + 2)
    served = await serve(clock=clock)
    clock.advance(-10)
    assert (await served.request("GET", "/boom")).status_code == 500  # OPEN - 8: before
    clock.advance(10)
    incident_id = (await served.opened({"title": "t"}))["incident"]["id"]  # OPEN + 2
    clock.advance(1)
    assert (await served.request("GET", "/boom")).status_code == 500  # OPEN + 3: during
    clock.advance(30)
    assert (await served.request("GET", "/unavailable")).status_code == 503  # OPEN + 33
    clock.advance(1)
    await served.changed(incident_id, {"status": "resolved"})  # OPEN + 34
    clock.advance(1)
    assert (await served.request("GET", "/boom")).status_code == 500  # OPEN + 35: after
    clock.advance(10)
    await served.flush()
    summary = (await served.incident(incident_id))["summary"]
    failed = [summary[period]["failed"] for period in ("before", "during", "after")]
    assert failed == [1, 2, 1], summary

"""``GET {api_path}/audit``: the alerting and incident writes, newest first, with
who made them and from where; for the admin role only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.api_apps import ADMIN, API, EDITOR, VIEWER, Served, serving

pytestmark = pytest.mark.anyio

serve = serving(Served)
JSON = {"content-type": "application/json"}


async def write(served: Served, method: str, path: str, body: dict[str, Any]) -> Any:
    answer = await served.request(method, f"{API}/{path}", token=EDITOR, headers=JSON, json=body)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["data"]


async def test_the_writes_are_in_the_log_newest_first_for_admins(
    serve: Callable[..., Awaitable[Served]], history_sink_url: str
) -> None:
    served = await serve(alerts_enabled=True, sink=history_sink_url)
    silence = await write(
        served, "POST", "silences",
        {"matchers": ["alertname=errors"], "duration": "1h", "comment": "deploying"},
    )  # fmt: skip
    opened = await write(served, "POST", "incidents", {"title": "checkout errors"})
    incident_id = opened["incident"]["id"]
    await write(served, "PATCH", f"incidents?id={incident_id}", {"status": "resolved",
                                                                 "note": "rolled back"})  # fmt: skip

    for token in (None, VIEWER, EDITOR):
        refused = await served.request("GET", f"{API}/audit", token=token)
        assert refused.status_code == (401 if token is None else 403), refused.text
    answer = await served.request("GET", f"{API}/audit", token=ADMIN)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["data"]["entries"]
    assert [(e["source"], e["action"]) for e in entries] == [
        ("incidents", "incident.changed"),
        ("incidents", "incident.created"),
        ("alerts", entries[2]["action"]),
    ]
    assert entries[2]["object"] == f"silence {silence['id']}"
    assert entries[0]["object"] == entries[1]["object"] == f"incident {incident_id}"
    assert entries[0]["detail"] == {
        "changes": {"status": ["open", "resolved"]}, "note": "rolled back",
    }  # fmt: skip
    # Who, with the credential's name (never its value), and from where.
    for entry in entries:
        assert entry["actor"].startswith("editor token 1 via api from "), entry
        assert EDITOR not in entry["actor"]
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)
    one = await served.request("GET", f"{API}/audit?limit=1", token=ADMIN)
    assert one.json()["data"]["entries"] == entries[:1]
    bad = await served.request("GET", f"{API}/audit?limit=0", token=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["parameter"] == "limit"

"""``GET {api_path}/audit``: the alerting and incident writes and the events
posted, newest first, with who made them and from where; for the admin role
only. And the silences' own audit on ``GET {api_path}/silences``."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.core.events import EventQuery
from aegis_mw.core.record import Batch
from aegis_mw.sinks import build_sink
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


# -- the events posted: audited before they are queued ----------------------------------


async def test_each_post_of_events_is_audited_with_its_ids(
    serve: Callable[..., Awaitable[Served]], history_sink_url: str
) -> None:
    served = await serve(sink=history_sink_url)
    events = [
        {"type": "log", "source": "billing", "message": "invoice sent", "id": "ev-1"},
        {"type": "metric", "source": "billing", "message": "queue depth 3"},
    ]
    posted = await served.request("POST", f"{API}/events", token=EDITOR, json=events)
    assert posted.status_code == 202, posted.text
    ids = posted.json()["data"]["ids"]
    assert ids[0] == "ev-1" and len(ids) == 2
    # A refused post (a bad field) queues nothing and is not audited.
    bad = await served.request("POST", f"{API}/events", token=EDITOR, json={"type": "nope"})
    assert bad.status_code == 400, bad.text

    answer = await served.request("GET", f"{API}/audit", token=ADMIN)
    assert answer.status_code == 200, answer.text
    [entry] = answer.json()["data"]["entries"]
    assert (entry["source"], entry["action"], entry["object"]) == ("events", "post", "events")
    assert entry["detail"] == {"events": 2, "ids": ids}
    assert entry["actor"].startswith("editor token 1 via api from "), entry
    await served.flush()
    stored = await served.request("GET", f"{API}/events?source=billing", token=VIEWER)
    assert sorted(e["id"] for e in stored.json()["data"]["events"]) == sorted(ids)
    # The audit stays the admin's: the events' readers do not see it.
    for token in (VIEWER, EDITOR):
        refused = await served.request("GET", f"{API}/audit", token=token)
        assert refused.status_code == 403, refused.text


async def test_a_post_the_store_cannot_audit_now_is_queued_and_logged(
    serve: Callable[..., Awaitable[Served]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file locked by another writer past the busy timeout: the post is
    taken all the same (its events wait in the pipeline), its audit entry
    goes to the ``aegis_mw.audit`` logger as a warning, and the breaker, now
    open, sends the next post's there at once instead of waiting again."""
    path = tmp_path / "aegis.db"
    served = await serve(sink=f"sqlite:///{path}")
    first = {"type": "log", "source": "jobs", "message": "nightly export done", "id": "ev-9"}
    second = {**first, "message": "cleanup done", "id": "ev-10"}
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        with caplog.at_level(logging.WARNING, logger="aegis_mw.audit"):
            taken = await served.request("POST", f"{API}/events", token=EDITOR, json=first)
            started = time.monotonic()
            again = await served.request("POST", f"{API}/events", token=EDITOR, json=second)
            answered_in = time.monotonic() - started
        locker.execute("ROLLBACK")
    finally:
        locker.close()
    assert (taken.status_code, again.status_code) == (202, 202), (taken.text, again.text)
    assert answered_in < 2.0  # not the 3 s busy timeout: the breaker answered
    logged = [r.getMessage() for r in caplog.records if r.name == "aegis_mw.audit"]
    assert len(logged) == 2 and all(r.levelno == logging.WARNING for r in caplog.records
                                    if r.name == "aegis_mw.audit")  # fmt: skip
    assert '"ids": ["ev-9"]' in logged[0] and "not in the audit log: " in logged[0]
    assert "locked" in logged[0]
    assert '"ids": ["ev-10"]' in logged[1] and "the store is down" in logged[1]
    assert len(served.aegis.recorder.events) == 2
    await served.flush()
    # Read from the file itself: the API's reads wait for the breaker to close.
    [sink] = served.aegis.sinks
    stored = sink.read_events(EventQuery(source="jobs", limit=10))
    assert sorted(event.event_id for event in stored) == ["ev-10", "ev-9"]


async def test_a_post_the_queue_refuses_in_part_audits_what_it_took(
    serve: Callable[..., Awaitable[Served]], history_sink_url: str
) -> None:
    """A full queue takes 1 of 3 events: the answer says which (503), and the
    audit names that one only; a post of which none was taken is not audited."""
    served = await serve(sink=history_sink_url)
    served.aegis.recorder.events.max_events = 1
    events = [{"message": f"step {n}", "id": f"s{n}"} for n in range(3)]
    partly = await served.request("POST", f"{API}/events", token=EDITOR, json=events)
    assert partly.status_code == 503, partly.text
    assert partly.json()["error"]["accepted"] == ["s0"]
    none = await served.request("POST", f"{API}/events", token=EDITOR, json=events[1:])
    assert none.status_code == 503 and none.json()["error"]["accepted"] == []
    log = await served.request("GET", f"{API}/audit", token=ADMIN)
    assert [e["detail"] for e in log.json()["data"]["entries"]] == [{"events": 1, "ids": ["s0"]}]


async def test_without_a_store_the_post_is_audited_to_the_log(
    serve: Callable[..., Awaitable[Served]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A JSONL sink keeps events but no audit: the post goes to the
    ``aegis_mw.audit`` logger, and GET audit has nothing to read."""
    served = await serve(sink=f"jsonl:///{tmp_path / 'records.jsonl'}")
    assert served.aegis.audit_log is None
    with caplog.at_level(logging.INFO, logger="aegis_mw.audit"):
        posted = await served.request(
            "POST", f"{API}/events", token=EDITOR,
            json={"type": "log", "source": "jobs", "message": "done", "id": "ev-3"},
        )  # fmt: skip
    assert posted.status_code == 202, posted.text
    [record] = [r for r in caplog.records if r.name == "aegis_mw.audit"]
    assert record.getMessage().startswith("editor token 1 via api from ")
    assert record.getMessage().endswith('post events {"events": 1, "ids": ["ev-3"]}')


def test_the_audit_expires_with_the_events(history_sink_url: str) -> None:
    """Retention deletes audit entries older than the request log's horizon,
    at most ``limit`` per prune, the oldest first, on every store."""
    sink = build_sink(history_sink_url)
    try:
        sink.write(Batch())  # the schema
        audit = sink.audit_log()
        for at in (100.0, 200.0, 300.0, 5000.0):
            audit.add(at, "ops via api from 10.0.0.1", "post", "events", {"events": 1})
        sink.prune(1000.0, {}, 2)
        assert [entry["at"] for entry in audit.latest(10)] == [5000.0, 300.0]
        sink.prune(1000.0, {}, 2)
        assert [entry["at"] for entry in audit.latest(10)] == [5000.0]
        assert audit.latest(10)[0] == {
            "at": 5000.0, "actor": "ops via api from 10.0.0.1", "action": "post",
            "object": "events", "detail": {"events": 1},
        }  # fmt: skip
    finally:
        sink.close()


def test_threads_writing_the_audit_at_once_keep_every_entry(database_url: str) -> None:
    """8 threads of the API writing 50 entries each into one SQLite file or
    PostgreSQL database: all 400 kept, none twice (the SQLite file's audit
    keeps its connections between writes, one thread at a time on each)."""
    sink = build_sink(database_url)
    try:
        sink.write(Batch())
        audit = sink.audit_log()

        def post(thread: int) -> None:
            for number in range(50):
                audit.add(1000.0 + number, f"t{thread}", "post", "events", {"n": number})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, range(8)))
        entries = audit.latest(1000)
        assert len(entries) == 400
        assert sorted((e["actor"], e["detail"]["n"]) for e in entries) == sorted(
            (f"t{thread}", number) for thread in range(8) for number in range(50)
        )
    finally:
        sink.close()


# -- the silences' audit on GET silences: theirs only -----------------------------------


async def test_get_silences_shows_the_silences_audit_only(
    serve: Callable[..., Awaitable[Served]], history_sink_url: str
) -> None:
    served = await serve(alerts_enabled=True, sink=history_sink_url)
    rule = {
        "name": "errors", "input": "error_ratio", "operator": ">", "threshold": 0.5,
        "window": "1m",
    }  # fmt: skip
    await write(served, "PUT", "alert-rules", rule)
    silence = await write(
        served, "POST", "silences",
        {"matchers": ["alertname=errors"], "duration": "1h", "comment": "deploying"},
    )  # fmt: skip
    await write(served, "PUT", "alert-rules", {**rule, "threshold": 0.6})
    listed = await served.request("GET", f"{API}/silences", token=VIEWER)
    assert [(a["action"], a["object"]) for a in listed.json()["data"]["audit"]] == [
        ("create", f"silence {silence['id']}")
    ]
    whole = await served.request("GET", f"{API}/audit", token=ADMIN)
    assert [e["object"] for e in whole.json()["data"]["entries"]] == [
        "rule errors",
        f"silence {silence['id']}",
        "rule errors",
    ]
    assert served.aegis.alerts is not None
    store = served.aegis.alerts.store
    assert [a["object"] for a in store.audit(10, "rule")] == ["rule errors", "rule errors"]
    assert store.audit(10, "channel") == [] and len(store.audit(10)) == 3

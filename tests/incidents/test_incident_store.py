"""The incident stores: memory, a real SQLite file and the real PostgreSQL,
fed the same operations, give the same answers; one active incident per
correlation key (a second opening attaches, a resolution frees the key, a
reopening that would make two active is refused); every change an update
row, numbered in order, with who made it; finding by status and severity,
newest first, in pages; and one incident for a key opened at once by eight
threads, or by two processes. An opening with a request key (an
Idempotency-Key) opens once: its retries, one after another or eight at
once, answer what the first did; the key with other fields is refused; a
key older than a day opens anew."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.incidents.model import ACTIVE, SEVERITIES, STATUSES, Incident
from aegis_mw.incidents.service import new_incident_id
from aegis_mw.incidents.store import KEY_KEEP_SECONDS, Conflict, KeyReused, MemoryIncidentStore
from tests.spawned import run_together

from .conftest import KINDS, T0, make_incident, open_store, rows, sqlite_url


def dump(store: Any, incident_id: str) -> dict[str, Any]:
    """An incident and its updates, as JSON (None when there is none)."""
    found = store.get(incident_id)
    return {
        "incident": None if found is None else found.to_json(),
        "updates": [update.to_json() for update in store.updates(incident_id)],
    }


def script(store: Any) -> list[Any]:
    """The same operations on any store; what each answered, as JSON."""
    said: list[Any] = []

    def opened(incident: Incident) -> None:
        found, created = store.open(incident)
        said.append(("open", incident.incident_id, found.to_json(), created))

    def changed(incident_id: str, fields: dict[str, Any], note: str, actor: str, at: float) -> None:
        try:
            after = store.change(incident_id, fields, note, actor, at)
        except Conflict:
            said.append(("change", incident_id, "conflict", dump(store, incident_id)))
            return
        said.append(("change", incident_id, None if after is None else after.to_json()))

    opened(make_incident("inc-a", T0, severity="high", correlation_key="db-down",
                         description="two\nlines\tand a tab", assignee="dave"))  # fmt: skip
    opened(make_incident("inc-x", T0 + 1, "bob", title="again", severity="low",
                         correlation_key="db-down"))  # fmt: skip
    opened(make_incident("inc-b", T0 + 2, title="no key: never attaches", severity="critical"))
    opened(make_incident("inc-c", T0 + 3, title="ünïcode 😀 'quotes' \"q\"", severity="low",
                         correlation_key="cpu 100%"))  # fmt: skip
    opened(make_incident("inc-d", T0 + 3, severity="medium", correlation_key="Db-Down"))
    changed("inc-a", {"status": "investigating", "assignee": "alice"}, "", "carol", T0 + 4)
    changed("inc-a", {}, "looking at the primary", "carol", T0 + 5)
    changed("inc-a", {"title": "the database is down"}, "renamed", "erin", T0 + 6)
    changed("inc-a", {"description": "replica\nlag"}, "", "erin", T0 + 6)
    changed("inc-a", {"severity": "critical"}, "", "erin", T0 + 7)
    changed("inc-a", {"root_cause": "disk full"}, "", "erin", T0 + 7)
    changed("inc-a", {"assignee": None}, "", "erin", T0 + 8)
    changed("inc-a", {"status": "identified", "severity": "high"}, "both", "erin", T0 + 8)
    changed("inc-a", {"status": "resolved"}, "fixed", "frank", T0 + 10)
    # The key is free again: a new opening makes a new incident.
    opened(make_incident("inc-e", T0 + 11, "gina", severity="high", correlation_key="db-down"))
    opened(make_incident("inc-y", T0 + 12, "hank", correlation_key="db-down"))
    # Reopening inc-a would make two active under its key: refused, nothing written.
    changed("inc-a", {"status": "open"}, "it is back", "ivan", T0 + 13)
    # A resolved incident may change otherwise (not reopened).
    changed("inc-a", {"root_cause": "disk full on the primary"}, "", "ivan", T0 + 14)
    changed("inc-e", {"status": "resolved"}, "", "gina", T0 + 15)
    changed("inc-a", {"status": "monitoring"}, "reopened", "ivan", T0 + 16)
    changed("inc-missing", {"status": "resolved"}, "", "ivan", T0 + 17)
    # A change to the value it has already: every store records it alike.
    changed("inc-c", {"severity": "low"}, "", "ivan", T0 + 17)
    changed("inc-b", {"status": "resolved"}, "", "jane", T0 + 18)
    # A key-less incident reopens freely.
    changed("inc-b", {"status": "open"}, "", "jane", T0 + 19)
    for incident_id in ("inc-a", "inc-b", "inc-c", "inc-d", "inc-e", "inc-x", "inc-missing"):
        said.append(("dump", incident_id, dump(store, incident_id)))
    for statuses, severities in [
        ((), ()), (ACTIVE, ()), (("resolved",), ()), (("monitoring", "open"), ()),
        ((), ("high",)), ((), ("low", "critical")), (ACTIVE, ("high", "medium")),
        (("identified",), ()), ((), tuple(SEVERITIES)), (tuple(STATUSES), ()),
    ]:  # fmt: skip
        for limit, offset in ((100, 0), (1, 0), (2, 1), (2, 4), (3, 5), (10, 10)):
            found = store.find(statuses, severities, limit, offset)
            said.append(("find", statuses, severities, limit, offset,
                          [i.incident_id for i in found]))  # fmt: skip
    return said


def test_every_store_answers_the_same_operations_alike(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    said: dict[str, list[Any]] = {}
    for kind in KINDS:
        folder = tmp_path / kind
        folder.mkdir()
        store, sink = open_store(kind, request, folder)
        try:
            said[kind] = script(store)
        finally:
            if sink is not None:
                sink.close()
    assert said["sqlite"] == said["memory"]
    assert said["postgresql"] == said["memory"]


def test_a_second_opening_of_a_key_attaches_and_records_what_it_asked(store: Any) -> None:
    first, created = store.open(
        make_incident("inc-1", T0, "alice", severity="high", correlation_key="k")
    )
    assert created and first.incident_id == "inc-1"
    second, created = store.open(
        make_incident(
            "inc-2", T0 + 5, "bob", title="asked again", severity="low", correlation_key="k"
        )
    )
    assert not created
    assert second.incident_id == "inc-1"
    # The first opening's fields stand; only the time it was last touched moves.
    assert (second.title, second.severity, second.created_by) == ("incident inc-1", "high", "alice")
    assert (second.created_at, second.updated_at) == (T0, T0 + 5)
    assert store.get("inc-1") == second
    assert store.get("inc-2") is None
    assert [(u.seq, u.kind, u.actor, u.at, u.changes) for u in store.updates("inc-1")] == [
        (1, "created", "alice", T0, {}),
        (2, "attached", "bob", T0 + 5, {"title": "asked again", "severity": "low", "actor": "bob"}),
    ]
    assert store.updates("inc-2") == []
    # Another key, and no key at all: new incidents.
    assert store.open(make_incident("inc-3", T0 + 6, correlation_key="K"))[1]
    assert store.open(make_incident("inc-4", T0 + 7))[1]
    assert store.open(make_incident("inc-5", T0 + 8))[1]
    assert [i.incident_id for i in store.find((), (), 10, 0)] == [
        "inc-5", "inc-4", "inc-3", "inc-1",
    ]  # fmt: skip


def test_a_resolution_frees_the_key_and_a_reopening_may_conflict(store: Any) -> None:
    store.open(make_incident("inc-1", T0, correlation_key="k"))
    resolved = store.change("inc-1", {"status": "resolved"}, "done", "carol", T0 + 10)
    assert resolved is not None
    assert (resolved.status, resolved.resolved_at, resolved.updated_at) == (
        "resolved", T0 + 10, T0 + 10,
    )  # fmt: skip
    fresh, created = store.open(make_incident("inc-2", T0 + 20, "dave", correlation_key="k"))
    assert created and fresh.incident_id == "inc-2"
    # A third opening attaches to the new one, not the resolved one.
    attached, created = store.open(make_incident("inc-3", T0 + 21, correlation_key="k"))
    assert not created and attached.incident_id == "inc-2"
    assert [u.kind for u in store.updates("inc-1")] == ["created", "changed"]

    before = dump(store, "inc-1")
    for status in ACTIVE:
        with pytest.raises(Conflict):
            store.change("inc-1", {"status": status}, "back", "erin", T0 + 30)
        assert dump(store, "inc-1") == before  # nothing written, not even the update
    # A note on the resolved incident, and a field: taken (it stays resolved).
    noted = store.change("inc-1", {"root_cause": "disk"}, "post-mortem", "erin", T0 + 31)
    assert noted is not None and noted.status == "resolved" and noted.resolved_at == T0 + 10

    # Once the other is resolved, the first reopens; its resolution time goes.
    store.change("inc-2", {"status": "resolved"}, "", "dave", T0 + 40)
    reopened = store.change("inc-1", {"status": "investigating"}, "back", "erin", T0 + 41)
    assert reopened is not None
    assert (reopened.status, reopened.resolved_at, reopened.updated_at) == (
        "investigating", None, T0 + 41,
    )  # fmt: skip
    # ... and holds the key again.
    again, created = store.open(make_incident("inc-4", T0 + 42, correlation_key="k"))
    assert not created and again.incident_id == "inc-1"
    with pytest.raises(Conflict):
        store.change("inc-2", {"status": "open"}, "", "dave", T0 + 43)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", "a new title"),
        ("description", "first line\nsecond\tline"),
        ("severity", "critical"),
        ("status", "monitoring"),
        ("assignee", "zoë"),
        ("root_cause", "a bad deploy"),
    ],
)
def test_each_field_changes_and_its_update_holds_old_and_new(
    store: Any, field: str, value: str
) -> None:
    original = make_incident("inc-1", T0, assignee="bob", correlation_key="k")
    store.open(original)
    after = store.change("inc-1", {field: value}, "", "carol", T0 + 1)
    assert after is not None
    assert getattr(after, field) == value
    assert after.updated_at == T0 + 1
    assert store.get("inc-1") == after
    untouched = {"title", "description", "severity", "status", "assignee", "root_cause"} - {field}
    for name in untouched:
        assert getattr(after, name) == getattr(original, name), name
    update = store.updates("inc-1")[-1]
    assert (update.seq, update.kind, update.actor, update.at, update.note) == (
        2, "changed", "carol", T0 + 1, "",
    )  # fmt: skip
    assert update.changes == {field: [getattr(original, field), value]}


def test_unassigning_and_a_note_alone(store: Any) -> None:
    store.open(make_incident("inc-1", T0, assignee="bob"))
    after = store.change("inc-1", {"assignee": None}, "handed back", "bob", T0 + 1)
    assert after is not None and after.assignee is None
    noted = store.change("inc-1", {}, "still looking\nline two", "carol", T0 + 2)
    assert noted is not None and noted.updated_at == T0 + 2
    assert [(u.kind, u.changes, u.note) for u in store.updates("inc-1")] == [
        ("created", {}, ""),
        ("changed", {"assignee": ["bob", None]}, "handed back"),
        ("note", {}, "still looking\nline two"),
    ]


def test_an_id_taken_is_refused_and_the_first_incident_kept(store: Any) -> None:
    """Ids are random (48 bits), so this is all but never met; every store
    must answer it alike: the SQL stores refuse it (their primary key)."""
    first, created = store.open(make_incident("inc-1", T0, "alice", title="first"))
    assert created
    with pytest.raises(Conflict):
        store.open(make_incident("inc-1", T0 + 1, "bob", title="second"))
    assert store.get("inc-1") == first
    assert [(u.seq, u.kind, u.actor) for u in store.updates("inc-1")] == [(1, "created", "alice")]


def test_a_change_of_an_unknown_id_is_none_and_writes_nothing(store: Any) -> None:
    assert store.change("inc-none", {"status": "resolved"}, "x", "carol", T0) is None
    assert store.get("inc-none") is None
    assert store.updates("inc-none") == []
    assert store.find((), (), 10, 0) == []


def test_updates_are_numbered_in_order_with_their_actors_and_kinds(store: Any) -> None:
    store.open(make_incident("inc-1", T0, "alice", correlation_key="k"))
    expected = [(1, "created", "alice")]
    for step in range(1, 25):
        actor = f"user-{step % 4}"
        at = T0 + step
        if step % 5 == 0:
            store.open(make_incident(f"inc-{step}", at, actor, correlation_key="k"))
            expected.append((step + 1, "attached", actor))
        elif step % 2:
            store.change("inc-1", {}, f"note {step}", actor, at)
            expected.append((step + 1, "note", actor))
        else:
            status = ACTIVE[step % len(ACTIVE)]
            fields = {"title": f"title {step}", "status": status}
            store.change("inc-1", fields, "", actor, at)
            expected.append((step + 1, "changed", actor))
    updates = store.updates("inc-1")
    assert [(u.seq, u.kind, u.actor) for u in updates] == expected
    assert [u.at for u in updates] == [T0 + step for step in range(25)]
    assert all(u.incident_id == "inc-1" for u in updates)


def test_find_filters_by_status_and_severity_newest_first_in_pages(store: Any) -> None:
    made: list[tuple[str, str, str, float]] = []
    number = 0
    for status in STATUSES:
        for severity in SEVERITIES:
            number += 1
            incident_id = f"inc-{number:02d}"
            at = T0 + number // 3  # several share a time: ties by id, descending
            store.open(make_incident(incident_id, at, severity=severity))
            if status != "open":
                store.change(incident_id, {"status": status}, "", "carol", at + 100)
            made.append((incident_id, status, severity, at))
    newest = sorted(made, key=lambda m: (m[3], m[0]), reverse=True)

    def expect(statuses: tuple[str, ...], severities: tuple[str, ...]) -> list[str]:
        return [
            m[0] for m in newest
            if (not statuses or m[1] in statuses) and (not severities or m[2] in severities)
        ]  # fmt: skip

    cases = [
        ((), ()), (ACTIVE, ()), (("resolved",), ()), (("open",), ("low",)),
        ((), ("critical", "high")), (("investigating", "monitoring"), ("medium", "low", "high")),
        (("nothing-such",), ()),
    ]  # fmt: skip
    for statuses, severities in cases:
        everything = expect(statuses, severities)
        found = store.find(statuses, severities, 1000, 0)
        assert [i.incident_id for i in found] == everything, (statuses, severities)
        assert all(i.status in (statuses or STATUSES) for i in found)
        for limit in (1, 3, 7):
            paged: list[str] = []
            for offset in range(0, len(everything) + limit, limit):
                page = store.find(statuses, severities, limit, offset)
                assert len(page) <= limit
                paged += [i.incident_id for i in page]
            assert paged == everything, (statuses, severities, limit)
    assert len(store.find(ACTIVE, (), 1000, 0)) == 16
    assert store.find((), (), 5, 1000) == []


def test_the_memory_store_keeps_each_sinks_incidents_apart() -> None:
    from aegis_mw.sinks import MemorySink

    one, other = MemorySink(), MemorySink()
    assert one.incident_store() is one.incident_store()
    one.incident_store().open(make_incident("inc-1", T0, correlation_key="k"))
    assert other.incident_store().get("inc-1") is None
    assert other.incident_store().open(make_incident("inc-2", T0, correlation_key="k"))[1]
    assert isinstance(one.incident_store(), MemoryIncidentStore)


# -- once per request key ----------------------------------------------------------------


def test_a_request_key_opens_once_and_its_retries_answer_alike(store: Any) -> None:
    first = make_incident("inc-1", T0, severity="high")
    assert store.open_once(first, "key-1", "fields-1") == (first, True, False)
    retry = make_incident("inc-2", T0 + 5, severity="high")  # a new id, as a retry makes
    assert store.open_once(retry, "key-1", "fields-1") == (first, True, True)
    assert [i.incident_id for i in store.find((), (), 10, 0)] == ["inc-1"]
    assert [u.kind for u in store.updates("inc-1")] == ["created"]
    after = store.change("inc-1", {"status": "investigating"}, "", "bob", T0 + 6)
    assert store.open_once(retry, "key-1", "fields-1") == (after, True, True)  # as it is now
    with pytest.raises(KeyReused):
        store.open_once(retry, "key-1", "other fields")
    assert store.get("inc-2") is None
    # Another key, for an opening that attaches: its retry attaches no more.
    keyed = make_incident("inc-3", T0 + 7, correlation_key="disk")
    assert store.open_once(keyed, "key-2", "fields-2")[1:] == (True, False)
    attach = make_incident("inc-4", T0 + 8, "carol", correlation_key="disk")
    attached = store.open_once(attach, "key-3", "fields-3")
    assert (attached[0].incident_id, attached[1:]) == ("inc-3", (False, False))
    again = store.open_once(make_incident("inc-5", T0 + 9, correlation_key="disk"),
                            "key-3", "fields-3")  # fmt: skip
    assert (again[0].incident_id, again[1:]) == ("inc-3", (False, True))
    assert [u.kind for u in store.updates("inc-3")] == ["created", "attached"]


def test_a_request_key_is_kept_a_day(store: Any) -> None:
    first = make_incident("inc-1", T0)
    assert store.open_once(first, "key", "fields")[2] is False
    within = make_incident("inc-2", T0 + KEY_KEEP_SECONDS - 1)
    assert store.open_once(within, "key", "fields") == (first, True, True)
    later = make_incident("inc-3", T0 + KEY_KEEP_SECONDS + 1)
    assert store.open_once(later, "key", "other fields") == (later, True, False)
    assert sorted(i.incident_id for i in store.find((), (), 10, 0)) == ["inc-1", "inc-3"]


def test_the_sinks_pruning_deletes_the_keys_of_a_day_ago(shared_store: tuple[str, Any]) -> None:
    """An opening takes over its own key once expired, and deletes no other
    (openings at once would lock the same rows); pruning deletes the rest."""
    url, sink = shared_store
    store = sink.incident_store()
    now = time.time()
    expired = now - KEY_KEEP_SECONDS - 60
    for number, at in enumerate((expired, expired, now - 60)):
        store.open_once(make_incident(f"inc-{number}", at), f"key-{number}", "fields")
    store.open_once(make_incident("inc-9", now), "key-0", "other fields")
    keys = "SELECT request_key, incident_id FROM aegis_incident_requests ORDER BY request_key"
    assert rows(url, keys) == [("key-0", "inc-9"), ("key-1", "inc-1"), ("key-2", "inc-2")]
    sink.prune(0.0, {}, 1000)
    assert rows(url, keys) == [("key-0", "inc-9"), ("key-2", "inc-2")]  # a day not yet past


# -- at once: threads, then processes ----------------------------------------------------


def at_once(stores: list[Any], call: Callable[[Any, int], Any]) -> list[Any]:
    """``call(store, index)`` for each store in its own thread, all released
    together: what each answered, or raised."""
    barrier = threading.Barrier(len(stores))
    answers: list[Any] = [None] * len(stores)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            answers[index] = call(stores[index], index)
        except BaseException as exc:
            answers[index] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    assert all(answer is not None for answer in answers)
    return answers


def open_at_once(stores: list[Any], key: str) -> list[tuple[str, bool] | BaseException]:
    """Each store opens an incident of correlation ``key`` at once: what each answered."""

    def opening(store: Any, index: int) -> tuple[str, bool]:
        incident = make_incident(
            new_incident_id(), T0 + index, f"worker-{index}", correlation_key=key
        )
        found, created = store.open(incident)
        return found.incident_id, created

    return at_once(stores, opening)


def check_one_incident(store: Any, answers: list[Any], key: str, count: int) -> None:
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    assert sum(created for _, created in answers) == 1, answers
    ids = {incident_id for incident_id, _ in answers}
    assert len(ids) == 1, answers
    (incident_id,) = ids
    found = store.find(ACTIVE, (), 1000, 0)
    assert [i.incident_id for i in found if i.correlation_key == key] == [incident_id]
    updates = store.updates(incident_id)
    assert [u.seq for u in updates] == list(range(1, count + 1))
    assert [u.kind for u in updates] == ["created"] + ["attached"] * (count - 1)
    # Every worker is in the audit once: the one that created it, and each attached.
    assert sorted(u.actor for u in updates) == sorted(f"worker-{n}" for n in range(count))
    created_by = store.get(incident_id).created_by
    assert updates[0].actor == created_by


def test_eight_threads_opening_one_key_in_sqlite_make_one_incident(tmp_path: Path) -> None:
    from aegis_mw.sinks import SQLiteSink

    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    try:
        assert sink.incident_store().find((), (), 1, 0) == []  # the file is migrated
        for round_ in range(5):
            key = f"key-{round_}"
            # Its own store object each: each call opens a connection of its own.
            stores = [sink.incident_store() for _ in range(8)]
            answers = open_at_once(stores, key)
            check_one_incident(sink.incident_store(), answers, key, 8)
    finally:
        sink.close()


def test_eight_threads_opening_one_key_in_postgresql_make_one_incident(
    postgres_url: str,
) -> None:
    from aegis_mw.sinks.postgres import PostgresSink

    # A sink (and so a pool of connections) per thread: eight sessions at once.
    sinks = [PostgresSink(postgres_url) for _ in range(8)]
    try:
        assert sinks[0].incident_store().find((), (), 1, 0) == []  # the schema is made
        for round_ in range(5):
            key = f"key-{round_}"
            answers = open_at_once([sink.incident_store() for sink in sinks], key)
            check_one_incident(sinks[0].incident_store(), answers, key, 8)
    finally:
        for sink in sinks:
            sink.close()


def send_at_once(stores: list[Any], key: str) -> list[Any]:
    """Each store opens once under request ``key`` at once: what each answered
    (incident id, created, replayed)."""

    def opening(store: Any, index: int) -> tuple[str, bool, bool]:
        incident = make_incident(new_incident_id(), T0 + index, f"worker-{index}")
        found, created, replayed = store.open_once(incident, key, "fields")
        return found.incident_id, created, replayed

    return at_once(stores, opening)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_eight_threads_sending_one_request_key_open_one_incident(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same opening sent eight times at once (a client's retries racing its
    first try): one incident, created once; the others answer it, as replays."""
    from aegis_mw.sinks import build_sink

    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgres_url")
    sinks = [build_sink(url) for _ in range(8)]  # eight connections at once
    try:
        assert sinks[0].incident_store().find((), (), 1, 0) == []  # made and migrated
        for round_ in range(3):
            answers = send_at_once([sink.incident_store() for sink in sinks], f"key-{round_}")
            assert not [a for a in answers if not isinstance(a, tuple)], answers
            assert len({incident_id for incident_id, _, _ in answers}) == 1, answers
            assert all(created for _, created, _ in answers), answers
            assert sorted(replayed for _, _, replayed in answers) == [False] + [True] * 7
        assert len(sinks[0].incident_store().find((), (), 10, 0)) == 3
    finally:
        for sink in sinks:
            sink.close()


def open_in_process(url: str, key: str, index: int, barrier: Any, results: Any) -> None:
    """In a spawned process: its own sink, one opening of ``key`` at the barrier."""
    try:
        from aegis_mw.sinks import build_sink

        sink = build_sink(url)
        try:
            store = sink.incident_store()
            store.find((), (), 1, 0)  # connected and migrated before the barrier
            incident = make_incident(
                new_incident_id(), T0 + index, f"worker-{index}", correlation_key=key
            )
            barrier.wait(timeout=60)
            found, created = store.open(incident)
        finally:
            sink.close()
    except BaseException as exc:
        results.put((index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, (found.incident_id, created)))


def test_two_processes_opening_one_key_make_one_incident(shared_store: tuple[str, Any]) -> None:
    url, sink = shared_store
    store = sink.incident_store()
    assert store.find((), (), 1, 0) == []  # made and migrated here first
    for round_ in range(3):
        key = f"process-key-{round_}"
        reports, codes = run_together(open_in_process, 2, url, key, timeout=120)
        assert codes == [0, 0], reports
        answers = [answer for _, answer in sorted(reports)]
        assert all(isinstance(answer, tuple) for answer in answers), reports
        check_one_incident(store, answers, key, 2)

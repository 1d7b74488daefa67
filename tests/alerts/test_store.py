"""The alert store in a real SQLite file, the real PostgreSQL, and memory:
the lease and its fencing token, instances, history."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.alerts import AlertRule, Instance, Transition, evaluate
from aegis_mw.alerts.channels import channels_from_config
from aegis_mw.alerts.outbox import notices_for
from aegis_mw.alerts.store import RULE, MemoryAlertStore, changes_between
from tests.history.dataset import open_sink

from .timeline import START, ratio


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryAlertStore()
        return
    sink = open_sink(request.param, request, tmp_path)
    yield sink.alert_store()
    sink.close()


def test_the_lease_is_held_renewed_and_taken_over_with_a_new_token(store: Any) -> None:
    assert store.claim("a", START, 15) == 1
    assert store.claim("b", START + 5, 15) is None
    assert store.claim("a", START + 10, 15) == 1  # renewed until START + 25
    assert store.claim("b", START + 24, 15) is None
    assert store.claim("b", START + 26, 15) == 2  # expired: taken, token raised
    assert store.claim("a", START + 27, 15) is None
    store.release("a")  # not a's any more: nothing happens
    assert store.claim("a", START + 28, 15) is None
    store.release("b")
    assert store.claim("a", START + 29, 15) == 3


def test_a_commit_renews_the_lease(store: Any) -> None:
    assert store.claim("a", START, 15) == 1
    assert store.commit("a", 1, [], [], [], START + 60)
    assert store.claim("b", START + 50, 15) is None  # renewed until START + 60
    assert store.claim("b", START + 61, 15) == 2


def test_a_fenced_out_holder_writes_nothing(store: Any) -> None:
    rule = AlertRule(name="errors", input="error_ratio", operator=">", threshold=0.05)
    first = evaluate([rule], {}, {"errors": ratio(rule, 0.5)}, START, 20)
    assert store.claim("a", START, 15) == 1
    assert store.claim("b", START + 20, 15) == 2
    changed, removed = changes_between({}, first.instances)
    assert not store.commit("a", 1, changed, removed, first.transitions, START + 40)
    assert store.load() == {} and store.history(10) == []
    assert store.commit("b", 2, changed, removed, first.transitions, START + 40)
    assert store.load() == first.instances
    assert [row["kind"] for row in store.history(10)] == ["firing"]


def test_instances_and_history_round_trip(store: Any) -> None:
    rule = AlertRule(
        name="errors", input="error_ratio", operator=">", threshold=0.05, group_by=("route",),
        annotations={"summary": "$route at $value_percent"}, labels={"team": "web"},
    )  # fmt: skip
    figures = {
        "errors": {(("route", f"/r{n}"),): ratio(rule, n / 10)[()] for n in range(4)},
    }
    token = store.claim("a", START, 15)
    instances: dict[Any, Instance] = {}
    for step in range(3):
        result = evaluate([rule], instances, figures, START + 10 * step, 20)
        changed, removed = changes_between(instances, result.instances)
        assert store.commit("a", token, changed, removed, result.transitions, START + 15)
        instances = result.instances
    loaded = store.load()
    # The time last seen is not written when nothing else changed.
    assert {k: (i.state, i.episode, i.fired_at) for k, i in loaded.items()} == {
        k: (i.state, i.episode, i.fired_at) for k, i in instances.items()
    }
    assert sorted(i.group for i in store.instances()) == [
        (("route", "/r1"),), (("route", "/r2"),), (("route", "/r3"),)
    ]  # fmt: skip
    history = store.history(2)
    assert [row["group"] for row in history] == [{"route": "/r3"}, {"route": "/r2"}]
    assert history[0]["labels"] == {"alertname": "errors", "severity": "warning", "team": "web",
                                    "route": "/r3"}  # fmt: skip
    assert history[0]["annotations"] == {"summary": "/r3 at 30 %"}
    assert history[0]["notify"] is True and history[0]["value"] == 0.3
    older = store.history(10, before=history[-1]["id"])
    assert [row["group"] for row in older] == [{"route": "/r1"}]


def test_one_holder_at_a_time_under_contention(store: Any) -> None:
    """Eight threads claim the lease over and over (each call its own
    connection): every token is ever held by one holder only."""
    holders: dict[int, set[str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim(name: str) -> None:
        start.wait(timeout=30)
        for step in range(25):
            token = store.claim(name, START + step, 0.5)
            if token is not None:
                with lock:
                    holders.setdefault(token, set()).add(name)

    threads = [threading.Thread(target=claim, args=(f"h{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert holders, "nobody ever held the lease"
    assert all(len(names) == 1 for names in holders.values()), holders


def test_old_transitions_are_pruned_oldest_first_in_steps(store: Any) -> None:
    rule = AlertRule(name="errors", input="error_ratio", operator=">", threshold=0.05)
    token = store.claim("a", START, 10**6)
    instances: dict[Any, Instance] = {}
    for step in range(5):  # firing, resolved, firing, ... one a minute
        value = 0.5 if step % 2 == 0 else 0.0
        result = evaluate([rule], instances, {"errors": ratio(rule, value)}, START + 60 * step, 20)
        changed, removed = changes_between(instances, result.instances)
        assert store.commit("a", token, changed, removed, result.transitions, START + 10**6)
        instances = result.instances
    assert len(store.history(100)) == 5
    assert store.prune_history(START + 150, 2) == 2
    assert store.prune_history(START + 150, 2) == 1
    assert store.prune_history(START + 150, 2) == 0
    assert [row["at"] for row in store.history(100)] == [START + 60 * n for n in (4, 3)]


def test_an_episode_that_flapping_ended_resolved_is_pruned_as_after_a_resolve(
    store: Any,
) -> None:
    """A flapping notice that fired opened the episode at the receiver; the
    end of the flapping, settled inactive, resolved it. Once that is done,
    the episode's rows go with the retention, as a resolve's would (kept,
    they would be kept for ever)."""
    channels = channels_from_config({"hook": {"type": "webhook", "url": "https://example.com/h"}})
    flapping = Transition(
        rule="errors", group=(), kind="flapping", from_state="resolved", to_state="firing",
        at=START, value=0.5, severity="warning", episode="e1", notify=True,
        labels={"alertname": "errors", "severity": "warning"}, annotations={},
    )  # fmt: skip
    ended = replace(
        flapping, kind="flapping_ended", from_state="inactive", to_state="inactive",
        at=START + 3600,
    )  # fmt: skip
    token = store.claim("a", START, 10**6)
    for transition in (flapping, ended):
        now = transition.at
        notices = notices_for([transition], channels)
        assert store.commit("a", token, [], [], [transition], START + 10**6, notices)
        [row] = store.claim_notices("sender", now, 30, 10, ["hook"])
        store.finish_notice(row.id, row.claim, "delivered", now, "", now)
    assert len(store.notices(10)) == 2
    store.prune_history(START + 10**6, 100)
    assert store.notices(10) == []


def test_rules_written_through_the_api_move_the_revision(store: Any) -> None:
    rule = {"name": "errors", "input": "error_ratio", "operator": ">", "threshold": 0.05}
    assert store.revisions().rules == 0 and store.api_items(RULE) == (0, [])
    assert store.put_item(RULE, "errors", rule, "ana", START, 10) == "create"
    first = store.revisions().rules
    assert (
        store.put_item(RULE, "errors", {**rule, "threshold": 0.1}, "bob", START + 1, 10) == "update"
    )
    second, [row] = store.api_items(RULE)
    assert second > first and (row.name, row.data["threshold"], row.updated_by) == (
        "errors", 0.1, "bob"
    )  # fmt: skip
    assert store.delete_item(RULE, "errors", "ana", START + 2)
    third = store.revisions().rules
    assert third > second and store.api_items(RULE) == (third, [])
    assert not store.delete_item(RULE, "errors", "ana", START + 3)
    assert store.revisions().rules == third  # nothing changed
    # Made again after its deletion: a revision never seen before.
    store.put_item(RULE, "errors", rule, "ana", START + 4, 10)
    assert store.revisions().rules > third
    actions = [(a["action"], a["object"], a["actor"]) for a in store.audit(10)]
    assert actions == [
        ("create", "rule errors", "ana"), ("delete", "rule errors", "ana"),
        ("update", "rule errors", "bob"), ("create", "rule errors", "ana"),
    ]  # fmt: skip


def test_the_rule_limit_counts_live_rules(store: Any) -> None:
    from aegis_mw.alerts.store import TooMany

    def rule(name: str) -> dict[str, Any]:
        return {"name": name, "input": "request_rate", "operator": ">", "threshold": 1}

    store.put_item(RULE, "a", rule("a"), "t", START, 2)
    store.put_item(RULE, "b", rule("b"), "t", START, 2)
    with pytest.raises(TooMany):
        store.put_item(RULE, "c", rule("c"), "t", START, 2)
    assert store.put_item(RULE, "b", rule("b"), "t", START, 2) == "update"  # not a new one
    store.delete_item(RULE, "a", "t", START)
    assert store.put_item(RULE, "c", rule("c"), "t", START, 2) == "create"
    assert [row.name for row in store.api_items(RULE)[1]] == ["b", "c"]


def test_writers_at_once_never_share_a_revision(store: Any) -> None:
    """Eight threads writing rules together: every write gets a revision of
    its own (a reader that saw one can never miss another)."""
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def write(index: int) -> None:
        try:
            start.wait(timeout=30)
            for step in range(5):
                rule = {"name": f"rule{index}", "input": "request_rate", "operator": ">",
                        "threshold": step}  # fmt: skip
                store.put_item(RULE, rule["name"], rule, "t", START, 100)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == [] and not any(thread.is_alive() for thread in threads)
    assert store.revisions().rules == 40  # one revision per write, none shared
    assert len(store.api_items(RULE)[1]) == 8


def test_a_silence_is_updated_only_while_it_has_not_ended(store: Any) -> None:
    from aegis_mw.alerts.silences import silence_from_mapping
    from aegis_mw.alerts.store import TooMany

    def silence(key: str, ends_at: float) -> Any:
        return silence_from_mapping({
            "id": key, "matchers": [f'alertname="{key}"'], "starts_at": START,
            "ends_at": ends_at, "created_by": "ana", "comment": "c",
        })  # fmt: skip

    assert not store.put_silence(silence("a", START + 60), "ana", START, update=True)
    assert store.put_silence(silence("a", START + 60), "ana", START, limit=1)
    with pytest.raises(TooMany):
        store.put_silence(silence("b", START + 60), "ana", START, limit=1)
    assert store.put_silence(silence("a", START + 90), "ana", START + 10, update=True, limit=1)
    # Ended: an update does not bring it back.
    assert not store.put_silence(silence("a", START + 200), "ana", START + 100, update=True)
    assert [s.ends_at for s in store.silences(START)] == [START + 90]
    assert store.put_silence(silence("b", START + 200), "ana", START + 100, limit=1)


def test_a_due_row_behind_an_older_one_takes_no_write_lock(tmp_path: Path) -> None:
    """A row due but waiting behind an older pending row of its alert (in
    order) cannot be claimed: the claim answers from a read, without the
    SQLite file's write lock, which another process holds here."""
    import sqlite3

    from aegis_mw.core.record import Batch
    from aegis_mw.sinks import SQLiteSink

    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    try:
        sink.write(Batch())  # the schema
        store = sink.alert_store()
        insert = (
            "INSERT INTO aegis_alert_outbox (created_at, channel, notice_key, alert_key, episode, "
            "payload, state, attempts, next_at, claimed_by, claimed_until, last_error, group_key) "
            "VALUES (?, 'hook', ?, 'a', 'e', '{}', 'pending', 0, ?, '', 0, '', '')"
        )
        with sqlite3.connect(tmp_path / "aegis.db") as setup:
            setup.execute(insert, (START, "older", START + 600))  # not due for ten minutes
            setup.execute(insert, (START, "newer", START))  # due, but behind it
        holder = sqlite3.connect(tmp_path / "aegis.db", timeout=0.1, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's write
        try:
            assert store.claim_notices("me", START + 1, 30, 10, ["hook"]) == []
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Once the older one is due, it goes first (the newer after it is done).
        claimed = store.claim_notices("me", START + 601, 30, 10, ["hook"])
        assert [c.key for c in claimed] == ["older"]
    finally:
        sink.close()


def test_reports_are_kept_per_process_and_age_out(store: Any) -> None:
    store.put_report("a", START, {"dropped": 1})
    store.put_report("b", START + 5, {"dropped": 2, "sinks": {"s": True}})
    store.put_report("a", START + 10, {"dropped": 3})  # replaces a's
    assert store.reports(START) == [
        ("a", {"dropped": 3}),
        ("b", {"dropped": 2, "sinks": {"s": True}}),
    ]
    assert store.reports(START + 6) == [("a", {"dropped": 3})]
    store.remove_report("a")
    assert store.reports(START) == [("b", {"dropped": 2, "sinks": {"s": True}})]
    # A write deletes the reports older than its keep (processes gone).
    store.put_report("c", START + 100, {}, keep=50)
    assert store.reports(0) == [("c", {})]


def test_channels_written_through_the_api_keep_their_own_revision(store: Any) -> None:
    """A channel's write moves the channels' revision only (a rule's reload
    is not paid for it); its deletion skips its pending notices and clears
    its disabled state; the audit never holds a secret given as it is."""
    from aegis_mw.alerts.outbox import ChannelState, Notice
    from aegis_mw.alerts.store import CHANNEL

    hook = {"type": "webhook", "url": "https://hooks.example/T0/secret-part",
            "secret": "env:ALERT_SECRET_HOOK"}  # fmt: skip
    assert store.put_item(CHANNEL, "hook", hook, "ada", START, 10) == "create"
    assert store.revisions() == (0, 1)
    revision, [row] = store.api_items(CHANNEL)
    assert (revision, row.name, row.data, row.updated_by) == (1, "hook", hook, "ada")
    assert store.api_items(RULE) == (0, [])
    token = store.claim("a", START, 15)
    notice = Notice("hook", "k1", '["errors", []]', "ep1", "{}", START)
    assert store.commit("a", token, [], [], [], START + 15, [notice])
    store.disable_channel(ChannelState("hook", "f", "gone", START, START + 60))
    assert store.delete_item(CHANNEL, "hook", "ada", START + 1)
    assert not store.delete_item(CHANNEL, "hook", "ada", START + 2)
    assert store.revisions() == (0, 2) and store.api_items(CHANNEL) == (2, [])
    assert store.channel_states() == {}
    [skipped] = store.notices(10)
    assert (skipped["state"], skipped["last_error"]) == (
        "skipped", "the channel was deleted through the API"
    )  # fmt: skip
    audit = [(a["action"], a["object"], a["detail"]) for a in store.audit(10)]
    shown = {**hook, "url": "(hidden)"}
    assert audit == [("delete", "channel hook", shown), ("create", "channel hook", shown)]
    assert "secret-part" not in repr(store.audit(10))


def test_a_channel_made_again_does_not_take_an_earlier_ones_notices(store: Any) -> None:
    """Notices written for a channel of the same name before it was made
    (by a process that had not yet read the earlier one's deletion) are
    skipped; those written after are its own."""
    from aegis_mw.alerts.outbox import Notice
    from aegis_mw.alerts.store import CHANNEL

    token = store.claim("a", START, 15)
    early = Notice("hook", "k1", '["errors", []]', "ep1", "{}", START)
    assert store.commit("a", token, [], [], [], START + 15, [early])
    slack = {"type": "slack", "url": "https://hooks.example/s"}
    assert store.put_item(CHANNEL, "hook", slack, "ada", START + 10, 10) == "create"
    late = Notice("hook", "k2", '["errors", []]', "ep2", "{}", START + 11)
    assert store.commit("a", token, [], [], [], START + 15, [late])
    assert store.put_item(CHANNEL, "hook", slack, "ada", START + 12, 10) == "update"
    states = {row["notice_key"]: (row["state"], row["last_error"]) for row in store.notices(10)}
    assert states == {
        "k1": ("skipped", "made for an earlier channel of this name"), "k2": ("pending", ""),
    }  # fmt: skip

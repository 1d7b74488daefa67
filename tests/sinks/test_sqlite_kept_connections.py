"""The alert store, the incidents and the audit on a SQLite file keep their
connections between calls (opening one cost each call about 0.8 ms): one at a
time per thread, closed after an error, never a forked parent's, no more than
a few idle, all closed with the sink."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.incidents.store import Conflict, KeyReused
from aegis_mw.sinks import SQLiteSink
from aegis_mw.sinks.sqlite import KEPT_CONNECTIONS
from tests.core.test_fork import run_in_child
from tests.incidents.conftest import T0
from tests.incidents.conftest import make_incident as incident_of

_ids = itertools.count(1)


def make_incident() -> Any:
    return incident_of(f"inc-{next(_ids)}", T0)


def count_opens(sink: SQLiteSink) -> list[sqlite3.Connection]:
    """The connections the sink opens from now on (its own ``_open``, counted)."""
    opened: list[sqlite3.Connection] = []
    real_open = sink._open

    def counted(**options: bool) -> sqlite3.Connection:
        opened.append(real_open(**options))
        return opened[-1]

    sink._open = counted  # type: ignore[method-assign]
    return opened


def test_calls_one_after_another_share_one_connection(
    sink_factory: Callable[[Path | str], SQLiteSink], tmp_path: Path
) -> None:
    sink = sink_factory(tmp_path / "aegis.db")
    opened = count_opens(sink)
    alerts, incidents, audit = sink.alert_store(), sink.incident_store(), sink.audit_log()
    for _ in range(3):
        assert alerts.load() == {}
        assert alerts.silences(0.0) == []
        assert incidents.open(make_incident())[1]
        audit.add(T0, "tester", "POST", "events", {"accepted": 1})
    assert incidents.counts(0.0)[0] == 3
    assert [entry["actor"] for entry in audit.latest(10)] == ["tester"] * 3
    assert len(opened) == 1


def test_a_connection_that_saw_an_error_is_closed_not_kept(
    sink_factory: Callable[[Path | str], SQLiteSink], tmp_path: Path
) -> None:
    sink = sink_factory(tmp_path / "aegis.db")
    opened = count_opens(sink)
    incidents = sink.incident_store()
    first = make_incident()
    assert incidents.open(first)[1]
    with pytest.raises(Conflict):  # its id taken: the insert fails inside the transaction
        incidents.open(dataclasses.replace(first, title="again"))
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")  # closed
    assert incidents.open(make_incident())[1]  # a new one, outside any transaction
    assert len(opened) == 2 and not opened[1].in_transaction
    assert incidents.counts(0.0)[0] == 2


def test_a_refusal_of_the_stores_own_keeps_the_connection(
    sink_factory: Callable[[Path | str], SQLiteSink], tmp_path: Path
) -> None:
    """An Idempotency-Key reused with other fields is refused by the store, not
    by SQLite: the transaction rolled back, the connection is kept."""
    sink = sink_factory(tmp_path / "aegis.db")
    opened = count_opens(sink)
    incidents = sink.incident_store()
    assert incidents.open_once(make_incident(), "key", "fields")[1]
    with pytest.raises(KeyReused):
        incidents.open_once(make_incident(), "key", "other fields")
    assert not opened[0].in_transaction
    assert incidents.open_once(make_incident(), "key", "fields")[2]  # a replay, same connection
    assert len(opened) == 1


def test_threads_at_once_each_get_their_own(
    sink_factory: Callable[[Path | str], SQLiteSink], tmp_path: Path
) -> None:
    sink = sink_factory(tmp_path / "aegis.db")
    opened = count_opens(sink)
    inside, release = threading.Barrier(3, timeout=10), threading.Event()

    def hold() -> None:
        with sink._pooled_connection() as connection:
            connection.execute("SELECT 1")
            inside.wait()
            assert release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()  # both hold one now
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(opened) == 2 and opened[0] is not opened[1]
    assert sink.alert_store().load() == {}
    assert len(opened) == 2  # kept, and lent again


def test_one_lent_while_the_sink_closes_is_closed_when_it_comes_back(
    sink_factory: Callable[[Path | str], SQLiteSink], tmp_path: Path
) -> None:
    """An alert thread's call that outlived the sink's close (its stop gave up
    on it): its connection is closed when the call ends, not kept; the sink
    used again afterwards keeps connections again."""
    sink = sink_factory(tmp_path / "aegis.db")
    opened = count_opens(sink)
    with sink._pooled_connection() as connection:
        sink.close()
        assert connection.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")
    assert sink._pool == []
    assert sink.alert_store().load() == {}
    assert sink._pool == [opened[1]]


@pytest.mark.forks
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_the_sink_closes_them_and_a_child_opens_its_own(
    sink_factory: Callable[[Path | str], SQLiteSink], tmp_path: Path
) -> None:
    sink = sink_factory(tmp_path / "aegis.db")
    opened = count_opens(sink)
    assert sink.incident_store().open(make_incident())[1]
    parents = opened[0]

    def in_child() -> dict[str, Any]:
        counted = sink.incident_store().counts(0.0)[0]
        # The parent's kept connection is not the child's: it opened its own,
        # and keeps the parent's referenced (closing it would disturb the parent).
        own = len(opened) == 2 and sink._pool == [opened[1]]
        sink.close()
        kept = any(connection is parents for connection in sink._left_behind)
        return {"ok": counted == 1 and own and kept}

    code, report = run_in_child(in_child)
    assert (code, report) == (0, {"ok": True})
    assert len(opened) == 1 and sink._pool == [opened[0]]
    sink.close()
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")


def test_a_burst_of_calls_leaves_a_few_connections_open(
    sink_factory: Callable[[Path | str], SQLiteSink], tmp_path: Path
) -> None:
    """Many API threads at once open a connection each; once they are done,
    the pool keeps ``KEPT_CONNECTIONS`` and closes the rest."""
    sink = sink_factory(tmp_path / "aegis.db")
    opened = count_opens(sink)
    burst = KEPT_CONNECTIONS + 3
    inside = threading.Barrier(burst)

    def call() -> None:
        with sink._pooled_connection() as connection:
            inside.wait(10)  # all borrowed at once
            connection.execute("SELECT 1")

    threads = [threading.Thread(target=call) for _ in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(opened) == burst
    kept = [connection for connection in opened if connection in sink._pool]
    assert len(kept) == KEPT_CONNECTIONS
    for connection in opened:
        if connection in kept:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        else:
            with pytest.raises(sqlite3.ProgrammingError, match="closed"):
                connection.execute("SELECT 1")
    assert sink.alert_store().load() == {}  # a kept one, none opened
    assert len(opened) == burst

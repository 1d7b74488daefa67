"""Forking with records buffered: the parent writes its own, the child starts empty."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from tests.harness import inbox_item

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)"),
    pytest.mark.forks,
    # Python 3.12+ warns when forking a process that has threads; forking one is the point.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

N_FLUSHED = 3  # parent records written before the fork (the sink's connection is open)
N_BUFFERED = 5  # parent records still in the inbox at the fork
N = N_FLUSHED + N_BUFFERED
M = 4  # records of the child's own
CHILD_DEADLINE = 60.0
#: What the child reports about itself when the fork was handled right.
EXPECTED_CHILD = {
    "inbox_at_fork": 0,  # none of the parent's buffered items
    "backlog_at_fork": [0],
    "flusher_alive": True,
    "new_flusher_thread": True,
    "flushed": True,
    "backlog_after": 0,
    "last_error": "",
}


def offer(aegis: Aegis, path: str, count: int) -> None:
    """Queue ``count`` well-formed finished requests, as the middleware would."""
    for number in range(count):
        now = aegis.clock.monotonic()
        aegis.recorder.offer(
            inbox_item(
                f"{path}/{number}",
                route="/x/{n}",
                start=now,
                response_bytes=2,
                client=("127.0.0.1", 50000),
            )
        )


def run_in_child(check: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Fork; the child runs ``check`` and reports it as JSON over a pipe, then ``_exit``s.

    The parent waits at most ``CHILD_DEADLINE`` seconds for the report, then kills
    the child; it returns the child's exit code and report.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            os.close(read_fd)
            report = check()
            code = 0 if report.get("ok") else 1
            data = json.dumps(report).encode()
        except BaseException as exc:
            code = 2
            data = json.dumps({"ok": False, "exception": repr(exc)}).encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_DEADLINE
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the child did not finish in {CHILD_DEADLINE} s: {chunks}")
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:  # EOF: the child has exited
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child ended by signal: {status}"
    raw = b"".join(chunks)
    return os.WEXITSTATUS(status), json.loads(raw) if raw else {}


def stored_ids(path: Path) -> list[tuple[str, str]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(
            "SELECT request_id, path FROM aegis_requests ORDER BY path"
        ).fetchall()
    finally:
        connection.close()


def test_parent_writes_what_it_buffered_and_the_child_writes_its_own(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """After a fork with records buffered, the file holds each parent record once plus the child's."""
    db = tmp_path / "fork.db"
    aegis = make_aegis(sink=f"sqlite:///{db}", flush_interval=3600)
    offer(aegis, "/parent/flushed", N_FLUSHED)
    assert aegis.force_flush(timeout=10) is True  # the parent's connection is now open
    offer(aegis, "/parent/buffered", N_BUFFERED)
    assert len(aegis.recorder.inbox) == N_BUFFERED
    parent_prefix = aegis.finalizer.id_prefix
    parent_flusher = aegis.flusher._thread

    def child() -> dict[str, Any]:
        inbox_at_fork = len(aegis.recorder.inbox)
        backlog_at_fork = [len(runner.backlog) for runner in aegis.flusher.runners]
        flusher_thread = aegis.flusher._thread
        alive_at_fork = flusher_thread is not None and flusher_thread.is_alive()
        offer(aegis, "/child", M)
        flushed = aegis.force_flush(timeout=20)
        [sink_stats] = aegis.stats().sinks
        report = {
            "inbox_at_fork": inbox_at_fork,
            "backlog_at_fork": backlog_at_fork,
            "flusher_alive": alive_at_fork and aegis.stats().flusher_alive,
            "new_flusher_thread": flusher_thread is not parent_flusher,
            "prefix": aegis.finalizer.id_prefix,
            "flushed": flushed,
            "backlog_after": sink_stats.backlog,
            "last_error": sink_stats.last_error,
        }
        report["ok"] = (
            all(report[key] == value for key, value in EXPECTED_CHILD.items())
            and report["prefix"] != parent_prefix
        )
        return report

    code, report = run_in_child(child)

    assert {key: report.get(key) for key in EXPECTED_CHILD} == EXPECTED_CHILD, report
    assert report["ok"] is True, report
    assert code == 0
    child_prefix = report["prefix"]
    assert child_prefix != parent_prefix
    assert len(child_prefix) == len(parent_prefix) == 16
    # The parent still holds exactly what it buffered and writes it now.
    assert len(aegis.recorder.inbox) == N_BUFFERED
    assert aegis.force_flush(timeout=10) is True
    rows = stored_ids(db)
    assert len(rows) == N + M
    assert len({request_id for request_id, _ in rows}) == N + M
    parent_rows = [(i, p) for i, p in rows if i.startswith(parent_prefix)]
    child_rows = [(i, p) for i, p in rows if i.startswith(child_prefix)]
    assert sorted(p for _, p in parent_rows) == sorted(
        [f"/parent/flushed/{n}" for n in range(N_FLUSHED)]
        + [f"/parent/buffered/{n}" for n in range(N_BUFFERED)]
    )
    assert sorted(p for _, p in child_rows) == [f"/child/{n}" for n in range(M)]
    [sink_stats] = aegis.stats().sinks
    assert (sink_stats.written, sink_stats.errors, sink_stats.backlog) == (N, 0, 0)


def test_child_pipeline_counters_start_at_zero(make_aegis: Callable[..., Aegis]) -> None:
    """A child's stats describe only the child: nothing offered, written or dropped yet."""
    aegis = make_aegis(sink="memory://", flush_interval=3600, max_buffer=10)
    offer(aegis, "/before", 2)
    assert aegis.force_flush(timeout=10) is True  # 2 written
    aegis.recorder.closed = True
    offer(aegis, "/refused", 2)  # 2 dropped
    aegis.recorder.closed = False
    offer(aegis, "/buffered", 3)  # 3 waiting: below the wake-up mark, flusher asleep
    assert aegis.stats().dropped["shutdown"] == 2

    def child() -> dict[str, Any]:
        stats = aegis.stats()
        [sink_stats] = stats.sinks
        report = {
            "offered": stats.offered,
            "buffered": stats.buffered,
            "dropped": sum(stats.dropped.values()),
            "written": sink_stats.written,
            "errors": sink_stats.errors,
            "backlog": sink_stats.backlog,
        }
        report["ok"] = all(value == 0 for value in report.values())
        return report

    code, report = run_in_child(child)

    assert report == {
        "offered": 0,
        "buffered": 0,
        "dropped": 0,
        "written": 0,
        "errors": 0,
        "backlog": 0,
        "ok": True,
    }
    assert code == 0
    # The parent's own counts are untouched by the fork.
    stats = aegis.stats()
    # Every record offered is written, buffered or counted as dropped: 2 + 3 + 2.
    assert (stats.offered, stats.buffered, stats.dropped["shutdown"]) == (7, 3, 2)
    assert stats.sinks[0].written == 2


def test_a_childs_own_metrics_start_at_zero_and_the_parents_stay(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(sink="memory://", flush_interval=3600)
    orders = aegis.counter("orders_total", "Orders.", ("region",))
    jobs = aegis.gauge("jobs", "Jobs.")
    seconds = aegis.histogram("job_seconds", "Jobs.")
    orders.labels("eu").inc(3)
    jobs.set(4)
    seconds.observe(0.2)

    def child() -> dict[str, Any]:
        before = {metric.name: metric.series for metric in aegis.custom_metrics.read()}
        orders.labels("eu").inc()  # the same objects record the child's own
        after = [metric.series for metric in aegis.custom_metrics.read() if metric.name == "orders"]
        report = {
            "orders": before["orders"][("eu",)],
            "jobs": before["jobs"][()],
            "job_seconds": sum(before["job_seconds"][()][:-1]),
            "orders_after": after[0][("eu",)],
        }
        report["ok"] = report == {"orders": 0, "jobs": 0, "job_seconds": 0, "orders_after": 1}
        return report

    code, report = run_in_child(child)
    assert report == {"orders": 0, "jobs": 0, "job_seconds": 0, "orders_after": 1, "ok": True}
    assert code == 0
    figures = {metric.name: metric.series for metric in aegis.custom_metrics.read()}
    assert figures["orders"] == {("eu",): 3}
    assert figures["jobs"] == {(): 4}


ALERT_RULES = [{"name": "errors", "input": "error_ratio", "operator": ">", "threshold": 0.5}]


def _alert_threads() -> int:
    return sum(thread.name == "aegis-alerts" for thread in threading.enumerate())


def test_a_child_evaluates_alerts_as_a_process_of_its_own(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    aegis = make_aegis(sink=f"sqlite:///{tmp_path / 'a.db'}", alert_rules=ALERT_RULES)
    assert aegis.alerts is not None
    parent = aegis.alerts.holder

    def child() -> dict[str, Any]:
        assert aegis.alerts is not None
        report: dict[str, Any] = {
            "threads": _alert_threads(), "own_holder": aegis.alerts.holder != parent
        }  # fmt: skip
        report["ok"] = report == {"threads": 1, "own_holder": True}
        return report

    code, report = run_in_child(child)
    assert (code, report) == (0, {"threads": 1, "own_holder": True, "ok": True})


def test_a_child_forked_after_shutdown_evaluates_nothing(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(sink="memory://", alert_rules=ALERT_RULES)
    assert aegis.shutdown(10)

    def child() -> dict[str, Any]:
        threads = _alert_threads()
        return {"threads": threads, "ok": threads == 0}

    code, report = run_in_child(child)
    assert (code, report) == (0, {"threads": 0, "ok": True})


def test_a_child_starts_with_no_retention_lease_or_counts_of_its_own(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The parent pruned and holds the lease: the child neither reports the
    parent's lease nor counts its deleted rows again (/metrics adds up workers)."""
    aegis = make_aegis(sink=f"sqlite:///{tmp_path / 'aegis.db'}", flush_interval=3600)
    offer(aegis, "/before", 2)
    assert aegis.force_flush(timeout=10) is True  # its first cycle prunes (nothing expired)
    [parent] = aegis.stats().sinks
    assert parent.prune_lease == 1
    retention = aegis.flusher.cycle.retention
    assert retention is not None
    retention.deleted_by_sink[parent.name] = 5  # as if it had deleted rows
    retention.failures_by_sink[parent.name] = 1

    def child() -> dict[str, Any]:
        [sink] = aegis.stats().sinks
        report: dict[str, Any] = {
            "lease": sink.prune_lease,
            "pruned": sink.pruned,
            "failures": sink.prune_failures,
        }
        report["ok"] = report == {"lease": 0, "pruned": 0, "failures": 0}
        return report

    code, report = run_in_child(child)
    assert report == {"lease": 0, "pruned": 0, "failures": 0, "ok": True}
    assert code == 0
    [after] = aegis.stats().sinks
    assert (after.prune_lease, after.pruned, after.prune_failures) == (1, 5, 1)


def test_a_child_spools_through_a_connection_of_its_own_from_zero(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The store unreachable (nothing listens on port 1): the parent spooled;
    the child counts only what it spools itself, into the same file, through
    a connection it opened (sharing the parent's would corrupt the file)."""
    aegis = make_aegis(
        sink="postgresql://nobody@127.0.0.1:1/none", spool_dir=str(tmp_path),
        flush_interval=3600, retry_backoff_max=3600,
    )  # fmt: skip
    offer(aegis, "/parent", 3)
    assert aegis.force_flush(timeout=10) is True  # spooled counts as kept
    [parent] = aegis.stats().sinks
    assert (parent.spooled, parent.spool_records) == (3, 3)
    spool = aegis.flusher.runners[0].spool
    assert spool is not None
    connection = spool.store._connection  # type: ignore[attr-defined]

    def child() -> dict[str, Any]:
        before = aegis.stats().sinks[0].spooled
        offer(aegis, "/child", 2)
        flushed = aegis.force_flush(timeout=10)
        [sink] = aegis.stats().sinks
        report = {
            "before": before, "flushed": flushed, "spooled": sink.spooled,
            "records": sink.spool_records,
            "own_connection": spool.store._connection is not connection,  # type: ignore[attr-defined]
        }  # fmt: skip
        expected = {"before": 0, "flushed": True, "spooled": 2, "records": 5,
                    "own_connection": True}  # fmt: skip
        report["ok"] = report == expected
        return report

    code, report = run_in_child(child)
    assert report["ok"], report
    assert code == 0
    [after] = aegis.stats().sinks
    assert after.spooled == 3
    assert spool.store.view().records == 5  # both processes' records, in one file

"""Two hosts of one app (two gunicorn masters, 4 uvicorn workers each) over one
PostgreSQL database, and the hardest delivery: the process sending the firing
notice, and the evaluator, are killed (SIGKILL) while the receiver holds that
send open. Another process takes the lease over (the fencing token rises),
the firing is sent again under the same ``webhook-id``, its resolve follows,
never before it, and nothing else is sent; gunicorn replaces the dead workers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.servers import (
    EXIT_TIMEOUT,
    child_environment,
    gunicorn_command,
    gunicorn_process,
    wait_for,
)

# Normally about 35 s; the timeout is above the sum of the deadlines, so a
# deadline's failure, with what it waited for, comes first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

APP = "tests.alerts.fleet_app:app"
WORKERS = 4
RULE = "fleet_errors"
CHANNEL = "receiver"
SECRET = b"fleet-test-secret-0123456789abcdef"
#: The channel's timeout: the whole of a send, so the kill must come sooner.
SEND_TIMEOUT = 2.0
#: Requests over both hosts, half of them 500s (an error ratio of 0.5).
REQUESTS = 40

STARTUP_DEADLINE = 60.0
#: A killed worker's replacement boots (it has done so long before the
#: delivery deadline ends).
REPLACE_DEADLINE = 30.0
#: From the last request to the first notice: the window's buckets settle
#: (10 s plus the flush interval, rounded up to the next 5 s bucket), plus
#: an interval or two of evaluation.
FIRING_DEADLINE = 40.0
#: The killed evaluator's lease lasts 1.5 alert intervals, then a tick.
TAKEOVER_DEADLINE = 20.0
#: The killed send's row is held for 2 * timeout + 10 s from its start; then
#: another sender sends it again, and its resolve after it.
DELIVERY_DEADLINE = 45.0
#: The longest the receiver holds the first send open if the test never
#: releases it (a failure before the release).
HANG_LIMIT = 60.0
POLL = 0.1

T = TypeVar("T")


@pytest.fixture
def gunicorn_available() -> None:
    """gunicorn and its uvicorn worker: a skip without them, a failure in CI
    (first of the test's fixtures: nothing is set up without them)."""
    for module in ("gunicorn.arbiter", "uvicorn_worker"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            message = f"{module} is not importable (pip install -e '.[dev]'): {exc}"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)


def poll(what: str, deadline: float, check: Callable[[], T | None], state: Callable[[], Any]) -> T:
    """``check()``'s first truthy answer, looked for every POLL seconds until
    ``deadline``; then a failure naming ``what``, with ``state()``."""
    pause = threading.Event()
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: {state()}")
        pause.wait(POLL)


# -- the receiver ---------------------------------------------------------------
@dataclass
class Received:
    """One request the receiver got."""

    seq: int
    at: float
    webhook_id: str
    signed: bool
    body: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.body.get("status"))


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request, checks its
    Standard Webhooks signature, and holds the very first one open until
    :attr:`release` is set (so its sender is mid-send), then answers 200."""

    def __init__(self) -> None:
        self.records: list[Received] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if receiver.record(self.headers, body) == 0:
                    receiver.arrived.set()
                    # The first send hangs here; its sender is killed meanwhile.
                    receiver.release.wait(HANG_LIMIT)
                try:
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the sender died: nobody reads this answer
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": POLL}, daemon=True
        )
        self._thread.start()

    def record(self, headers: Any, body: bytes) -> int:
        webhook_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signed_text = f"{webhook_id}.{stamp}.".encode() + body
        digest = hmac.new(SECRET, signed_text, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        signatures = headers.get("webhook-signature", "").split()
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300
        signed = fresh and any(hmac.compare_digest(expected, s) for s in signatures)
        with self._lock:
            seq = next(self._seq)
            self.records.append(
                Received(seq, time.monotonic(), webhook_id, signed, json.loads(body))
            )
        return seq

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.records)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(EXIT_TIMEOUT)


# -- the hosts -----------------------------------------------------------------
@dataclass
class Host:
    """One gunicorn master and what it printed."""

    name: str
    process: subprocess.Popen[str]
    lines: queue.Queue[str | None]
    seen: list[str]
    base: str = ""
    workers: list[int] = field(default_factory=list)

    def booted(self, count: int, deadline: float) -> list[int]:
        matches = wait_for(
            self.lines, self.seen, r"Booting worker with pid: (\d+)", count, deadline
        )
        return [int(match.group(1)) for match in matches]


def settings_file(tmp_path: Path, sink: str, receiver: str) -> Path:
    """Every worker's settings: the shared database, one rule, one channel."""
    text = "\n".join(
        [
            "[aegis]",
            f"sink = {json.dumps(sink)}",
            "flush_interval = 0.2",
            "alert_interval = 1",
            "",
            "[[aegis.alert_rules]]",
            f"name = {json.dumps(RULE)}",
            'input = "error_ratio"',
            'operator = ">"',
            "threshold = 0.2",
            'window = "10s"',
            'for = "0s"',
            "min_requests = 4",
            # Once the traffic stops the window has no data: that resolves it.
            'no_data = "ok"',
            'severity = "critical"',
            'annotations = { summary = "$value_percent of requests fail" }',
            "",
            f"[aegis.alert_channels.{CHANNEL}]",
            'type = "webhook"',
            f"url = {json.dumps(receiver)}",
            f"secret = {json.dumps('whsec_' + base64.b64encode(SECRET).decode())}",
            "allow_private = true",
            f"timeout = {SEND_TIMEOUT}",
            *alone(),
            "",
        ]
    )
    path = tmp_path / "aegis.toml"
    path.write_text(text, encoding="utf-8")
    return path


def alone() -> list[str]:
    """Every alert alone: each notification one notice under its own
    ``webhook-id``, due at once (Alertmanager's timers would hold the resolve
    ``group_interval``)."""
    from aegis_mw.alerts.grouping import EVERY_ALERT

    return [f"group_by = [{json.dumps(EVERY_ALERT)}]"]


def holder_pid(holder: str) -> int:
    """The pid in a holder id (``hostname:pid:random``) or a claim
    (``hostname:pid:random:random``)."""
    return int(holder.split(":")[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.mark.usefixtures("gunicorn_available")
def test_evaluator_killed_mid_send(tmp_path: Path, receiver: Receiver, postgres_url: str) -> None:
    hosts: list[Host] = []
    try:
        killed = evaluator_killed_mid_send(tmp_path, receiver, postgres_url, hosts)
        # All they printed (gunicorn_process read the rest on the way out).
        output = "\n".join(line for host in hosts for line in host.seen)
        assert "Traceback" not in output
        for pid in killed:
            assert f"Worker (pid:{pid}) was sent SIGKILL!" in output
        # No evaluator after the one that fired it logged it again.
        assert len(re.findall(rf"alert {RULE} firing", output)) <= 1
    except BaseException:
        for host in hosts:
            print(f"--- gunicorn {host.name}", *host.seen, sep="\n")
        raise


def evaluator_killed_mid_send(
    tmp_path: Path, receiver: Receiver, postgres_url: str, hosts: list[Host]
) -> set[int]:
    """The scenario, on ``hosts`` as they start; the pids it killed."""
    import psycopg

    config = settings_file(tmp_path, postgres_url, receiver.url)
    with (
        ExitStack() as stack,
        psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as db,
    ):

        def rows(sql: str, *params: Any) -> list[tuple[Any, ...]]:
            return db.execute(sql, params).fetchall()

        # Both hosts' eight workers open the database together (its schema
        # is made by whichever migrates first, under the sink's lock).
        for name in ("host-a", "host-b"):
            workdir = tmp_path / name
            workdir.mkdir()
            env = child_environment(AEGIS_CONFIG=str(config), PYTHONUNBUFFERED="1")
            started = gunicorn_process(gunicorn_command(WORKERS, APP), workdir, env)
            hosts.append(Host(name, *stack.enter_context(started)))
        stack.callback(stop_masters, hosts)

        deadline = time.monotonic() + STARTUP_DEADLINE
        for host in hosts:
            [listening] = wait_for(
                host.lines, host.seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline
            )
            host.base = f"http://127.0.0.1:{int(listening.group(1))}"
            host.workers = host.booted(WORKERS, deadline)
            wait_for(host.lines, host.seen, r"Application startup complete", WORKERS, deadline)
        assert hosts[0].base != hosts[1].base
        workers = {pid: host for host in hosts for pid in host.workers}
        assert len(workers) == 2 * WORKERS

        # -- the breach: a fixed number of requests over both hosts, then none.
        served_by: set[int] = set()
        for number in range(REQUESTS):
            host = hosts[number % 2]
            path = "/fail" if number % 4 < 2 else f"/ok/{number}"
            answer = httpx.get(host.base + path, headers={"connection": "close"}, timeout=10)
            assert answer.status_code == (500 if path == "/fail" else 200)
            served_by.add(int(answer.text))
        assert served_by <= set(workers)
        assert {workers[pid].name for pid in served_by} == {"host-a", "host-b"}

        # -- the first notice arrives and is held open by the receiver.
        if not receiver.arrived.wait(FIRING_DEADLINE):
            pytest.fail(f"no notice within {FIRING_DEADLINE} s: {rows_of(db)}")
        [first] = receiver.snapshot()[:1]
        assert first.status == "firing", first
        killed_id = first.webhook_id
        # Who sends it (its claim), and who evaluates (the lease): they may differ.
        [(claimed_by, state)] = rows(
            "SELECT claimed_by, state FROM aegis_alert_outbox WHERE notice_key = %s", killed_id
        )
        [(evaluator, token_before)] = rows(
            "SELECT holder, token FROM aegis_alert_lease WHERE name = 'evaluator'"
        )
        assert state == "pending" and claimed_by, (claimed_by, state)
        sender_pid, evaluator_pid = holder_pid(claimed_by), holder_pid(evaluator)
        # Only processes this test started are killed: workers of its two masters.
        assert sender_pid in workers and evaluator_pid in workers, (claimed_by, evaluator)
        killed = {sender_pid, evaluator_pid}
        for pid in sorted(killed):
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        receiver.release.set()  # its answer goes to a dead connection

        # -- a new evaluator takes over, with a higher fencing token.
        def taken_over() -> tuple[str, int] | None:
            [(holder, token)] = rows(
                "SELECT holder, token FROM aegis_alert_lease WHERE name = 'evaluator'"
            )
            if holder and holder_pid(holder) not in killed and token > token_before:
                return holder, int(token)
            return None

        new_holder, token_after = poll(
            "another evaluator to take the lease",
            time.monotonic() + TAKEOVER_DEADLINE,
            taken_over,
            lambda: rows_of(db),
        )
        assert token_after > token_before

        # -- the firing goes again, and its resolve after it: both delivered.
        def all_delivered() -> list[tuple[Any, ...]] | None:
            outbox = rows(
                "SELECT id, notice_key, state, attempts, payload FROM aegis_alert_outbox "
                "ORDER BY id"
            )
            done = len(outbox) == 2 and all(row[2] == "delivered" for row in outbox)
            return outbox if done else None

        outbox = poll(
            "the firing and its resolve delivered",
            time.monotonic() + DELIVERY_DEADLINE,
            all_delivered,
            lambda: rows_of(db),
        )

        # -- the masters replace the killed workers.
        replace_deadline = time.monotonic() + REPLACE_DEADLINE
        for host in hosts:
            gone = killed & set(host.workers)
            booted = host.booted(WORKERS + len(gone), replace_deadline)
            assert not gone & set(booted[WORKERS:]), booted
            assert host.process.poll() is None
        stop_masters(hosts)
        for host in hosts:
            assert host.process.returncode == 0, "\n".join(host.seen)

        # -- what the store holds.
        [(firing_row, firing_id, _, firing_tries, firing_payload), resolve_row] = outbox
        resolve_id, resolve_tries = resolve_row[1], resolve_row[3]
        assert firing_id == killed_id
        assert json.loads(firing_payload)["status"] == "firing"
        assert json.loads(resolve_row[4])["status"] == "resolved"
        notified = rows(
            "SELECT rule, kind, to_state FROM aegis_alert_transitions WHERE notify ORDER BY id"
        )
        # Evaluated once per transition: the new evaluator did not fire again.
        assert notified == [(RULE, "firing", "firing"), (RULE, "resolved", "resolved")]
        attempts = rows(
            "SELECT notice_id, channel, outcome, error, seconds, sender "
            "FROM aegis_alert_attempts ORDER BY id"
        )
        # The killed send left no attempt; each notice then went once, by a living sender.
        assert [(a[0], a[1], a[2], a[3]) for a in attempts] == [
            (firing_row, CHANNEL, "delivered", ""),
            (resolve_row[0], CHANNEL, "delivered", ""),
        ], attempts
        assert all(holder_pid(a[5]) not in killed and a[4] >= 0 for a in attempts), attempts
        assert (firing_tries, resolve_tries) == (1, 1)
        firing_attempts = sum(1 for a in attempts if a[0] == firing_row)

    # -- what the receiver got.
    got = receiver.snapshot()
    assert all(r.signed for r in got), [(r.webhook_id, r.signed) for r in got]
    assert {r.webhook_id for r in got} == {killed_id, resolve_id}
    firings = [r for r in got if r.status == "firing"]
    resolves = [r for r in got if r.status == "resolved"]
    assert len(firings) + len(resolves) == len(got)
    # Every repeat carries the killed send's id; the resolve went once.
    assert {r.webhook_id for r in firings} == {killed_id}
    assert [r.webhook_id for r in resolves] == [resolve_id]
    assert firings[0] is got[0] and len(firings) >= 2
    # Every send of it after the kill is an attempt in the store.
    assert len([r for r in firings if r.at > killed_at]) == firing_attempts
    [resolve] = resolves
    assert resolve.seq > max(r.seq for r in firings)
    assert all(r.body == firings[0].body for r in firings)
    for notice, kind in ((firings[0], "firing"), (resolve, "resolved")):
        assert notice.body["receiver"] == CHANNEL
        assert notice.body["groupLabels"] == {"alertname": RULE}
        assert notice.body["aegis"]["kind"] == kind
    assert firings[0].body["aegis"]["episode"] == resolve.body["aegis"]["episode"] != ""
    assert new_holder != evaluator
    return killed


def rows_of(db: Any) -> dict[str, Any]:
    """The alert tables, for a failure's message."""
    return {
        table: db.execute(f"SELECT * FROM {table}").fetchall()
        for table in ("aegis_alert_lease", "aegis_alert_instances", "aegis_alert_attempts")
    } | {
        "outbox": db.execute(
            "SELECT id, notice_key, state, attempts, claimed_by, claimed_until, last_error "
            "FROM aegis_alert_outbox ORDER BY id"
        ).fetchall()
    }


def stop_masters(hosts: list[Host]) -> None:
    """SIGTERM every master still running, then wait for each (bounded); one
    that outlasts the wait is killed by gunicorn_process on the way out."""
    for host in hosts:
        if host.process.poll() is None:
            host.process.send_signal(signal.SIGTERM)
    for host in hosts:
        try:
            host.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

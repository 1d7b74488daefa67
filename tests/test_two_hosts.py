"""Two "hosts" of one app: two gunicorn process groups on their own ports,
each with its own metrics directory (as two machines have), sharing the
real PostgreSQL store and a live transport (a Redis server of the test's
own, or the PostgreSQL database itself). Either host's live views show the
whole app; the merged p95 matches the stored records'; a restart of Redis
is recovered from by itself; a host killed outright leaves the live sums
(its in-flight requests) within seconds while its requests still count.

Real processes on 127.0.0.1: gunicorn with uvicorn workers (one host's app
preloaded, so its workers are forked from a process that had the link
running), httpx with a new connection per request, a websockets client.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import servers
from tests.harness import OPEN_MONITORING_ENV
from tests.private_redis import PrivateRedis
from tests.servers import ROOT, gunicorn_command, gunicorn_process, wait_for
from tests.test_gunicorn_live import APP, CLIENT_TIMEOUT, plan, stream_overview
from tests.test_gunicorn_live import send as send_plan

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]

WORKERS = 2
#: The traffic: a bounded count, half to each host, within about 10 seconds.
REQUESTS = 1200
MORE = 200
STARTUP_DEADLINE = 60.0
SETTLE_DEADLINE = 60.0
#: Within how long a killed host's in-flight requests must leave the sums:
#: a few missed frames (DEAD_AFTER) and a frame.
GONE_SECONDS = 15.0


def realtime(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/api/metrics/realtime", headers={"connection": "close"},
                         timeout=CLIENT_TIMEOUT)  # fmt: skip
    assert response.status_code == 200, response.text
    return dict(response.json()["data"])


def settled(bases: list[str], check: Any, in_a_row: int = 8) -> list[dict[str, Any]]:
    """Ask the hosts in turn until ``in_a_row`` consecutive answers pass."""
    turn = iter(range(1 << 30))
    try:
        return servers.settled(
            lambda: realtime(bases[next(turn) % len(bases)]), check, in_a_row, SETTLE_DEADLINE
        )
    except pytest.fail.Exception as failed:
        pytest.fail(f"{failed}\nthe live transport as each host saw it: {transport_state(bases)}")


def transport_state(bases: list[str]) -> list[Any]:
    """Each host's ``live_transport`` check, from /health/ready's details."""
    states = []
    for base in bases:
        try:
            answer = httpx.get(f"{base}/health/ready", timeout=CLIENT_TIMEOUT).json()
            states.append(answer.get("checks", answer))
        except (httpx.HTTPError, ValueError) as exc:
            states.append(repr(exc))
    return states


@contextlib.contextmanager
def host(name: str, tmp_path: Path, env: dict[str, str], *extra: str) -> Iterator[Any]:
    """One host: gunicorn and its workers, its own metrics directory."""
    root = tmp_path / name
    (root / "multiproc").mkdir(parents=True)
    (root / "live_app.py").write_text(APP)
    own = dict(
        env,
        PROMETHEUS_MULTIPROC_DIR=str(root / "multiproc"),
        HELD=str(root / "held"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), str(ROOT), env.get("PYTHONPATH")])),
    )
    command = gunicorn_command(WORKERS, "live_app:app", *extra)
    with gunicorn_process(command, root, own) as (process, lines, seen):
        deadline = time.monotonic() + STARTUP_DEADLINE
        [listening] = wait_for(lines, seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline)
        wait_for(lines, seen, r"Application startup complete", WORKERS, deadline)
        yield process, f"http://127.0.0.1:{int(listening.group(1))}", root / "held", seen


def send(bases: list[str], sent: list[tuple[str, str, int]]) -> None:
    """Half the plan to each host, from a few client threads."""
    send_plan(lambda number: bases[number % 2], sent)


def stored_p95(url: str) -> float:
    """The p95 of the stored records, once every one is stored."""
    import psycopg

    def durations() -> list[float]:
        with psycopg.connect(url) as connection:
            rows = connection.execute("SELECT duration_ms FROM aegis_requests").fetchall()
        return sorted(float(row[0]) for row in rows)

    [stored] = servers.settled(durations, lambda found: len(found) == REQUESTS, 1, SETTLE_DEADLINE)
    return stored[max(1, math.ceil(0.95 * len(stored))) - 1]


@pytest.mark.parametrize("transport", ["redis", "postgresql"])
def test_two_hosts_show_one_app(transport: str, tmp_path: Path, postgres_url: str) -> None:
    redis = PrivateRedis() if transport == "redis" else None
    if redis is not None:
        redis.start()
    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env.update(
        OPEN_MONITORING_ENV,
        AEGIS_FLUSH_INTERVAL="0.2",
        AEGIS_SINK=postgres_url,
        AEGIS_LIVE_TRANSPORT=redis.url if redis is not None else "sink",
        AEGIS_LIVE_GROUP="two-hosts",
        PYTHONUNBUFFERED="1",
    )
    try:
        with (
            host("a", tmp_path, env, "--preload") as (first, a, _, seen_a),
            host("b", tmp_path, env) as (second, b, held_b, seen_b),
        ):
            bases = [a, b]
            sent = plan("/items/{n}", "/status/{code}")
            started = time.monotonic()
            send(bases, sent)
            assert time.monotonic() - started < 50  # all inside the live view's minute

            statuses = Counter(f"{code // 100}xx" for _, _, code in sent)
            routes = Counter(route for _, route, _ in sent)
            answers = settled(bases, lambda answer: answer["total_requests"] == REQUESTS)
            for answer in answers:  # whichever host and worker answered
                assert answer["window_requests"] == REQUESTS
                assert answer["window_errors"] == statuses["5xx"]
                assert {k: v for k, v in answer["status_totals"].items() if v} == dict(statuses)
                top = {row["route"]: row["requests"] for row in answer["top_endpoints"]}
                assert top == dict(routes)
            # Percentiles from the merged counts of four processes on two hosts.
            truth = stored_p95(postgres_url)
            p95 = answers[-1]["latency_p95_ms"]
            assert abs(p95 - truth) <= 0.02 * truth, (p95, truth)
            port = b.rsplit(":", 1)[1]
            overview = stream_overview(f"ws://127.0.0.1:{port}/ws/metrics")
            assert overview["window_requests"] == REQUESTS

            total = REQUESTS
            if redis is not None:
                # Redis restarts (everything it held lost) while traffic goes on.
                redis.stop()
                more = plan("/items/{n}", "/status/{code}")[:MORE]
                send(bases, more)
                redis.start()
                total += MORE
                settled(bases, lambda answer: answer["total_requests"] == total)

            # A request held on host b counts as in flight on host a too...
            def hold() -> None:
                with contextlib.suppress(httpx.HTTPError):  # its host is killed under it
                    httpx.get(f"{b}/slow", timeout=STARTUP_DEADLINE)

            holder = threading.Thread(target=hold, daemon=True)
            holder.start()
            servers.settled(lambda: realtime(a), lambda answer: answer["in_flight"] == 1,
                            6, SETTLE_DEADLINE)  # fmt: skip
            # ...until host b is gone at once, master and workers.
            os.killpg(second.pid, signal.SIGKILL)
            killed = time.monotonic()
            held_b.unlink(missing_ok=True)
            holder.join(STARTUP_DEADLINE)
            servers.settled(
                lambda: realtime(a),
                lambda answer: answer["in_flight"] == 0 and answer["total_requests"] == total,
                6, SETTLE_DEADLINE,
            )  # fmt: skip
            assert time.monotonic() - killed < GONE_SECONDS
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=60) == 0
        output = "\n".join(seen_a + seen_b)
        assert "Traceback" not in output, output
    finally:
        if redis is not None:
            redis.stop()

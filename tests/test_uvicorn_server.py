"""The examples served by a real uvicorn process: every request and session lands in SQLite once.

Each scenario binds a listening socket on 127.0.0.1 itself and hands it to uvicorn with
``--fd`` (no port race), waits for uvicorn's "running" line on stderr, sends real traffic
with httpx and the ``websockets`` client, stops the server with SIGTERM and then reads the
``aegis.db`` file the example wrote into its working directory.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from websockets.sync.client import connect

from tests.servers import STARTUP_TIMEOUT, child_environment, uvicorn_server

UNMATCHED = "<unmatched>"
CLIENT_TIMEOUT = 10.0
# Wall timestamps are anchored on the monotonic clock; they must still land near the
# moment the test sent the request (a sanity bound on the anchor, not a speed check).
WALL_SLACK = 5.0

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- traffic


class Planned(NamedTuple):
    """One request to send and what the record must say about it."""

    method: str
    path: str
    route: str
    status: int
    body: bytes = b""


class Exchange(NamedTuple):
    """What the client actually saw for a planned request."""

    planned: Planned
    status: int
    received: int  # response body bytes that reached the client
    chunked: bool


def send_all(base_url: str, plan: Sequence[Planned]) -> list[Exchange]:
    """Send the plan in order on keep-alive connections: one, and a new one after
    each 5xx (uvicorn closes a connection whose app raised, and a request already
    on its way on it would be reset)."""
    exchanges = []
    client = httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT)
    try:
        for planned in plan:
            headers = {"content-type": "application/json"} if planned.body else {}
            response = client.request(
                planned.method, planned.path, content=planned.body or None, headers=headers
            )
            exchanges.append(
                Exchange(
                    planned,
                    response.status_code,
                    len(response.content),
                    response.headers.get("transfer-encoding") == "chunked",
                )
            )
            if response.status_code >= 500:
                client.close()
                client = httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT)
    finally:
        client.close()
    return exchanges


def echo_over_websocket(url: str, messages: Sequence[str]) -> list[str]:
    """Send each message, collect each echo, close with code 1000."""
    replies = []
    with connect(url, open_timeout=CLIENT_TIMEOUT, close_timeout=CLIENT_TIMEOUT) as websocket:
        for message in messages:
            websocket.send(message)
            replies.append(str(websocket.recv(timeout=CLIENT_TIMEOUT)))
        websocket.close(code=1000)
    return replies


# --------------------------------------------------------------------------- the database


class StoredRequest(NamedTuple):
    request_id: str
    timestamp: float
    method: str
    route: str
    path: str
    status: int
    duration_ms: float
    ttfb_ms: float | None
    request_bytes: int
    response_bytes: int
    client_ip: str | None
    error: str


class StoredSession(NamedTuple):
    session_id: str
    timestamp: float
    route: str
    path: str
    duration_ms: float
    messages_in: int
    messages_out: int
    close_code: int | None
    accepted: int
    client_ip: str | None
    error: str


def _query(db: Path, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows of ``table`` by start time; none when the file or the table does not exist."""
    if not db.exists():
        return []
    connection = sqlite3.connect(db)
    try:
        found = connection.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()[0]
        if not found:
            return []
        return connection.execute(
            f"SELECT {', '.join(columns)} FROM {table} ORDER BY timestamp"
        ).fetchall()
    finally:
        connection.close()


def stored_requests(db: Path) -> list[StoredRequest]:
    return [StoredRequest(*row) for row in _query(db, "aegis_requests", StoredRequest._fields)]


def stored_sessions(db: Path) -> list[StoredSession]:
    rows = _query(db, "aegis_websocket_sessions", StoredSession._fields)
    return [StoredSession(*row) for row in rows]


# --------------------------------------------------------------------------- FastAPI example


ITEM = "/items/{item_id}"
POST_BODY = json.dumps({"name": "a widget", "colour": "blue", "notes": "x" * 300}).encode()
FASTAPI_PLAN = (
    Planned("GET", "/items/1", ITEM, 200),
    Planned("GET", "/items/2", ITEM, 200),
    Planned("GET", "/items/3", ITEM, 200),
    Planned("GET", "/items/42", ITEM, 200),
    Planned("POST", "/items/", "/items/", 201, POST_BODY),
    Planned("GET", "/stream", "/stream", 200),
    Planned("GET", "/fail", "/fail", 500),
    Planned("GET", "/items/not-a-number", ITEM, 422),
    Planned("GET", "/no/such/page", UNMATCHED, 404),
    Planned("DELETE", "/nothing/here", UNMATCHED, 404),
    Planned("GET", "/items/1", ITEM, 200),
    Planned("HEAD", "/items/1", ITEM, 405),  # FastAPI routes answer GET only
    Planned("HEAD", "/no/such/page", UNMATCHED, 404),
)
WS_MESSAGES = tuple(f"message {number}" for number in range(7))


@dataclass
class Run:
    """One complete scenario: traffic sent, server stopped, database read."""

    exchanges: list[Exchange]
    replies: list[str]
    stored_before_stop: int
    returncode: int
    log: str
    requests: list[StoredRequest]
    sessions: list[StoredSession]
    sent_from: float
    sent_until: float


def run_fastapi_scenario(
    workdir: Path, *uvicorn_args: str, stop: signal.Signals = signal.SIGTERM
) -> Run:
    """Serve the FastAPI example, send the plan and the WebSocket exchange, signal, read."""
    # Nothing is written before shutdown: every stored row proves the shutdown path flushed.
    env = child_environment(AEGIS_FLUSH_INTERVAL="3600")
    db = workdir / "aegis.db"
    with uvicorn_server("examples.fastapi_app:app", workdir, *uvicorn_args, env=env) as server:
        sent_from = time.time()
        exchanges = send_all(server.url, FASTAPI_PLAN)
        replies = echo_over_websocket(f"ws://127.0.0.1:{server.port}/ws/echo", WS_MESSAGES)
        sent_until = time.time()
        stored_before_stop = len(stored_requests(db)) + len(stored_sessions(db))
        returncode = server.terminate(stop)
        log = server.log.text
    return Run(
        exchanges,
        replies,
        stored_before_stop,
        returncode,
        log,
        stored_requests(db),
        stored_sessions(db),
        sent_from,
        sent_until,
    )


@pytest.fixture(scope="module")
def fastapi_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The FastAPI example under uvicorn with lifespan on, run once for the tests below."""
    return run_fastapi_scenario(tmp_path_factory.mktemp("fastapi"), "--lifespan", "on")


def summary(rows: Sequence[StoredRequest]) -> list[tuple[str, str, str, int]]:
    return [(row.method, row.route, row.path, row.status) for row in rows]


def expected_summary(plan: Sequence[Planned]) -> list[tuple[str, str, str, int]]:
    return [(p.method, p.route, p.path, p.status) for p in plan]


def test_client_saw_the_planned_responses(fastapi_run: Run) -> None:
    """The example answered as the plan assumes (guards the expectations below)."""
    assert [e.status for e in fastapi_run.exchanges] == [p.status for p in FASTAPI_PLAN]
    stream = next(e for e in fastapi_run.exchanges if e.planned.path == "/stream")
    assert stream.chunked
    assert stream.received == len(b"0\n1\n2\n")
    assert fastapi_run.replies == list(WS_MESSAGES)


def test_sigterm_shuts_down_gracefully_and_flushes_through_lifespan(fastapi_run: Run) -> None:
    """Nothing was written before SIGTERM; uvicorn ran the lifespan shutdown and exited cleanly."""
    assert fastapi_run.stored_before_stop == 0
    # uvicorn re-raises the signal it handled after a graceful shutdown (older ones exit 0).
    assert fastapi_run.returncode in (0, -signal.SIGTERM), fastapi_run.log
    assert "Application shutdown complete." in fastapi_run.log
    assert "Finished server process" in fastapi_run.log


def test_every_request_is_stored_exactly_once_with_route_method_and_status(
    fastapi_run: Run,
) -> None:
    """One row per request sent, in order, with templates, <unmatched>, methods and statuses."""
    rows = fastapi_run.requests
    assert summary(rows) == expected_summary(FASTAPI_PLAN)
    assert len({row.request_id for row in rows}) == len(FASTAPI_PLAN)


def test_failing_route_is_stored_as_500_with_the_exception(fastapi_run: Run) -> None:
    """/fail is a 500 naming the exception; no other request carries an error."""
    errors = {row.path: row.error for row in fastapi_run.requests if row.error}
    assert errors == {"/fail": "RuntimeError: example failure"}
    (failed,) = [row for row in fastapi_run.requests if row.path == "/fail"]
    assert failed.status == 500
    # The 500 page is written by Starlette's ServerErrorMiddleware, which wraps every user
    # middleware: AegisMiddleware saw no response start and no body bytes.
    assert failed.ttfb_ms is None
    assert failed.response_bytes == 0


def test_byte_counts_match_what_went_over_the_wire(fastapi_run: Run) -> None:
    """request_bytes is the POST body length; response_bytes what the client received."""
    rows = fastapi_run.requests
    assert [row.request_bytes for row in rows] == [len(p.body) for p in FASTAPI_PLAN]
    compared = [
        (row.path, row.response_bytes, exchange.received)
        for row, exchange in zip(rows, fastapi_run.exchanges, strict=True)
        if row.method != "HEAD" and row.path != "/fail"
    ]
    assert [(path, stored) for path, stored, _ in compared] == [
        (path, received) for path, _, received in compared
    ]
    (post,) = [row for row in rows if row.method == "POST"]
    assert post.request_bytes == len(POST_BODY) > 300


def test_head_response_bytes_are_what_the_client_received(fastapi_run: Run) -> None:
    """A HEAD response carries no body on the wire, so its record counts no body bytes."""
    heads = [
        (row.path, row.response_bytes, exchange.received)
        for row, exchange in zip(fastapi_run.requests, fastapi_run.exchanges, strict=True)
        if row.method == "HEAD"
    ]
    assert [(path, received) for path, _, received in heads] == [
        ("/items/1", 0),
        ("/no/such/page", 0),
    ]
    assert [(path, stored) for path, stored, _ in heads] == [
        (path, received) for path, _, received in heads
    ]


def test_timings_and_client_address_are_consistent(fastapi_run: Run) -> None:
    """ttfb <= duration, wall timestamps within the sending window, client 127.0.0.1."""
    for row in fastapi_run.requests:
        assert row.duration_ms >= 0, row
        if row.ttfb_ms is not None:
            assert 0 <= row.ttfb_ms <= row.duration_ms, row
        assert fastapi_run.sent_from - WALL_SLACK <= row.timestamp, row
        assert row.timestamp <= fastapi_run.sent_until + WALL_SLACK, row
    assert {row.client_ip for row in fastapi_run.requests} == {"127.0.0.1"}
    # Every request that got a response from inside the middleware has a first byte time.
    assert [row.path for row in fastapi_run.requests if row.ttfb_ms is None] == ["/fail"]


def test_websocket_session_is_stored_once(fastapi_run: Run) -> None:
    """One session row: M messages each way, closed by the client with 1000, accepted."""
    sessions = fastapi_run.sessions
    assert [
        (s.route, s.path, s.messages_in, s.messages_out, s.close_code, s.accepted, s.client_ip)
        for s in sessions
    ] == [("/ws/echo", "/ws/echo", len(WS_MESSAGES), len(WS_MESSAGES), 1000, 1, "127.0.0.1")]
    assert sessions[0].error == ""
    assert sessions[0].duration_ms >= 0
    assert fastapi_run.sent_from - WALL_SLACK <= sessions[0].timestamp
    assert sessions[0].timestamp <= fastapi_run.sent_until + WALL_SLACK


def log_without_tracebacks(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if line and not line[0].isspace())


def test_records_reach_the_file_at_exit_with_lifespan_off(tmp_path: Path) -> None:
    """Without lifespan events the atexit backstop writes every record when the process exits."""
    run = run_fastapi_scenario(tmp_path, "--lifespan", "off", stop=signal.SIGINT)
    assert [e.status for e in run.exchanges] == [p.status for p in FASTAPI_PLAN]
    assert run.stored_before_stop == 0
    assert "Application shutdown complete." not in run.log  # no lifespan: only atexit is left
    assert summary(run.requests) == expected_summary(FASTAPI_PLAN), (
        f"uvicorn exit status {run.returncode}; its log:\n{log_without_tracebacks(run.log)}"
    )
    assert [(s.messages_in, s.messages_out, s.close_code) for s in run.sessions] == [
        (len(WS_MESSAGES), len(WS_MESSAGES), 1000)
    ]


def test_serving_without_lifespan_warns_about_signal_deaths(tmp_path: Path) -> None:
    """uvicorn --lifespan off re-raises SIGTERM with its default action after shutting down,
    so no atexit hook runs: the flusher says so once, in the server's log, as soon as
    it handles the first records."""
    env = child_environment(AEGIS_BATCH_SIZE="1")
    with uvicorn_server(
        "examples.fastapi_app:app", tmp_path, "--lifespan", "off", env=env
    ) as server:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as client:
            assert client.get("/items/1").status_code == 200
            assert server.log.wait_for("server sent no lifespan startup", STARTUP_TIMEOUT)
            assert client.get("/items/2").status_code == 200
        server.terminate(signal.SIGTERM)
        assert server.log.text.count("server sent no lifespan startup") == 1


def test_no_lifespan_warning_when_lifespan_runs(fastapi_run: Run) -> None:
    """With lifespan on (uvicorn's default) the warning never appears."""
    assert "server sent no lifespan startup" not in fastapi_run.log


# --------------------------------------------------------------------------- Starlette example


# Templates follow the OpenTelemetry ``http.route`` convention: convertors are dropped.
USER = "/api/v1/users/{user_id}"
MOUNT_MISS = "/api/v1/{path}"
STARLETTE_PLAN = (
    Planned("GET", "/", "/", 200),
    Planned("GET", "/api/v1/users/7", USER, 200),
    Planned("GET", "/api/v1/users/12345", USER, 200),
    Planned("GET", "/nowhere", UNMATCHED, 404),
    Planned("GET", "/api/v1/users/7", USER, 200),
)
# Paths under the mount that none of its routes match: reported under the mount.
STARLETTE_MOUNT_MISSES = (
    Planned("GET", "/api/v1/users/not-an-int", MOUNT_MISS, 404),
    Planned("GET", "/api/v1/nothing", MOUNT_MISS, 404),
)


@pytest.fixture(scope="module")
def starlette_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The Starlette example under uvicorn (default options and flush interval), run once."""
    workdir = tmp_path_factory.mktemp("starlette")
    db = workdir / "aegis.db"
    with uvicorn_server("examples.starlette_app:app", workdir) as server:
        sent_from = time.time()
        exchanges = send_all(server.url, STARLETTE_PLAN + STARLETTE_MOUNT_MISSES)
        sent_until = time.time()
        returncode = server.terminate()
        log = server.log.text
    return Run(exchanges, [], 0, returncode, log, stored_requests(db), [], sent_from, sent_until)


def test_starlette_mounted_route_is_stored_with_its_full_template(starlette_run: Run) -> None:
    """Requests under Mount('/api/v1') carry the full template '/api/v1/users/{user_id}'."""
    assert [e.status for e in starlette_run.exchanges] == [
        p.status for p in STARLETTE_PLAN + STARLETTE_MOUNT_MISSES
    ]
    assert starlette_run.returncode in (0, -signal.SIGTERM), starlette_run.log
    rows = starlette_run.requests[: len(STARLETTE_PLAN)]
    assert summary(rows) == expected_summary(STARLETTE_PLAN)
    assert len(starlette_run.requests) == len(STARLETTE_PLAN + STARLETTE_MOUNT_MISSES)
    assert [row.response_bytes for row in starlette_run.requests] == [
        e.received for e in starlette_run.exchanges
    ]
    assert {row.client_ip for row in starlette_run.requests} == {"127.0.0.1"}
    assert {row.error for row in starlette_run.requests} == {""}


def test_starlette_miss_inside_a_mount_is_reported_under_the_mount(starlette_run: Run) -> None:
    """A 404 under the mount's prefix is '/api/v1/{path}': bounded, never the raw path."""
    rows = starlette_run.requests[len(STARLETTE_PLAN) :]
    assert summary(rows) == expected_summary(STARLETTE_MOUNT_MISSES)

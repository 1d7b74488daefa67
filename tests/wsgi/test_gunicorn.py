"""gunicorn sync and gthread workers, several processes, serving a WSGI app under
AegisWSGIMiddleware: every request lands once in the shared SQLite file, with
its route template, and /metrics answers from inside the app."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, gunicorn_command, gunicorn_process, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]
DEADLINE = 60.0


@pytest.mark.parametrize(
    ("worker_class", "extra"),
    [("sync", ()), ("gthread", ("--threads", "4", "--preload"))],
)
def test_every_request_lands_once(
    tmp_path: Path, worker_class: str, extra: tuple[str, ...]
) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")  # fmt: skip
    command = gunicorn_command(2, "tests.wsgi.wsgi_app:app", *extra, worker_class=worker_class)
    with gunicorn_process(command, tmp_path, env) as (process, lines, seen):
        deadline = time.monotonic() + DEADLINE
        [listening] = wait_for(lines, seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline)
        wait_for(lines, seen, r"Booting worker with pid: (\d+)", 2, deadline)
        base = f"http://127.0.0.1:{int(listening.group(1))}"
        for number in range(30):
            response = httpx.get(f"{base}/items/{number}", headers={"connection": "close"})
            assert response.status_code == 200 and response.text == "item"
        stream = httpx.get(f"{base}/stream", headers={"connection": "close"})
        assert stream.text == "one two"
        assert httpx.get(f"{base}/nowhere", headers={"connection": "close"}).status_code == 404
        metrics = httpx.get(f"{base}/metrics", headers={"connection": "close"})
        assert metrics.status_code == 200 and "aegis_http_requests_total" in metrics.text
        process.send_signal(signal.SIGTERM)  # graceful: each worker flushes as it exits
        assert process.wait(timeout=60) == 0
    output = "\n".join(seen)
    assert "Traceback" not in output, output
    connection = sqlite3.connect(tmp_path / "aegis.db")
    try:
        rows = connection.execute(
            "SELECT route, status, response_bytes, request_id FROM aegis_requests"
        ).fetchall()
    finally:
        connection.close()
    by_route: dict[str, int] = {}
    for route, _, _, _ in rows:
        by_route[route] = by_route.get(route, 0) + 1
    assert by_route == {"/items/{item_id}": 30, "/stream": 1, "<unmatched>": 1}
    assert len({row[3] for row in rows}) == 32  # each once
    assert {(row[1], row[2]) for row in rows if row[0] == "/stream"} == {(200, 7)}

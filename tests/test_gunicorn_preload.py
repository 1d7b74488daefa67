"""A real ``gunicorn --preload`` with two uvicorn workers: a record buffered in the
master before the fork is stored exactly once, alongside every worker's records.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import gunicorn_command, read_lines, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]

K = 12
WORKERS = 2
STARTUP_DEADLINE = 60.0
STOP_DEADLINE = 60.0

APP_MODULE = textwrap.dedent(
    '''
    """The app gunicorn preloads: records one request in-process at import time."""

    from __future__ import annotations

    import os
    import sys

    import anyio

    from aegis_mw import Aegis, AegisMiddleware

    # The sink and the flush interval come from AEGIS_* environment variables.
    aegis = Aegis()


    async def endpoint(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


    app = AegisMiddleware(endpoint, aegis=aegis)


    def report(event):
        print(f"aegis-test {event} pid={os.getpid()} inbox={len(aegis.recorder.inbox)} "
              f"flusher_alive={aegis.stats().flusher_alive}", file=sys.stderr, flush=True)


    async def prime():
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/preload", "raw_path": b"/preload",
            "root_path": "", "query_string": b"", "headers": [], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent


    anyio.run(prime)
    report("imported")
    # Aegis registered its own hook first, so "child" reports after its reset.
    os.register_at_fork(before=lambda: report("before-fork"),
                        after_in_child=lambda: report("child"))
    '''
)


def test_record_buffered_before_fork_is_stored_once(tmp_path: Path) -> None:
    """Master's pre-fork record is written once (by the master), workers write their own."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "preload_app.py").write_text(APP_MODULE, encoding="utf-8")
    db = tmp_path / "data" / "aegis.db"
    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env.update(
        AEGIS_SINK=f"sqlite:///{db}",
        # Nothing is flushed on a timer: the pre-fork record is surely still
        # buffered at the fork, and the workers write at lifespan shutdown.
        AEGIS_FLUSH_INTERVAL="3600",
        PYTHONUNBUFFERED="1",
    )
    command = gunicorn_command(WORKERS, "preload_app:app", "--preload", "--chdir", str(app_dir))
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        [listening] = wait_for(lines, seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline)
        port = int(listening.group(1))
        wait_for(lines, seen, r"Application startup complete", WORKERS, deadline)

        served_by: set[str] = set()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            for number in range(K):
                response = client.get(f"/hit/{number}", headers={"connection": "close"})
                assert response.status_code == 200
                served_by.add(response.text)

        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=STOP_DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        reader.join(timeout=30)
        process.stdout.close()  # type: ignore[union-attr]
    while True:
        line = lines.get_nowait() if not lines.empty() else None
        if line is None:
            break
        seen.append(line)
    output = "\n".join(seen)

    assert exit_code == 0, output
    # The master imported the app once and had the record buffered at each fork.
    assert len(re.findall(r"aegis-test imported .* inbox=1 ", output)) == 1, output
    before_fork = re.findall(r"aegis-test before-fork pid=(\d+) inbox=(\d+)", output)
    assert len(before_fork) == WORKERS, output
    assert {inbox for _, inbox in before_fork} == {"1"}, output
    # Each worker started with an empty inbox and a running flusher of its own.
    children = re.findall(r"aegis-test child pid=(\d+) inbox=(\d+) flusher_alive=(\w+)", output)
    assert [(inbox, alive) for _, inbox, alive in children] == [("0", "True")] * WORKERS, output
    master_pid = before_fork[0][0]
    assert master_pid not in {pid for pid, _, _ in children}
    assert served_by <= {pid for pid, _, _ in children}
    assert "Traceback" not in output, output
    assert "could not be written" not in output, output

    connection = sqlite3.connect(db)
    try:
        rows = connection.execute("SELECT request_id, path, status FROM aegis_requests").fetchall()
    finally:
        connection.close()
    assert len(rows) == K + 1, rows
    assert len({request_id for request_id, _, _ in rows}) == K + 1
    assert sorted(path for _, path, _ in rows) == sorted(
        ["/preload"] + [f"/hit/{number}" for number in range(K)]
    )
    assert [path for _, path, _ in rows].count("/preload") == 1
    assert {status for _, _, status in rows} == {200}

"""The Flask app and the Django project in examples/, started for real (gunicorn
with two workers; Django under uvicorn too): traffic, a /metrics scrape, the
overview from the shared SQLite history, and frames from /ws/metrics (Flask,
whose stream is served by a worker's thread on AEGIS_WS_PORT)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.servers import (
    child_environment,
    free_port,
    gunicorn_command,
    gunicorn_process,
    uvicorn_server,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]
WAIT = 60.0


@contextmanager
def gunicorn_serving(app: str, workdir: Path, **env: str) -> Iterator[str]:
    # Two workers share their figures the documented way, so a scrape answered by
    # either worker counts the other's requests too.
    shared = workdir / "metrics-multiproc"
    shared.mkdir()
    environment = child_environment(
        PYTHONUNBUFFERED="1", PROMETHEUS_MULTIPROC_DIR=str(shared), **env
    )
    command = gunicorn_command(2, app, worker_class="sync")
    with gunicorn_process(command, workdir, environment) as (process, lines, seen):
        deadline = time.monotonic() + WAIT
        [listening] = wait_for(lines, seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline)
        wait_for(lines, seen, r"Booting worker with pid: (\d+)", 2, deadline)
        # Each worker's start-up line: its app is loaded (and the token kept).
        wait_for(lines, seen, r"dashboard at /dashboard\?token=", 2, deadline)
        yield f"http://127.0.0.1:{int(listening.group(1))}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    # The only tracebacks logged (Flask logs its own; Django, at these logging
    # defaults, does not) are those of the view that fails on purpose.
    output = "\n".join(seen)
    # Every worker printed the dashboard's link with one token: the file's.
    printed = set(re.findall(r"dashboard at /dashboard\?token=(\S+)", output))
    assert printed == {(workdir / "aegis.db.token").read_text().strip()}, output
    purposeful = re.findall(r"^RuntimeError: this \w+ fails on purpose$", output, re.MULTILINE)
    assert output.count("Traceback (most recent call last)") == len(purposeful), output


def exercise(base: str, item_path: str, workdir: Path) -> None:
    """Traffic, then a scrape and the stored overview (which lags by the 5-second
    rollups), read with the cookie the dashboard's link is traded for: a new
    connection per request, so with several workers each answers some."""
    token = (workdir / "aegis.db.token").read_text().strip()
    with httpx.Client(base_url=base, timeout=10.0, headers={"connection": "close"}) as client:
        assert client.get("/api/metrics/overview").status_code == 401
        login = client.get(f"/dashboard?token={token}")
        assert login.status_code == 303 and "aegis_token" in login.headers["set-cookie"]
        assert client.cookies  # one per path the page uses, scoped to them
        for _ in range(6):
            assert client.get("/dashboard").status_code == 200
            assert client.get("/api/metrics/realtime").status_code == 200
        for number in range(6):
            assert client.get(f"{item_path}/{number}").json() == {"item_id": number}
        assert client.get("/fail").status_code == 500
        # Every worker's requests are on the scrape, another worker's within one
        # flush_interval (its flusher writes its file after each cycle).
        deadline = time.monotonic() + WAIT
        while (answered := _items_answered(client.get("/metrics").text)) != 6:
            assert time.monotonic() < deadline, f"/metrics counts {answered} item requests"
            time.sleep(0.1)  # polling a condition with a deadline: files land each cycle
        overview: dict[str, Any] = {}
        while time.monotonic() < deadline:
            overview = client.get("/api/metrics/overview?range=1h").json()["data"]
            if overview["total"] == 7:
                break
            time.sleep(0.25)  # polling a condition with a deadline: rollups land every 5 s
        assert (overview["total"], overview["failed"]) == (7, 1), overview
        assert client.get("/dashboard").status_code == 200


def _items_answered(metrics: str) -> float:
    """The item route's 200 answers on a scrape, summed over its series."""
    pattern = r'^aegis_http_requests_total\{[^}]*route="/api/items/\{item_id\}"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


def test_the_flask_example(tmp_path: Path) -> None:
    port = free_port()
    with gunicorn_serving("examples.flask_app:app", tmp_path, AEGIS_WS_PORT=str(port)) as base:
        exercise(base, "/api/items", tmp_path)
        bearer = {"Authorization": f"Bearer {(tmp_path / 'aegis.db.token').read_text().strip()}"}
        # The stream, from the worker that bound the port first.
        deadline = time.monotonic() + WAIT
        while True:
            try:
                stream = connect(
                    f"ws://127.0.0.1:{port}/ws/metrics", open_timeout=5, additional_headers=bearer
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # until a worker's first request has started its server
        with stream:
            assert json.loads(stream.recv(timeout=10))["type"] == "hello"
            frame = json.loads(stream.recv(timeout=10))
            assert frame["type"] == "metrics" and "overview" in frame["data"]


#: Named, not inherited: the test process may hold another project's (the Django tests').
DJANGO_SETTINGS = "examples.django_project.settings"


def test_the_django_example_under_gunicorn(tmp_path: Path) -> None:
    app = "examples.django_project.wsgi:application"
    env = {"DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS, "AEGIS_WS_PORT": str(free_port())}
    with gunicorn_serving(app, tmp_path, **env) as base:
        exercise(base, "/api/items", tmp_path)


def test_the_django_example_under_uvicorn(tmp_path: Path) -> None:
    env = child_environment(DJANGO_SETTINGS_MODULE=DJANGO_SETTINGS)
    with uvicorn_server("examples.django_project.asgi:application", tmp_path, env=env) as server:
        exercise(server.url, "/api/items", tmp_path)
        # Under ASGI the stream is served on the app's own port.
        token = (tmp_path / "aegis.db.token").read_text().strip()
        url = f"ws://127.0.0.1:{server.port}/ws/metrics"
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as stream:
            assert json.loads(stream.recv(timeout=10))["type"] == "hello"
            frame = json.loads(stream.recv(timeout=10))
            assert frame["data"]["overview"]["total_requests"] >= 7
        server.terminate()
    assert (tmp_path / "aegis.db").exists()

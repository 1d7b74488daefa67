"""gunicorn with 4 uvicorn workers on one SQLite file or PostgreSQL database:
openings of one correlation key sent at once, answered by several workers,
make exactly one incident; the others attach to it. One opening sent many
times at once under one Idempotency-Key makes one incident too; the others
answer it as replays."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import servers
from tests.incidents.conftest import rows
from tests.servers import gunicorn_command, gunicorn_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]

WORKERS = 4
OPENINGS = 40
EDITOR = "editor-token-gunicorn"
APP = "tests.custom_metrics_app:app"


def stored_ids(url: str) -> list[str]:
    """The incidents in the database itself (the sink the workers were given)."""
    return [row[0] for row in rows(url, "SELECT incident_id FROM aegis_incidents")]


def served_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    env = servers.multiprocess_env(shared)
    env.update(
        AEGIS_SINK=database_url, AEGIS_ACCESS=json.dumps({"api": {"editor_tokens": [EDITOR]}})
    )
    return env


def open_at_once(
    base: str, bodies: list[dict[str, Any]], headers: dict[str, str]
) -> list[httpx.Response]:
    """POST each body to the incidents at once, each on a connection of its
    own (so that they reach the workers together): the answers."""
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def open_one(body: dict[str, Any]) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            barrier.wait(30)
            answer = client.post(
                "/api/metrics/incidents", json=body,
                headers={"Authorization": f"Bearer {EDITOR}", **headers},
            )  # fmt: skip
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=open_one, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == len(bodies)
    return answers


def test_openings_of_one_key_at_once_make_one_incident(tmp_path: Path, database_url: str) -> None:
    env = served_env(tmp_path, database_url)
    with gunicorn_process(gunicorn_command(WORKERS, APP), tmp_path, env) as (_, lines, seen):
        base, _pids = servers.gunicorn_started(lines, seen, WORKERS, time.monotonic() + 60)
        bodies = [
            {"title": f"checkout down ({number})", "correlation_key": "checkout"}
            for number in range(OPENINGS)
        ]
        answers = open_at_once(base, bodies, {})
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200] * (OPENINGS - 1) + [201], [a.text for a in answers]
        ids = {answer.json()["data"]["incident"]["id"] for answer in answers}
        assert len(ids) == 1
        [incident_id] = ids

        with httpx.Client(base_url=base, timeout=30) as client:
            auth = {"Authorization": f"Bearer {EDITOR}"}
            listed = client.get("/api/metrics/incidents", headers=auth).json()["data"]
            shown: dict[str, Any] = client.get(
                f"/api/metrics/incident?id={incident_id}", headers=auth
            ).json()["data"]
        assert [incident["id"] for incident in listed["incidents"]] == [incident_id]
        kinds = [update["kind"] for update in shown["updates"]]
        assert kinds == ["created"] + ["attached"] * (OPENINGS - 1)
        assert [update["seq"] for update in shown["updates"]] == list(range(1, OPENINGS + 1))
    assert stored_ids(database_url) == [incident_id]


def test_one_opening_sent_at_once_under_one_idempotency_key_opens_once(
    tmp_path: Path, database_url: str
) -> None:
    env = served_env(tmp_path, database_url)
    with gunicorn_process(gunicorn_command(WORKERS, APP), tmp_path, env) as (_, lines, seen):
        base, _pids = servers.gunicorn_started(lines, seen, WORKERS, time.monotonic() + 60)
        body = {"title": "payments down", "severity": "critical"}  # no correlation key
        key = {"Idempotency-Key": "9b2e6f0c-payments-down"}
        answers = open_at_once(base, [body] * OPENINGS, key)
    assert [answer.status_code for answer in answers] == [201] * OPENINGS, answers
    replays = sorted(answer.headers.get("idempotent-replayed", "") for answer in answers)
    assert replays == [""] + ["true"] * (OPENINGS - 1)
    ids = {answer.json()["data"]["incident"]["id"] for answer in answers}
    assert len(ids) == 1
    assert stored_ids(database_url) == list(ids)

"""gunicorn with 4 uvicorn workers and PROMETHEUS_MULTIPROC_DIR: whichever worker answers
a scrape, /metrics shows the totals of all of them, also after a worker dies."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import servers
from tests.servers import gunicorn_command, gunicorn_process, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]

WORKERS = 4
REQUESTS = 40
STARTUP_DEADLINE = 60.0
SETTLE_DEADLINE = 60.0  # every worker publishes within its flush interval (0.2 s here)
ROUTE = "/items/{item_id}"


def scrape(base: str) -> tuple[float, float]:
    """(requests on ROUTE, requests in progress) from one /metrics answer."""
    # A new connection per scrape: any worker may answer it.
    text = httpx.get(f"{base}/metrics", headers={"connection": "close"}, timeout=10).text
    requests = in_progress = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aegis_http_requests_total" and sample.labels["route"] == ROUTE:
                requests += sample.value
            elif sample.name == "aegis_http_requests_in_progress":
                in_progress += sample.value
    return requests, in_progress


def settled(base: str, expected: float, in_a_row: int = 12) -> list[tuple[float, float]]:
    """Scrape until ``in_a_row`` consecutive answers all show ``expected`` requests."""
    return servers.settled(
        lambda: scrape(base), lambda answer: answer[0] == expected, in_a_row, SETTLE_DEADLINE
    )


def test_totals_are_those_of_all_workers(tmp_path: Path) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    env = servers.multiprocess_env(shared)
    command = gunicorn_command(WORKERS, "examples.fastapi_app:app")
    with gunicorn_process(command, tmp_path, env) as (process, lines, seen):
        deadline = time.monotonic() + STARTUP_DEADLINE
        base, workers = servers.gunicorn_started(lines, seen, WORKERS, deadline)

        for number in range(REQUESTS):
            response = httpx.get(f"{base}/items/{number}", headers={"connection": "close"})
            assert response.status_code == 200
        answers = settled(base, REQUESTS)
        assert {in_progress for _, in_progress in answers} == {0}
        snapshots = [json.loads(path.read_text()) for path in shared.glob("aegis_*_*.json")]
        assert len(snapshots) >= WORKERS  # one per worker
        # The requests were spread over several workers, so no single one has them all.
        busy = [data for data in snapshots if sum(row[-1] for row in data["requests"])]
        assert len(busy) >= 2, [sum(row[-1] for row in data["requests"]) for data in snapshots]

        # A worker dies (as in a crash): its requests still count; gunicorn replaces it.
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lines, seen, r"Booting worker with pid: (\d+)", WORKERS + 1, deadline + 60)
        for number in range(10):
            assert httpx.get(f"{base}/items/{number}", headers={"connection": "close"}).is_success
        settled(base, REQUESTS + 10)
        # Its file was folded into the archive by a living worker, not lost.
        assert not list(shared.glob(f"aegis_{workers[0]}_*.json"))
        assert (shared / "aegis_archive.json").exists()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    output = "\n".join(seen)
    assert "Traceback" not in output, output

"""Close codes as label values: a client chooses its close code, so the
sessions counter folds codes into a bounded set while the stored session
keeps the code itself."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from aegis_mw import Aegis
from aegis_mw.core.items import PendingSession
from aegis_mw.core.labeled import close_code_label
from aegis_mw.exposition.multiprocess import encode
from tests.harness import OPEN_MONITORING_ENV
from tests.servers import child_environment, promtool_checks, uvicorn_server

TIMEOUT = 10.0
#: 100 codes a client may send: 8 standard ones, 46 registered, 46 private.
CODES = [1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, *range(3000, 3046), *range(4000, 4046)]
SERIES = re.compile(r'^aegis_websocket_sessions_total\{route="/echo",close_code="([^"]*)"\} (\S+)$')


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (None, "none"), (1000, "1000"), (1006, "1006"), (1015, "1015"), (1016, "other"),
        (2999, "other"), (3000, "3xxx"), (3999, "3xxx"), (4000, "4xxx"), (4999, "4xxx"),
        (5000, "other"), (0, "other"), (-1, "other"), (1000.0, "other"), ("1000", "other"),
        (True, "other"), (10**100, "other"),
    ],
)  # fmt: skip
def test_close_code_labels(code: Any, label: str) -> None:
    assert close_code_label(code) == label


def sessions_on_metrics(url: str) -> tuple[dict[str, float], str]:
    exposition = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    series = {
        match[1]: float(match[2])
        for line in exposition.splitlines()
        if (match := SERIES.match(line))
    }
    return series, exposition


@pytest.mark.slow
def test_a_hundred_close_codes_make_a_bounded_number_of_series(tmp_path: Path) -> None:
    database = tmp_path / "aegis.db"
    env = child_environment(
        AEGIS_SINK=f"sqlite:///{database}", AEGIS_FLUSH_INTERVAL="0.1", **OPEN_MONITORING_ENV
    )
    with uvicorn_server("tests.realtime.session_app:app", tmp_path, env=env) as server:
        for code in CODES:
            with connect(f"ws://127.0.0.1:{server.port}/echo") as ws:
                ws.send("hi")
                assert ws.recv(timeout=TIMEOUT) == "hi"
                ws.close(code)
        deadline = time.monotonic() + TIMEOUT
        series, exposition = sessions_on_metrics(server.url)
        while sum(series.values()) < len(CODES) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a condition with a deadline: the flusher folds them
            series, exposition = sessions_on_metrics(server.url)
        realtime = httpx.get(f"{server.url}/api/metrics/realtime", timeout=TIMEOUT).json()
        # The sink writes what the flusher folded a moment later, in its own
        # thread; the server is killed on the way out, so wait for the rows.
        stored = stored_close_codes(database)
        while len(stored) < len(CODES) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a condition with a deadline: the sink writes them
            stored = stored_close_codes(database)
    expected = {"1000", "1001", "1003", "1007", "1008", "1009", "1010", "1011", "3xxx", "4xxx"}
    assert set(series) == expected
    assert series["3xxx"] == series["4xxx"] == 46
    # The realtime overview counts the same sessions.
    assert sum(series.values()) == realtime["data"]["websocket_sessions_total"] == 100
    promtool_checks(exposition)
    # Each stored session keeps the code its client sent.
    assert sorted(stored) == CODES


def stored_close_codes(database: Path) -> list[int]:
    connection = sqlite3.connect(database)
    try:
        query = "SELECT close_code FROM aegis_websocket_sessions"
        return [row[0] for row in connection.execute(query)]
    except sqlite3.OperationalError:  # the table is created with the first write
        return []
    finally:
        connection.close()


def test_workers_merged_at_scrape_keep_the_bounded_labels(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """Several processes (metrics_multiprocess_dir): each writes its folded
    labels, the answering worker adds them up, and the sessions counted on
    /metrics are those the workers' realtime overviews count."""
    worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)  # fmt: skip
    try:
        other = make_aegis(metrics_registry="none")
        offer_sessions(other, CODES[:50])
        data = encode(other.metrics.read_own(), pid=worker.pid, live=True)
        (tmp_path / f"aegis_{worker.pid}_0a0b0c0d.json").write_text(json.dumps(data))
        aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
        offer_sessions(aegis, CODES[50:])
        assert aegis.force_flush(10) and other.force_flush(10)
        exposition = aegis.metrics.endpoint.respond().body.decode()
    finally:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(30)
    series = {
        match[1]: float(match[2])
        for line in exposition.splitlines()
        if (match := SERIES.match(line))
    }
    assert set(series) == {"1000", "1001", "1003", "1007", "1008", "1009", "1010", "1011",
                           "3xxx", "4xxx"}  # fmt: skip
    assert series["3xxx"] == series["4xxx"] == 46
    counted = (other.realtime().websocket_sessions_total, aegis.realtime().websocket_sessions_total)
    assert counted == (50, 50) and sum(series.values()) == 100


def offer_sessions(aegis: Aegis, codes: list[int]) -> None:
    for code in codes:
        aegis.recorder.offer(
            PendingSession(1.0, "/echo", "/echo", 2.0, 1, 1, code, True, None, None, "")
        )
    assert aegis.force_flush(10)

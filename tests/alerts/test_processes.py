"""Several processes of one app, each with its alert service, over one real
store: one evaluation truth, one notice per transition."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.sinks import build_sink
from tests.spawned import run_together

from .test_service import write

RULES = [
    {"name": "errors", "input": "error_ratio", "operator": ">", "threshold": 0.1, "window": "1m"}
]


def run_app_process(url: str, index: int, barrier: Any, results: Any) -> None:
    """In a spawned process: an Aegis with the rules, evaluating every
    second, until the store holds a firing notice (or 30 s)."""
    from aegis_mw import Aegis

    try:
        barrier.wait(timeout=60)
        aegis = Aegis(sink=url, environ={}, alert_rules=RULES, alert_interval=1)
        assert aegis.alerts is not None
        alerts = aegis.alerts
        deadline = time.monotonic() + 30
        pause = threading.Event()
        # Every process shows the alert within an interval of its firing,
        # whichever of them evaluates (the others read the store).
        while time.monotonic() < deadline and not alerts.view():
            pause.wait(0.05)
        # Evaluations after the firing one must not fire it again.
        evaluations = alerts.evaluations
        while alerts.token is not None and alerts.evaluations < evaluations + 2:
            if time.monotonic() > deadline:
                break
            pause.wait(0.05)
        shown = aegis.alerts.view()
        aegis.shutdown(10)
    except BaseException as exc:
        results.put((index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, [a["state"] for a in shown]))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_four_processes_one_firing_notice(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'aegis.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    sink = build_sink(url)
    now = time.time()
    for second in range(15, 60, 5):
        write(sink, now - second, 20, 10, f"w{second}-")
    reports, codes = run_together(run_app_process, 4, url, timeout=120)
    history = sink.alert_store().history(100)
    sink.close()
    assert codes == [0, 0, 0, 0], reports
    assert all(isinstance(shown, list) for _, shown in reports), reports
    # Every process showed the alert firing (from the store, evaluator or not).
    assert all(shown == ["firing"] for _, shown in reports), reports
    assert [(r["kind"], r["notify"]) for r in history if r["notify"]] == [("firing", True)]

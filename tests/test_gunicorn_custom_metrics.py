"""gunicorn with 4 uvicorn workers and PROMETHEUS_MULTIPROC_DIR: the app's own
metrics (``aegis.counter``, ``aegis.histogram``, ``aegis.gauge``) on /metrics are
those of all workers, whichever answers a scrape; after a worker dies its
counters and histogram still count (archived), its gauge no longer does."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aegis_mw.core.labeled import DEFAULT_BUCKETS
from tests import servers
from tests.servers import gunicorn_command, gunicorn_process, promtool_checks, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]

WORKERS = 4
STARTUP_DEADLINE = 60.0
SETTLE_DEADLINE = 60.0  # every worker publishes within its flush interval (0.2 s here)
APP = "tests.custom_metrics_app:app"
# Uneven: each region has its own number of orders, amounts and observations.
# The last needs escaping in the exposition (quote, backslash, newline).
REGIONS = ("eu", "us", "eu", 'ap\n"south"\\east', "eu", "us", "eu")
ORDERS = 45
# Binary fractions, so that their sums are exact in any order; 0.25 is a bucket
# bound itself (counted in le="0.25"), 12.0 is past the last bound (+Inf only).
SECONDS = (0.00390625, 0.25, 0.375, 1.5, 12.0)
STARTS = 30
STOPS = 10
PINGS = 8  # after the kill: requests that record no custom metric

#: The families of the app's metrics (a counter's without ``_total``), and ours
#: of how many label sets each folded into its ``<overflow>`` series.
CUSTOM_FAMILIES = ("orders", "order_seconds", "active_jobs", "aegis_custom_metric_overflow")
#: One scrape's custom figures: (sample name, sorted label pairs) -> value.
Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Share:
    """What one worker recorded, from the answers it gave."""

    orders: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    jobs: int = 0  # starts minus stops

    def add(self, other: Share) -> None:
        self.orders.update(other.orders)
        for region, values in other.seconds.items():
            self.seconds[region].extend(values)
        self.jobs += other.jobs


def plan() -> list[tuple[str, dict[str, Any]]]:
    """The requests to send (path, query), orders and jobs interleaved."""
    orders = [
        (
            f"/orders/{quote(REGIONS[number % len(REGIONS)], safe='')}",
            {"amount": 1 + number % 4, "seconds": SECONDS[number % len(SECONDS)]},
        )
        for number in range(ORDERS)
    ]
    start: tuple[str, dict[str, Any]] = ("/jobs/start", {})
    stop: tuple[str, dict[str, Any]] = ("/jobs/stop", {})
    # The stops after most of the starts: a worker's share can be either sign.
    jobs = [start] * (STARTS - STOPS) + [step for _ in range(STOPS) for step in (start, stop)]
    mixed: list[tuple[str, dict[str, Any]]] = []
    for index in range(max(len(orders), len(jobs))):
        mixed += orders[index : index + 1] + jobs[index : index + 1]
    return mixed


def send(base: str, path: str, query: dict[str, Any]) -> int:
    """One request on a new connection (any worker may take it): who answered."""
    response = httpx.post(f"{base}{path}", params=query, headers={"connection": "close"})
    assert response.status_code == 200, response.text
    pid = response.json()["pid"]
    assert isinstance(pid, int)
    return pid


def record(shares: dict[int, Share], pid: int, path: str, query: dict[str, Any]) -> None:
    share = shares.setdefault(pid, Share())
    if path.startswith("/orders/"):
        region = unquote(path.rsplit("/", 1)[1])
        share.orders[region] += query["amount"]
        share.seconds[region].append(query["seconds"])
    else:
        share.jobs += 1 if path == "/jobs/start" else -1


def expected_figures(total: Share) -> Figures:
    """What /metrics must show for ``total``: every sample of the three families
    and of the overflow counter."""
    figures: Figures = {}
    for region, amount in total.orders.items():
        figures[("orders_total", (("region", region),))] = amount
    for region, values in total.seconds.items():
        for bound in (*DEFAULT_BUCKETS, math.inf):
            count = sum(1 for value in values if value <= bound)
            figures[("order_seconds_bucket", (("le", repr(bound)), ("region", region)))] = count
        figures[("order_seconds_count", (("region", region),))] = len(values)
        figures[("order_seconds_sum", (("region", region),))] = sum(values)
    figures[("active_jobs", ())] = total.jobs
    for metric in ("active_jobs", "order_seconds", "orders"):
        figures[("aegis_custom_metric_overflow_total", (("metric", metric),))] = 0
    return figures


def custom_figures(text: str) -> tuple[Figures, set[float]]:
    """The custom families' samples of one exposition, and the bucket bounds of
    the request latency histogram."""
    figures: Figures = {}
    latency_bounds: set[float] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "aegis_http_request_duration_seconds" and "le" in sample.labels:
                latency_bounds.add(float(sample.labels["le"]))
            if family.name not in CUSTOM_FAMILIES:
                continue
            labels = dict(sample.labels)
            if "le" in labels:  # "0.25", "+Inf": compared as numbers
                labels["le"] = repr(float(labels["le"]))
            key = (sample.name, tuple(sorted(labels.items())))
            assert key not in figures, key
            figures[key] = sample.value
    return figures, latency_bounds


def scrape(base: str, last: list[str]) -> Figures:
    """One /metrics answer's custom figures (its text in ``last``)."""
    # A new connection per scrape: any worker may answer it.
    response = httpx.get(f"{base}/metrics", headers={"connection": "close"}, timeout=10)
    assert response.status_code == 200
    last[:] = [response.text]
    figures, latency_bounds = custom_figures(response.text)
    # The custom histogram has the request latency's buckets (none were given).
    assert latency_bounds == {*DEFAULT_BUCKETS, math.inf}
    return figures


def settled(base: str, expected: Figures, in_a_row: int = 12) -> str:
    """Scrape until ``in_a_row`` consecutive answers all show ``expected``; the
    last one's text."""
    last: list[str] = []
    servers.settled(
        lambda: scrape(base, last), lambda answer: answer == expected, in_a_row, SETTLE_DEADLINE
    )
    return last[0]


def share_figures(share: Share) -> dict[str, Any]:
    """A share as a snapshot file keeps it: per region, orders, counts per bucket
    (not cumulative, +Inf last) and the sum of the observed values; the gauge."""
    bounds = [*DEFAULT_BUCKETS, math.inf]
    return {
        "orders": dict(+share.orders),
        "seconds": {
            region: [
                sum(1 for value in values if low < value <= high)
                for low, high in zip([-math.inf, *bounds[:-1]], bounds, strict=True)
            ]
            for region, values in share.seconds.items()
            if values
        },
        "sums": {region: sum(values) for region, values in share.seconds.items() if values},
        "jobs": share.jobs,
    }


def read_files(shared: Path) -> dict[int, dict[str, Any]]:
    """Every worker's snapshot file ("custom" entry), by pid."""
    found: dict[int, dict[str, Any]] = {}
    for path in shared.glob("aegis_*_*.json"):
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            continue  # replaced meanwhile (the rename is atomic; a retry reads it)
        found[data["pid"]] = data
    return found


def file_figures(data: dict[str, Any]) -> dict[str, Any]:
    """A snapshot file's custom figures in the shape of :func:`share_figures`
    (``jobs`` None when the file has no gauge)."""
    figures: dict[str, Any] = {"orders": {}, "seconds": {}, "sums": {}, "jobs": None}
    for metric in data["custom"]:
        rows = metric["series"]
        if metric["name"] == "orders":
            assert (metric["kind"], metric["labels"]) == ("counter", ["region"])
            figures["orders"] = {region: value for region, value in rows if value}
        elif metric["name"] == "order_seconds":
            assert (metric["kind"], metric["labels"]) == ("histogram", ["region"])
            assert metric["bounds"] == list(DEFAULT_BUCKETS)
            for region, values in rows:
                if values[-1] or any(values[:-1]):
                    figures["seconds"][region] = values[:-1]
                    figures["sums"][region] = values[-1]
        elif metric["name"] == "active_jobs":
            assert (metric["kind"], metric["mode"]) == ("gauge", "sum")
            [[figures["jobs"]]] = rows
    return figures


def files_agree(shared: Path, shares: dict[int, Share]) -> dict[int, dict[str, Any]]:
    """Poll the snapshot files until each worker's shows what it answered for."""

    def check(files: dict[int, dict[str, Any]]) -> bool:
        return all(
            pid in files and file_figures(files[pid]) == share_figures(share)
            for pid, share in shares.items()
        )

    [files] = servers.settled(lambda: read_files(shared), check, 1, SETTLE_DEADLINE)
    return files


def test_custom_metrics_are_those_of_all_workers(tmp_path: Path) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    env = servers.multiprocess_env(shared)
    command = gunicorn_command(WORKERS, APP)
    with gunicorn_process(command, tmp_path, env) as (process, lines, seen):
        deadline = time.monotonic() + STARTUP_DEADLINE
        base, pids = servers.gunicorn_started(lines, seen, WORKERS, deadline)
        workers = set(pids)

        # Who answered each request: each worker's share of the figures.
        shares: dict[int, Share] = {}
        for path, query in plan():
            record(shares, send(base, path, query), path, query)
        assert set(shares) <= workers
        total = Share()
        for share in shares.values():
            total.add(share)
        assert sum(total.orders.values()) == sum(1 + number % 4 for number in range(ORDERS))
        assert total.jobs == STARTS - STOPS

        settled(base, expected_figures(total))
        # Each worker's file holds what it recorded, the gauge included (alive).
        files = files_agree(shared, shares)
        assert set(files) == workers  # one file per worker
        # The figures were spread over several workers, no single one has them all.
        busy = [pid for pid, data in files.items() if file_figures(data)["orders"]]
        assert len(busy) >= 2, {pid: share_figures(share) for pid, share in shares.items()}

        # A worker holding orders and a share of the gauge dies (as in a crash):
        # the one with the most orders, as its snapshot file says.
        held = {pid: file_figures(data) for pid, data in files.items()}
        candidates = [pid for pid, figures in held.items() if figures["jobs"] and figures["orders"]]
        assert candidates, held
        victim = max(candidates, key=lambda pid: sum(held[pid]["orders"].values()))
        os.kill(victim, signal.SIGKILL)
        booted = wait_for(
            lines, seen, r"Booting worker with pid: (\d+)", WORKERS + 1, deadline + 60
        )
        wait_for(lines, seen, r"Application startup complete", WORKERS + 1, deadline + 60)
        replacement = int(booted[-1].group(1))
        assert replacement not in workers
        # Requests that record no custom metric make the living workers publish,
        # and so fold the dead worker's file into the archive.
        for _ in range(PINGS):
            response = httpx.get(f"{base}/ping", headers={"connection": "close"})
            assert response.status_code == 200
        archive_path = shared / "aegis_archive.json"
        servers.settled(
            lambda: (list(shared.glob(f"aegis_{victim}_*.json")), archive_path.exists()),
            lambda answer: answer == ([], True),
            1,
            SETTLE_DEADLINE,
        )
        # The new worker starts at zero (it answered pings only, if anything).
        files_agree(shared, {replacement: Share()})
        # The archive holds the dead worker's counters and histogram, no gauge.
        archive = json.loads(archive_path.read_text())
        archived = file_figures(archive)
        dead = share_figures(shares[victim])
        assert archived == {**dead, "jobs": None}, (archived, dead)

        # Its orders and observations still count, its jobs no longer do.
        after = expected_figures(total)
        after[("active_jobs", ())] = total.jobs - held[victim]["jobs"]
        exposition = settled(base, after)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    output = "\n".join(seen)
    assert "Traceback" not in output, output
    # Last: a skip (promtool missing, outside CI) leaves the checks above done.
    promtool_checks(exposition)

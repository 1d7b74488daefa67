"""gunicorn with 4 uvicorn workers writing one store (a SQLite file, the real
PostgreSQL): the app's own counters and histograms in the stored history add up
to what the workers recorded, the same figures /metrics shows, at every stored
resolution, and the JSON API's chart of them (whichever worker answers) says
so too; a graceful stop stores the last changes and counts none twice."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aegis_mw.core.custom_history import CustomRow
from aegis_mw.core.labeled import DEFAULT_BUCKETS
from aegis_mw.core.rollup import LEVELS
from aegis_mw.sinks import build_sink
from tests import servers
from tests.servers import gunicorn_command, gunicorn_process
from tests.test_gunicorn_custom_metrics import (
    APP,
    WORKERS,
    Share,
    expected_figures,
    plan,
    record,
    send,
    settled,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs os.fork (POSIX)"),
]

VIEWER = "custom-history-viewer-token"
#: Every worker samples at each 5-second boundary: what it recorded is stored
#: within about one bucket and a flush.
STORED_DEADLINE = 60.0
FAR = 2**40


def stored(sink: Any, level: int) -> dict[str, Any]:
    """What the store holds at ``level``, all buckets added up: per region the
    orders, and the order times' counts per bucket and sum."""
    orders: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    rows: list[CustomRow] = sink.read_custom_rollups("orders", level, 0, FAR)
    for row in rows:
        [region] = json.loads(row.labels)
        orders[region] = orders.get(region, 0) + row.total
    for row in sink.read_custom_rollups("order_seconds", level, 0, FAR):
        [region] = json.loads(row.labels)
        held = counts.setdefault(region, [0] * (len(DEFAULT_BUCKETS) + 1))
        assert row.counts is not None and len(row.counts) == len(held)
        counts[region] = [a + b for a, b in zip(held, row.counts, strict=True)]
        sums[region] = sums.get(region, 0.0) + row.total
    return {"orders": orders, "counts": counts, "sums": sums}


def recorded(total: Share) -> dict[str, Any]:
    """What the workers answered for, in the shape of :func:`stored`."""
    bounds = [*DEFAULT_BUCKETS, math.inf]
    return {
        "orders": {region: float(amount) for region, amount in total.orders.items()},
        "counts": {
            region: [
                sum(1 for value in values if low < value <= high)
                for low, high in zip([-math.inf, *bounds[:-1]], bounds, strict=True)
            ]
            for region, values in total.seconds.items()
        },
        "sums": {region: sum(values) for region, values in total.seconds.items()},
    }


def test_stored_custom_metrics_add_up_to_what_every_worker_recorded(
    tmp_path: Path, database_url: str
) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    env = servers.multiprocess_env(shared)
    env.update(
        AEGIS_SINK=database_url,
        AEGIS_ACCESS=json.dumps({"api": {"tokens": [VIEWER]}}),
    )
    reader = build_sink(database_url)
    try:
        with gunicorn_process(gunicorn_command(WORKERS, APP), tmp_path, env) as (
            process,
            lines,
            seen,
        ):
            base, pids = servers.gunicorn_started(lines, seen, WORKERS, time.monotonic() + 60)
            shares: dict[int, Share] = {}
            for path, query in plan():
                record(shares, send(base, path, query), path, query)
            assert set(shares) <= set(pids)
            total = Share()
            for share in shares.values():
                total.add(share)
            # Spread over several workers: the store adds up their changes.
            assert sum(1 for share in shares.values() if share.orders) >= 2, shares
            settled(base, expected_figures(total))  # /metrics: every worker's

            want = recorded(total)
            # Stored within a bucket or so, by every worker, at every resolution.
            servers.settled(
                lambda: [stored(reader, level) for level in LEVELS],
                lambda answer: all(level == want for level in answer),
                1,
                STORED_DEADLINE,
            )
            # The API's chart, whichever worker answers, says the same.
            answer = httpx.get(
                f"{base}/api/metrics/custom-metric-history",
                params={"name": "orders_total", "range": "1h", "by": "region", "limit": 100},
                headers={"Authorization": f"Bearer {VIEWER}", "connection": "close"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            charted = {
                series["labels"]["region"]: sum(p["increase"] for p in series["points"])
                for series in answer.json()["data"]["series"]
            }
            assert charted == want["orders"]

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        # The workers' last samples at shutdown counted nothing twice.
        assert [stored(reader, level) for level in LEVELS] == [want] * len(LEVELS)
        metrics = {metric.name: metric for metric in reader.read_custom_metrics()}
        assert (metrics["orders"].kind, metrics["orders"].labels) == ("counter", ("region",))
        assert metrics["order_seconds"].bounds == tuple(DEFAULT_BUCKETS)
        assert metrics["active_jobs"].mode == "sum"
    finally:
        reader.close()
    output = "\n".join(seen)
    assert "Traceback" not in output, output

"""Two pipelines sharing a metrics directory (as two workers do): each one's live
reads show both one's traffic, exactly as one pipeline that saw all of it would."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aegis_mw import Aegis
from aegis_mw.realtime import sections
from tests.harness import inbox_item

STABLE = (
    "window_requests", "window_errors", "error_rate", "latency_avg_ms", "latency_p50_ms",
    "latency_p95_ms", "latency_p99_ms", "total_requests", "total_errors", "status_totals",
    "websocket_sessions_total",
)  # fmt: skip


def traffic(seed: int, routes: tuple[str, ...], count: int) -> list[list[Any]]:
    """Finished requests of the last few seconds (monotonic times, as the clock reads)."""
    rng = random.Random(seed)
    now = time.perf_counter()
    items = []
    for number in range(count):
        start = now - rng.uniform(0.5, 8.0)
        route = rng.choice(routes)
        items.append(
            inbox_item(
                route.replace("{n}", str(number)),
                route=route,
                status=rng.choice((200, 200, 200, 404, 500)),
                start=start,
                end=start + rng.lognormvariate(-4, 1),
            )
        )
    return items


def fed(aegis: Aegis, *batches: list[list[Any]]) -> Aegis:
    for batch in batches:
        for item in batch:
            aegis.recorder.offer(list(item))
    assert aegis.force_flush(timeout=10)  # its cycle publishes for the others
    return aegis


def figures(aegis: Aegis) -> dict[str, Any]:
    snapshot = sections.realtime_json(aegis.realtime())
    return {key: snapshot[key] for key in STABLE}


def test_each_worker_reads_the_traffic_of_both(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    first = traffic(1, ("/a/{n}", "/b/{n}"), 700)
    second = traffic(2, ("/b/{n}", "/c/{n}"), 500)
    shared = {"metrics_registry": "none", "metrics_multiprocess_dir": str(tmp_path)}
    one = fed(make_aegis(**shared), first)
    other = fed(make_aegis(**shared), second)
    alone = fed(make_aegis(metrics_registry="none"), first, second)

    expected = figures(alone)
    assert expected["total_requests"] == 1200
    # Percentiles from the merged histograms: the same as from one of all.
    assert figures(one) == expected
    assert figures(other) == expected
    wanted = ("topEndpoints", "requestRate", "statusDistribution", "latencyPercentiles")
    merged = sections.build(other, wanted)
    whole = sections.build(alone, wanted)
    assert merged["topEndpoints"] == whole["topEndpoints"]
    for name in wanted[1:]:  # the same seconds (timestamps may differ by the read's moment)
        assert [{k: v for k, v in point.items() if k != "timestamp"}
                for point in merged[name]["points"]] == [
            {k: v for k, v in point.items() if k != "timestamp"} for point in whole[name]["points"]
        ]  # fmt: skip


def test_gauges_count_while_their_worker_runs_its_requests_for_good(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    shared = {"metrics_registry": "none", "metrics_multiprocess_dir": str(tmp_path)}
    worker = make_aegis(**shared)
    reader = make_aegis(**shared)
    worker.aggregates.in_flight = 3
    worker.aggregates.websockets_active = 2
    fed(worker, traffic(3, ("/a/{n}",), 50))
    snapshot = reader.realtime()
    assert (snapshot.in_flight, snapshot.websocket_connections_active) == (3, 2)
    assert snapshot.total_requests == 50
    assert worker.shutdown(timeout=10)  # stopped: its requests stay, its gauges go
    snapshot = reader.realtime()
    assert (snapshot.in_flight, snapshot.websocket_connections_active) == (0, 0)
    assert snapshot.total_requests == 50


def test_a_damaged_live_part_is_left_out_and_the_rest_merged(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    import json

    shared = {"metrics_registry": "none", "metrics_multiprocess_dir": str(tmp_path)}
    worker = fed(make_aegis(**shared), traffic(4, ("/a/{n}",), 30))
    reader = make_aegis(**shared)
    [path] = tmp_path.glob("aegis-live_*_*.json")
    data = json.loads(path.read_text())
    data["slots"] = [["not", "a", "slot"]]
    path.write_text(json.dumps(data))
    assert reader.realtime().total_requests == 0  # its live figures left out
    text = reader.metrics.endpoint.respond().body.decode()
    assert 'aegis_http_requests_total{method="GET",route="/a/{n}"' in text  # the rest merged
    assert worker is not None


def test_a_file_with_values_out_of_range_fails_no_read(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    import json

    shared = {"metrics_registry": "none", "metrics_multiprocess_dir": str(tmp_path)}
    fed(make_aegis(**shared), traffic(5, ("/a/{n}",), 30))
    reader = make_aegis(**shared)
    [path] = tmp_path.glob("aegis-live_*_*.json")
    data = json.loads(path.read_text())
    data["totals"][0] = float("inf")
    path.write_text(json.dumps(data))
    assert reader.realtime().total_requests == 0  # its live figures left out, no error
    data["totals"][0] = 0
    data["latency"][0][2] = [0, 2**64]
    path.write_text(json.dumps(data))
    assert reader.realtime().total_requests == 0  # its live figures left out, no error
    sections.build(reader, ("topEndpoints",))
    assert reader.metrics.endpoint.respond().status == 200


def test_a_dead_workers_live_figures_outlive_its_file(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """Archived by a living worker (twice), its requests still count once."""
    import subprocess
    import sys

    shared = {"metrics_registry": "none", "metrics_multiprocess_dir": str(tmp_path)}
    worker = fed(make_aegis(**shared), traffic(6, ("/a/{n}",), 40))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    worker.shutdown(timeout=10)
    for prefix in ("aegis_", "aegis-live_"):  # as if it had died
        [own] = tmp_path.glob(f"{prefix}*_*.json")
        own.rename(tmp_path / f"{prefix}{int(dead.stdout)}_0a0b0c0d.json")
    reader = make_aegis(**shared)
    fed(reader, traffic(7, ("/b/{n}",), 10))  # its cycle archives the dead one's files
    assert not list(tmp_path.glob(f"*_{int(dead.stdout)}_*.json"))
    assert (tmp_path / "aegis-live_archive.json").exists()
    assert reader.realtime().total_requests == 50
    top = {row["route"]: row["requests"] for row in sections.build(reader, ("topEndpoints",))[
        "topEndpoints"]}  # fmt: skip
    assert top == {"/a/{n}": 40, "/b/{n}": 10}
    again = make_aegis(**shared)
    assert again.realtime().total_requests == 50 + 0  # the archive, and the reader's file

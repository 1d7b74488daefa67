"""Several processes, one /metrics: snapshot files merged, dead workers archived.

Other workers are real processes here: a child that stays alive while the test
runs, and one that has exited (its pid is free), each with a snapshot written
by a pipeline of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aegis_mw import Aegis, ConfigError
from aegis_mw.exposition.multiprocess import ARCHIVE, encode
from tests.harness import inbox_item

ROUTE = "/items/{id}"


def totals(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (
                "aegis_http_requests_total",
                "aegis_http_request_duration_seconds_count",
                "aegis_http_requests_in_progress",
                "aegis_buffer_records",
            ):
                key = sample.name + ("/" + sample.labels.get("buffer", "") if "buffer" in
                                     sample.labels else "")  # fmt: skip
                found[key] = found.get(key, 0) + sample.value
    return found


def other_worker(
    directory: Path, pid: int, requests: int, make_aegis: Callable[..., Aegis], in_flight: int = 0
) -> None:
    """A snapshot as worker ``pid`` would publish it, built by a pipeline of its own."""
    worker = make_aegis(metrics_registry="none")
    for _ in range(requests):
        worker.recorder.offer(inbox_item("/items/1", route=ROUTE))
    worker.aggregates.in_flight = in_flight
    reading = worker.metrics.read_own()
    data = encode(reading, pid=pid, live=True)
    (directory / f"aegis_{pid}_0a0b0c0d.json").write_text(json.dumps(data))


def test_the_answering_worker_adds_every_other_workers_figures(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    other_worker(tmp_path, living_pid, requests=5, make_aegis=make_aegis, in_flight=2)
    other_worker(tmp_path, dead_pid, requests=7, make_aegis=make_aegis, in_flight=3)
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    for _ in range(4):
        aegis.recorder.offer(inbox_item("/items/1", route=ROUTE))

    found = totals(aegis.metrics.endpoint.respond().body.decode())
    assert found["aegis_http_requests_total"] == 4 + 5 + 7  # the dead worker's still count
    assert found["aegis_http_request_duration_seconds_count"] == 16
    assert found["aegis_http_requests_in_progress"] == 2  # gauges: living workers only

    # Publishing (the flusher does it after each cycle) writes ours and archives the dead.
    assert aegis.force_flush(10)
    names = sorted(path.name for path in tmp_path.glob("aegis_*.json"))
    assert ARCHIVE in names
    assert not any(name.startswith(f"aegis_{dead_pid}_") for name in names)
    assert any(name.startswith(f"aegis_{living_pid}_") for name in names)
    found = totals(aegis.metrics.endpoint.respond().body.decode())
    assert found["aegis_http_requests_total"] == 16  # nothing lost or counted twice


def test_a_forked_worker_publishes_under_its_own_name(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    aegis.recorder.offer(inbox_item("/items/1", route=ROUTE))
    assert aegis.force_flush(10)
    [mine] = tmp_path.glob("aegis_*_*.json")
    data: dict[str, Any] = json.loads(mine.read_text())
    assert data["pid"] == int(mine.name.split("_")[1])
    assert sum(row[-1] for row in data["requests"]) == 1
    assert aegis.shutdown(10)
    data = json.loads(mine.read_text())
    assert data["gauges"] == {"in_flight": 0, "websockets_active": 0, "buffered": 0}


def test_a_missing_or_read_only_directory_fails_at_start(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_aegis(metrics_multiprocess_dir=str(tmp_path / "missing"))
    assert caught.value.option == "metrics_multiprocess_dir"
    with pytest.raises(ConfigError) as caught:
        make_aegis(environ={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")})
    assert caught.value.source == "PROMETHEUS_MULTIPROC_DIR"
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="existing directory"):
        make_aegis(metrics_multiprocess_dir=str(a_file))


def test_other_buckets_are_not_merged(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int
) -> None:
    worker = make_aegis(metrics_registry="none", metrics_buckets=[0.5, 1])
    worker.recorder.offer(inbox_item("/items/1", route=ROUTE))
    data = encode(worker.metrics.read_own(), pid=living_pid, live=True)
    (tmp_path / f"aegis_{living_pid}_00000000.json").write_text(json.dumps(data))
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    found = totals(aegis.metrics.endpoint.respond().body.decode())
    assert "aegis_http_requests_total" not in found  # ours has none, theirs does not fit


def test_a_damaged_snapshot_is_skipped_whole_and_archived_away(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    """A file with the right format and buckets but missing or odd fields (another
    version, a hand-made one) is not half added, never fails a scrape, and a dead
    process's one is removed like any other; so is a temporary file it left."""
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    good = encode(aegis.metrics.read_own(), pid=living_pid, live=True)
    bounds = good["bounds"]
    damaged: list[dict[str, Any]] = [
        {"format": 1, "bounds": bounds},
        {**good, "requests": [["GET", ROUTE, "200", 5]], "sessions": [["x"]]},
        {**good, "requests": [["GET", ROUTE, "200", 5]], "gauges": {"in_flight": "2"}},
        {**good, "requests": [["GET", ROUTE, "200", 5]], "sinks": [{"name": "memory"}]},
    ]
    for index, data in enumerate(damaged):
        (tmp_path / f"aegis_{living_pid}_{index:08x}.json").write_text(json.dumps(data))
    (tmp_path / f"aegis_{dead_pid}_00000000.json").write_text('{"format": 1, "bounds": "x"}')
    (tmp_path / f"aegis_{dead_pid}_00000001.tmp").write_text("{")
    aegis.recorder.offer(inbox_item("/items/1", route=ROUTE))

    response = aegis.metrics.endpoint.respond()
    assert response.status == 200
    assert totals(response.body.decode())["aegis_http_requests_total"] == 1  # ours alone

    assert aegis.force_flush(10)
    left = {path.name for path in tmp_path.iterdir()}
    assert not any(name.startswith(f"aegis_{dead_pid}_") for name in left)
    assert sum(name.startswith(f"aegis_{living_pid}_") for name in left) == len(damaged)
    assert totals(aegis.metrics.endpoint.respond().body.decode())["aegis_http_requests_total"] == 1


def retention_samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("aegis_retention_"):
                found[sample.name] = found.get(sample.name, 0) + sample.value
    return found


def test_retention_figures_add_up_and_the_lease_counts_living_workers_only(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    snapshots = {}
    for pid, pruned, lease in ((living_pid, 700, 1), (dead_pid, 300, 1)):
        data = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=pid, live=True)
        [sink] = data["sinks"]
        sink.update(pruned=pruned, prune_failures=1, prune_lease=lease)
        snapshots[pid] = data
    # A worker of the version before these figures (a rolling upgrade): none of them.
    old = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=living_pid, live=True)
    for field in ("pruned", "prune_failures", "prune_lease"):
        del old["sinks"][0][field]
    for name, data in (("a", snapshots[living_pid]), ("b", snapshots[dead_pid]), ("c", old)):
        pid = data["pid"]
        (tmp_path / f"aegis_{pid}_0a0b0c{name}0.json").write_text(json.dumps(data))
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))

    found = retention_samples(aegis.metrics.endpoint.respond().body.decode())
    assert found == {
        "aegis_retention_deleted_rows_total": 1000,  # the dead worker's still count
        "aegis_retention_errors_total": 2,
        "aegis_retention_lease_held": 1,  # a dead holder holds nothing
    }


def spool_samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("aegis_spool_")
    }


def test_spool_counters_add_up_and_its_gauges_are_the_shared_files_not_a_sum(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    figures = {
        # The workers read one spool file: the same records, seen a moment apart.
        living_pid: {"spool_limit_bytes": 1000, "spool_records": 40, "spool_bytes": 400,
                         "spool_oldest_age_seconds": 7.5, "spooled": 50, "replayed": 10, "spool_lost": 1},
        dead_pid: {"spool_limit_bytes": 1000, "spool_records": 90, "spool_bytes": 900,
                       "spool_oldest_age_seconds": 30.0, "spooled": 30, "replayed": 5, "spool_lost": 2},
    }  # fmt: skip
    for name, (pid, values) in zip("ab", figures.items(), strict=True):
        data = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=pid, live=True)
        data["sinks"][0].update(values)
        (tmp_path / f"aegis_{pid}_0a0b0c{name}0.json").write_text(json.dumps(data))
    old = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=living_pid, live=True)
    for field in figures[living_pid]:
        del old["sinks"][0][field]  # a worker of the version before the spool
    (tmp_path / f"aegis_{living_pid}_0a0b0cc0.json").write_text(json.dumps(old))
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))

    found = spool_samples(aegis.metrics.endpoint.respond().body.decode())
    assert found == {
        "aegis_spool_records": 40,  # the living worker's reading; a dead one's is old
        "aegis_spool_bytes": 400,
        "aegis_spool_limit_bytes": 1000,
        "aegis_spool_oldest_age_seconds": 7.5,
        "aegis_spool_spooled_records_total": 80,  # what each worker did: summed
        "aegis_spool_replayed_records_total": 15,
        "aegis_spool_lost_records_total": 3,
    }
    # Without a spool anywhere: no spool series at all.
    assert spool_samples(make_aegis(metrics_registry="none").metrics.endpoint.respond().body
                         .decode()) == {}  # fmt: skip


def test_what_each_workers_store_dropped_itself_adds_up(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    """``aegis_sink_rejected_total``: every worker's counts summed by kind, a
    worker of a version before them counting none, a damaged count skipping
    its file whole."""
    counts = {living_pid: {"data_points": 4}, dead_pid: {"data_points": 3, "log_records": 2}}
    for name, (pid, rejected) in zip("ab", counts.items(), strict=True):
        data = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=pid, live=True)
        data["sinks"][0]["rejected"] = rejected
        (tmp_path / f"aegis_{pid}_0a0b0c{name}0.json").write_text(json.dumps(data))
    old = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=living_pid, live=True)
    del old["sinks"][0]["rejected"]
    (tmp_path / f"aegis_{living_pid}_0a0b0cc0.json").write_text(json.dumps(old))
    damaged = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=living_pid,
                     live=True)  # fmt: skip
    damaged["sinks"][0]["rejected"] = {"data_points": "many"}
    (tmp_path / f"aegis_{living_pid}_0a0b0cd0.json").write_text(json.dumps(damaged))
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))

    text = aegis.metrics.endpoint.respond().body.decode()
    found = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "aegis_sink_rejected_total"
    }
    assert found == {"data_points": 7, "log_records": 2}


def test_a_sink_given_every_request_says_so_in_the_merged_figures(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int
) -> None:
    """``counts_every_request`` (whether ``sampled_out`` is on the sink's side
    of the conservation law) is the sinks' configuration, the same in every
    worker: a worker's True stands, and a file of a version before it says
    nothing."""
    data = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=living_pid, live=True)
    assert data["sinks"][0]["counts_every_request"] is False
    data["sinks"][0]["counts_every_request"] = True
    (tmp_path / f"aegis_{living_pid}_0a0b0ca0.json").write_text(json.dumps(data))
    old = encode(make_aegis(metrics_registry="none").metrics.read_own(), pid=living_pid, live=True)
    del old["sinks"][0]["counts_every_request"]
    (tmp_path / f"aegis_{living_pid}_0a0b0cb0.json").write_text(json.dumps(old))
    aegis = make_aegis(metrics_registry="none", metrics_multiprocess_dir=str(tmp_path))
    [sink] = aegis.metrics.read().stats.sinks
    assert sink.counts_every_request is True
    (tmp_path / f"aegis_{living_pid}_0a0b0ca0.json").unlink()
    [sink] = aegis.metrics.read().stats.sinks
    assert sink.counts_every_request is False

"""The /metrics endpoint's edges: Accept and Accept-Encoding negotiation, HELP
escaping, text that cannot be encoded, concurrent first scrapes, system metrics
whose path is missing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from aegis_mw import Aegis, ConfigError
from aegis_mw.endpoints.metrics import accepts_gzip, wants_openmetrics
from aegis_mw.exposition import families as families_module
from aegis_mw.exposition.families import FamilyBuilder
from aegis_mw.exposition.text import Family, render
from tests.harness import inbox_item

PROMETHEUS = (
    "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS, True),
        ("application/openmetrics-text", True),
        ("Application/OpenMetrics-Text; Version=1.0.0", True),  # case-insensitive
        ('application/openmetrics-text; version="1.0.0"', True),
        ("application/openmetrics-text; version=0.0.1", False),
        ("application/openmetrics-text;version=1.0.0;q=0, text/plain", False),
        ("application/openmetrics-text;q=0.000", False),
        ("application/openmetrics-text;q=bad", False),
        ("text/plain;version=0.0.4", False),
        ("", False),
    ],
)
def test_accept_negotiation(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


@pytest.mark.parametrize(
    ("accept_encoding", "gzip"),
    [
        ("gzip", True),
        ("br, GZIP;q=0.5", True),
        ("gzip;Q=1", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0.", False),
        ("identity", False),
        ("", False),
    ],
)
def test_accept_encoding_negotiation(accept_encoding: str, gzip: bool) -> None:
    assert accepts_gzip(accept_encoding) is gzip


@pytest.mark.parametrize("openmetrics", [False, True])
def test_help_texts_are_escaped_for_their_format(openmetrics: bool) -> None:
    awkward = 'Say "hi"\\there\nsecond line.'
    family = Family("demo_things", "gauge", awkward, [("", "", 1)])
    text = render([family], openmetrics=openmetrics)
    quote = '\\"' if openmetrics else '"'
    assert f"# HELP demo_things Say {quote}hi{quote}\\\\there\\nsecond line.\n" in text
    parse = parse_openmetrics if openmetrics else parse_text
    [parsed] = parse(text)
    assert parsed.documentation == awkward


@pytest.mark.anyio
async def test_a_label_value_that_cannot_be_encoded_does_not_break_the_scrape(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(metrics_registry="none")
    aegis.health.add("disk\udcff", lambda: True)
    await aegis.health.results()
    response = await anyio.to_thread.run_sync(aegis.metrics.endpoint.respond)
    assert response.status == 200
    assert 'aegis_health_check_status{check="disk?"} 1' in response.body.decode()


def test_concurrent_first_scrapes_each_show_every_bucket(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two scrapes build their first histogram at once (worker threads): the one that
    comes second must not see the new bounds with the bucket texts not made yet."""
    aegis = make_aegis(metrics_registry="none", metrics_buckets=[0.5, 1.0])
    aegis.recorder.offer(inbox_item("/items/1", route="/items/{id}"))
    reading = aegis.metrics.read_own()
    builder = FamilyBuilder()
    inside, release = threading.Event(), threading.Event()
    real_number = families_module.number

    def slow_number(value: float | int) -> str:
        if threading.current_thread() is first:
            inside.set()  # the first scrape is half-way through the bucket texts
            release.wait(10)
        return real_number(value)

    def buckets(families: list[Family]) -> list[str]:
        [duration] = [f for f in families if f.name.endswith("request_duration_seconds")]
        return [labels for suffix, labels, _ in duration.samples if suffix == "_bucket"]

    found: list[list[str]] = []
    monkeypatch.setattr(families_module, "number", slow_number)
    first = threading.Thread(target=lambda: found.append(buckets(builder.build(reading))))
    first.start()
    try:
        assert inside.wait(10)
        second = buckets(builder.build(reading))
    finally:
        release.set()
        first.join(10)
    expected = [f'method="GET",route="/items/{{id}}",le="{le}"' for le in ("0.5", "1.0", "+Inf")]
    assert second == expected
    assert found == [expected]


def test_system_metrics_need_an_existing_disk_path(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    pytest.importorskip("psutil")
    with pytest.raises(ConfigError) as caught:
        make_aegis(metrics_system=True, metrics_disk_path=str(tmp_path / "missing"))
    assert caught.value.option == "metrics_disk_path"


def test_a_disk_path_gone_after_start_only_drops_the_disk_series(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    pytest.importorskip("psutil")
    watched = tmp_path / "data"
    watched.mkdir()
    aegis = make_aegis(metrics_registry="none", metrics_system=True, metrics_disk_path=str(watched))
    assert "aegis_system_disk_bytes{" in aegis.metrics.endpoint.respond().body.decode()
    watched.rmdir()
    response = aegis.metrics.endpoint.respond()
    assert response.status == 200
    text = response.body.decode()
    assert "aegis_system_disk_bytes{" not in text
    assert "aegis_system_memory_bytes{" in text

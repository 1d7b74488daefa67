"""/metrics of the FastAPI example under uvicorn, judged by Prometheus's own tools:
``promtool check metrics`` on what it serves, and a real Prometheus server (Debian's
``prometheus`` package, on 127.0.0.1, scraping every second) whose query API must
return the totals this test sent.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.servers import prometheus_server, prometheus_tool, promtool_checks, uvicorn_server

pytestmark = pytest.mark.slow
CLIENT_TIMEOUT = 10.0
PROMETHEUS_DEADLINE = 90.0  # start-up, a few scrape intervals, query


def send_traffic(url: str) -> dict[str, int]:
    """Requests with known outcomes; returns the expected count per route label."""
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) as client:
        for item in range(20):
            assert client.get(f"/items/{item}").status_code == 200
        for _ in range(3):
            assert client.post("/items/", json={"name": "a"}).status_code == 201
        for path in ('/no/such/"quoted"\\path', "/missing"):
            assert client.get(path).status_code == 404
    return {"/items/{item_id}": 20, "/items/": 3, "<unmatched>": 2}


def test_promtool_has_nothing_to_say_about_our_output(tmp_path: Path) -> None:
    """Of an app with exemplars to show: the 0.0.4 format has none of them."""
    prometheus_tool("promtool")  # missing: a failure in CI before a server starts for nothing
    with uvicorn_server("examples.fastapi_app:app", tmp_path) as server:
        send_traffic(server.url)
        send_traced_traffic(server.url)
        deadline = time.monotonic() + PROMETHEUS_DEADLINE
        openmetrics = ""
        while time.monotonic() < deadline and '# {trace_id="' not in openmetrics:
            # Each a round trip to the server until the flusher took them.
            openmetrics = httpx.get(
                f"{server.url}/metrics",
                headers={"accept": "application/openmetrics-text"},
                timeout=CLIENT_TIMEOUT,
            ).text
        assert any(f'# {{trace_id="{trace_id}"' in openmetrics for trace_id in TRACE_IDS)
        response = httpx.get(f"{server.url}/metrics", timeout=CLIENT_TIMEOUT)
        server.terminate()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "aegis_http_requests_total{" in response.text
    assert "process_cpu_seconds_total" in response.text  # the default registry, alongside
    promtool_checks(response.text)


def query(url: str, expression: str) -> dict[str, float] | None:
    """Route label -> value for an instant query; None while Prometheus is not ready."""
    try:
        response = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=5)
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    return {
        row["metric"].get("route", ""): float(row["value"][1])
        for row in response.json()["data"]["result"]
    }


def test_a_prometheus_server_scrapes_the_totals_we_sent(tmp_path: Path) -> None:
    with uvicorn_server("examples.fastapi_app:app", tmp_path) as app:
        expected = send_traffic(app.url)
        with prometheus_server(app.port, tmp_path) as prometheus:
            deadline = time.monotonic() + PROMETHEUS_DEADLINE
            seen: dict[str, float] | None = None
            # Prometheus scrapes on its own schedule: ask until it has the totals
            # (each query is a round trip to the server, not a sleep).
            while time.monotonic() < deadline:
                seen = query(prometheus, "sum by (route) (aegis_http_requests_total)")
                if seen == expected:
                    break
            assert seen == expected
            up = query(prometheus, 'up{job="app"}')
            assert up == {"": 1.0}
        app.terminate()


TRACE_IDS = [f"{index:032x}" for index in range(0xA1, 0xA1 + 6)]


def send_traced_traffic(url: str) -> set[str]:
    """Requests that each carry a W3C traceparent; returns their trace ids."""
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) as client:
        for index, trace_id in enumerate(TRACE_IDS):
            headers = {"traceparent": f"00-{trace_id}-{index + 1:016x}-01"}
            assert client.get(f"/items/{index}", headers=headers).status_code == 200
    return set(TRACE_IDS)


def exemplar_traces(url: str, expression: str) -> set[str] | None:
    """The trace ids of the exemplars Prometheus stored for ``expression``'s
    series over the last hour; None while it cannot answer."""
    now = time.time()
    try:
        response = httpx.get(
            f"{url}/api/v1/query_exemplars",
            params={"query": expression, "start": now - 3600, "end": now + 60},
            timeout=5,
        )
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    return {
        exemplar["labels"]["trace_id"]
        for series in response.json()["data"] or []
        for exemplar in series["exemplars"]
    }


def test_a_prometheus_server_with_exemplar_storage_keeps_our_exemplars(tmp_path: Path) -> None:
    """Prometheus negotiates OpenMetrics, parses the exemplars on our counter
    and buckets (a line it could not parse would fail the whole scrape: the
    target's health says so) and answers its exemplars API with the trace
    ids of the requests sent."""
    with uvicorn_server("examples.fastapi_app:app", tmp_path) as app:
        sent = send_traced_traffic(app.url)
        with prometheus_server(app.port, tmp_path, features=("exemplar-storage",)) as prometheus:
            deadline = time.monotonic() + PROMETHEUS_DEADLINE
            buckets: set[str] | None = None
            while time.monotonic() < deadline:
                buckets = exemplar_traces(
                    prometheus,
                    'aegis_http_request_duration_seconds_bucket{route="/items/{item_id}"}',
                )
                if buckets:
                    break
            # Sampled (a window's first request, and its slower ones): some of
            # the requests sent, which ones depending on their times.
            assert buckets and buckets <= sent
            # One series: one exemplar at a time, of the requests sent.
            counted = exemplar_traces(
                prometheus, 'aegis_http_requests_total{route="/items/{item_id}"}'
            )
            assert counted and counted <= sent
            targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()
            [target] = targets["data"]["activeTargets"]
            assert (target["health"], target["lastError"]) == ("up", "")
        app.terminate()

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
    prometheus_tool("promtool")  # missing: a failure in CI before a server starts for nothing
    with uvicorn_server("examples.fastapi_app:app", tmp_path) as server:
        send_traffic(server.url)
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

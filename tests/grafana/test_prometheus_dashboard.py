"""The Prometheus dashboard and the recording rules against a real Prometheus
(Debian's ``prometheus`` on 127.0.0.1, scraping and evaluating every second)
that scraped a real app: the FastAPI example under uvicorn, with the rules
loaded.

The app serves pages, a 404, server errors, a stream, a health check and a
WebSocket session, in two waves: a counter's first scrape only creates its
series, and a rate needs it to grow between two scrapes. Then every panel's
query, with Grafana's variables and intervals set as Grafana sets them, must
parse and answer at least one series holding a number; so must every recorded
series. None is exempt: the app produces data for every panel (the in-flight
and open-connection gauges answer 0, which is data).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from aegis_mw.grafana import exported
from tests.grafana.dashboards import dashboard, label, targets, variables
from tests.grafana.promql import (
    Result,
    all_of,
    has_a_number,
    instant,
    interpolated,
    label_values,
    selection,
    until,
    up,
)
from tests.servers import prometheus_server, uvicorn_server

pytestmark = pytest.mark.slow
CLIENT_TIMEOUT = 10.0
DEADLINE = 90.0  # start-up, a few scrapes and rule evaluations
#: Grafana's $__rate_interval and $__range here: both waves fall within them.
RATE_INTERVAL = "1m"
RANGE = "5m"
ROUTES = {"/items/{item_id}", "/items/", "/fail", "/stream", "<unmatched>"}


def wave(url: str) -> None:
    """One round of traffic touching every panel."""
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) as client:
        for item in range(10):
            assert client.get(f"/items/{item}").status_code == 200
        assert client.post("/items/", json={"name": "a"}).status_code == 201
        assert client.get("/missing").status_code == 404
        for _ in range(2):
            # uvicorn closes the connection of a request whose app raised: a new one each.
            assert client.get("/fail", headers={"Connection": "close"}).status_code == 500
        assert client.get("/stream").status_code == 200
        assert client.get("/health/ready").status_code == 200  # the health check's gauge
    socket_url = "ws" + url.removeprefix("http") + "/ws/echo"
    with connect(socket_url, open_timeout=CLIENT_TIMEOUT, close_timeout=CLIENT_TIMEOUT) as ws:
        ws.send("hello")
        assert ws.recv(timeout=CLIENT_TIMEOUT) == "hello"


def served(url: str) -> float:
    """The requests the app counted, read from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=CLIENT_TIMEOUT).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "aegis_http_requests_total"
    )


def one_value(expected: float) -> Callable[[Result], bool]:
    def check(result: Result) -> bool:
        return len(result) == 1 and float(result[0]["value"][1]) == expected

    return check


def scraped_two_waves(app_url: str, prometheus: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not up(prometheus):  # each try is a connection attempt, not a sleep
        if time.monotonic() > deadline:
            pytest.fail("Prometheus did not become ready")
    until(prometheus, 'up{job="app"}', one_value(1.0), DEADLINE)
    for _ in range(2):
        wave(app_url)
        total = served(app_url)
        query = 'sum(aegis_http_requests_total{job="app"})'
        until(prometheus, query, one_value(total), DEADLINE)


def test_every_panel_and_recorded_series_answers_with_data(tmp_path: Path) -> None:
    data = dashboard("prometheus-dashboard")
    rules = tmp_path / "recording-rules.yml"
    rules.write_text(exported("recording-rules"), encoding="utf-8")
    with (
        uvicorn_server("examples.fastapi_app:app", tmp_path) as app,
        prometheus_server(app.port, tmp_path, (rules,)) as prometheus,
    ):
        scraped_two_waves(app.url, prometheus)

        # The variables, each set to "All" as the dashboard opens, in order (a
        # variable's query reads the ones before it).
        chosen: dict[str, str] = {}
        listed: dict[str, list[str]] = {}
        for name, variable in variables(data).items():
            if variable["type"] == "datasource":
                continue  # which Prometheus: the one asked
            listed[name] = label_values(prometheus, variable["query"], chosen)
            chosen[name] = all_of(variable, listed[name])
        assert listed["job"] == ["app"]
        assert listed["instance"] == [f"127.0.0.1:{app.port}"]
        assert set(listed["route"]) >= ROUTES

        queried = 0
        for panel, target in targets(data):
            expr = interpolated(target["expr"], chosen, RATE_INTERVAL, RANGE)
            result = until(prometheus, expr, has_a_number, DEADLINE)
            assert result, label(panel, target)
            queried += 1
        assert queried == 31

        # Two routes picked: what a panel shows by route is theirs alone.
        picked = ["/items/{item_id}", "/fail"]
        narrowed = {**chosen, "route": selection(picked)}
        assert narrowed["route"] == "(/items/\\\\{item_id\\\\}|/fail)"
        for panel, target in targets(data):
            if "$route" not in target["expr"]:
                continue
            expr = interpolated(target["expr"], narrowed, RATE_INTERVAL, RANGE)
            routes = {series["metric"].get("route") for series in instant(prometheus, expr)}
            assert routes <= {*picked, None}, (label(panel, target), routes)
            if panel["title"] == "Request rate by route":
                assert routes == set(picked)

        # Every recorded series, once Prometheus has evaluated the rules.
        recorded = 0
        for group in yaml.safe_load(rules.read_text())["groups"]:
            for rule in group["rules"]:
                matchers = ['job="app"']
                matchers += [f'{key}="{value}"' for key, value in rule.get("labels", {}).items()]
                selector = rule["record"] + "{" + ", ".join(matchers) + "}"
                result = until(prometheus, selector, has_a_number, DEADLINE)
                if rule["record"].startswith("job_route"):
                    assert {series["metric"]["route"] for series in result} >= {"/fail"}
                recorded += 1
        assert recorded == 15
        app.terminate()

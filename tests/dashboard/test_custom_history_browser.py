"""The panel of the app's own metrics over a stored range, in headless
Chromium (Debian's package) against a real uvicorn app: a counter and a
gauge recorded and sampled by a forced flush into the history; the chosen
metric's range chart draws what the custom-metric-history API answers (a
counter per second, a gauge's value), and ``live`` draws the last minute
again. The app's clock is fake and stands still (moved only when the test
asks), so each sample's bucket is known."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import FakeClock
from tests.dashboard import test_browser
from tests.dashboard.test_browser import WAIT, printed_link, text_of, wait_until
from tests.servers import Server, child_environment, uvicorn_server

pytestmark = pytest.mark.slow

#: Headless Chromium through chromedriver, as the dashboard's own browser
#: tests get it (the same fixture: it skips, or fails in CI, without them).
browser = test_browser.browser

#: uvicorn builds the app in its own process from this factory.
APP = "tests.dashboard.test_custom_history_browser:custom_history_app"
#: Where the app's fake clock starts: 5 seconds into an hour (and a minute)
#: some hours ago, within every retention.
START = float(math.floor(time.time() / 3600) * 3600 - 6 * 3600 + 5)
ORDERS = {"eu": 30, "us": 15}  # the counter's increase: 45 in one 5-second bucket
DEPTH = 7.0  # the gauge's value, all along


def custom_history_app() -> Starlette:
    """An app with a counter and a gauge of its own, on a memory sink and a
    clock that stands still: the test records, moves the clock and flushes
    through its routes. Options come from AEGIS_* variables."""
    clock = FakeClock(wall=float(os.environ["CUSTOM_HISTORY_START"]))
    aegis = Aegis(sink="memory://", clock=clock, flush_interval=3600)
    orders = aegis.counter("orders_total", "Orders placed.", ("region",))
    depth = aegis.gauge("queue_depth", "Jobs waiting.")

    async def order(request: Request) -> PlainTextResponse:
        orders.labels(request.path_params["region"]).inc(int(request.path_params["count"]))
        return PlainTextResponse("ordered")

    async def set_depth(request: Request) -> PlainTextResponse:
        depth.set(float(request.path_params["value"]))
        return PlainTextResponse("set")

    async def advance(request: Request) -> PlainTextResponse:
        clock.advance(float(request.path_params["seconds"]))
        return PlainTextResponse("moved")

    async def flush(request: Request) -> PlainTextResponse:
        # Samples the metrics at once, into the bucket the clock is in.
        flushed = await anyio.to_thread.run_sync(aegis.force_flush, 10.0)
        return PlainTextResponse("flushed", status_code=200 if flushed else 503)

    return Starlette(
        routes=[
            Route("/orders/{region}/{count:int}", order, methods=["POST"]),
            Route("/depth/{value}", set_depth, methods=["POST"]),
            Route("/advance/{seconds}", advance, methods=["POST"]),
            Route("/flush", flush, methods=["POST"]),
        ],
        middleware=[Middleware(AegisMiddleware, aegis=aegis)],
    )


def post(server: Server, path: str) -> None:
    answer = httpx.post(f"{server.url}{path}", timeout=WAIT)
    assert answer.status_code == 200, (path, answer.text)


def record_and_sample(server: Server) -> None:
    """The depth set, and a first flush at the start (the gauge's sample of
    that bucket); then a minute on, the orders, sampled by a forced flush
    into the bucket 65 s after the minute began (with the depth, which also
    fills the buckets between: every sample of it is DEPTH)."""
    post(server, f"/depth/{DEPTH}")
    post(server, "/flush")
    post(server, "/advance/60")
    for region, count in ORDERS.items():
        post(server, f"/orders/{region}/{count}")
    post(server, "/flush")


def stored(server: Server, bearer: dict[str, str], name: str, range_name: str) -> dict[str, Any]:
    url = f"{server.url}/api/metrics/custom-metric-history?name={name}&range={range_name}"
    answer = httpx.get(url, headers=bearer, timeout=WAIT)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


#: Each range button's step: a counter's 45 in one step is 45 / step per second.
STEPS = {"15m": 15, "1h": 60, "24h": 900, "7d": 7200}


def check_range(
    driver: Any, server: Server, bearer: dict[str, str], name: str, range_name: str,
    expected: float,
) -> None:  # fmt: skip
    """The API's answer over ``range_name`` reaches ``expected`` at its
    highest point; pressing the range button draws it so (the counter's
    rate, the gauge's value), with as many points."""
    data = stored(server, bearer, name, range_name)
    assert data["range"]["step_seconds"] == STEPS[range_name]
    [series] = data["series"]
    figure, unit = ("value", "value") if data["kind"] == "gauge" else ("rate", "per second")
    values = [point[figure] for point in series["points"] if point[figure] is not None]
    assert max(values) == expected, values
    drawn = (f"last {range_name}: {unit}", expected, len(series["points"]))
    press(driver, range_name)
    wait_until(driver, lambda d: chart(d) == drawn, f"{name} over {range_name} drawn: {drawn}")
    label = driver.find_element("id", "chart-custom").get_attribute("aria-label")
    assert label == f"the chosen metric over the last {range_name}"
    # A point the API answered null is a gap in the line, not a zero: the
    # line visits the points with a value only.
    line = driver.execute_script(
        "return document.querySelector('#chart-custom path').getAttribute('d')"
    )
    assert len(re.findall(r"[ML]", line)) == len(values), (line, values)


def chart(driver: Any) -> tuple[str, float, int]:
    """The custom panel's unit, and its chart's scale and number of points."""
    unit, scale, points = driver.execute_script(
        "const svg = document.getElementById('chart-custom');"
        "return [document.getElementById('custom-unit').textContent,"
        " svg.dataset.max || '', svg.dataset.points || ''];"
    )
    return str(unit), float(scale or "nan"), int(points or -1)


def choose(driver: Any, name: str) -> None:
    from selenium.webdriver.support.select import Select

    Select(driver.find_element("id", "custom-metric")).select_by_value(name)


def press(driver: Any, range_name: str) -> None:
    driver.find_element("css selector", f"#ranges button[data-range='{range_name}']").click()


def open_the_panel(driver: Any, server: Server) -> dict[str, str]:
    """The dashboard, live, listing both metrics; answers the API's bearer header."""
    link, bearer = printed_link(server.log.text)
    driver.get(f"{server.url}{link}")
    wait_until(driver, lambda d: text_of(d, "status") == "live", "the stream is live")
    wait_until(
        driver,
        lambda d: (
            d.execute_script(
                "return [...document.getElementById('custom-metric').options].map((o) => o.value)"
            )
            == ["orders", "queue_depth"]
        ),
        "both metrics listed",
    )
    return bearer


def no_page_errors(driver: Any) -> None:
    problems = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == [], json.dumps(problems, indent=1)


def serve(tmp_path: Path) -> Any:
    env = child_environment(AEGIS_UPDATE_INTERVAL="200", CUSTOM_HISTORY_START=str(START))
    return uvicorn_server(APP, tmp_path, "--factory", env=env)


def test_a_range_draws_the_chosen_metrics_stored_history(browser: Any, tmp_path: Path) -> None:
    """Each range: the counter's 45 in one step, per second; the gauge's
    samples of 7 its value; as the API answers them. ``live`` draws the last
    minute again."""
    with serve(tmp_path) as server:
        record_and_sample(server)
        bearer = open_the_panel(browser, server)
        choose(browser, "orders")
        wait_until(browser, lambda d: chart(d)[0] == "live: per second", "the counter, live")
        for range_name, step in STEPS.items():
            check_range(browser, server, bearer, "orders", range_name, 45 / step)

        # Another metric chosen while a range is shown: its own history.
        choose(browser, "queue_depth")
        wait_until(browser, lambda d: chart(d)[0] == "last 7d: value", "the gauge's week")
        for range_name in ("1h", "15m"):
            check_range(browser, server, bearer, "queue_depth", range_name, DEPTH)

        press(browser, "live")
        wait_until(browser, lambda d: chart(d)[0] == "live: value", "the gauge, live again")
        label = browser.find_element("id", "chart-custom").get_attribute("aria-label")
        assert label == "the chosen metric over the last minute"
        assert browser.find_element(
            "css selector", "#ranges button[data-range='live']"
        ).get_attribute("aria-pressed") == "true"  # fmt: skip
        choose(browser, "orders")
        wait_until(browser, lambda d: chart(d)[0] == "live: per second", "the counter, live")
        no_page_errors(browser)


def test_a_gauges_value_stays_once_its_minute_is_over(browser: Any, tmp_path: Path) -> None:
    """The same samples a minute later, read from the 1-minute resolution (its
    minute is whole now): still the gauge's value, 7."""
    with serve(tmp_path) as server:
        record_and_sample(server)
        open_the_panel(browser, server)
        choose(browser, "queue_depth")
        wait_until(browser, lambda d: chart(d)[0] == "live: value", "the gauge, live")
        post(server, "/advance/60")
        press(browser, "1h")
        wait_until(browser, lambda d: chart(d)[0] == "last 1h: value", "the gauge's hour")
        assert chart(browser)[1] == DEPTH

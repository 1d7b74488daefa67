"""The dashboard in headless Chromium (Debian's package) against a real uvicorn
app with traffic: the numbers the page shows are those that were sent, the
charts switch to a stored range, the page breaks no rule of its own
Content-Security-Policy, and screenshots (light and dark) are saved as
artifacts."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.servers import ROOT, Server, child_environment, uvicorn_server

pytestmark = pytest.mark.slow

APP = "tests.realtime.ws_app:app"
WAIT = 30.0
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
)  # fmt: skip
ARTIFACTS = Path(os.environ.get("AEGIS_TEST_ARTIFACTS", ROOT / "artifacts"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through chromedriver, with a fresh profile."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not chromium or not driver_path:
        message = "Debian's chromium, chromium-driver and selenium are needed"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def wait_until(driver: Any, condition: Any, what: str) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, message=what)


#: The start-up line's link: the monitoring data is private by default.
PRINTED_LINK = re.compile(r"dashboard at (/dashboard\?token=(\S+))")


def printed_link(log: str) -> tuple[str, dict[str, str]]:
    """The dashboard's link from the server's start-up line, and the token in it
    as a bearer header (for the test's own API reads)."""
    match = PRINTED_LINK.search(log)
    assert match, log
    return match.group(1), {"authorization": f"Bearer {match.group(2)}"}


def send_traffic(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=WAIT) as client:
        for path in ["/ok"] * 20 + ["/fail"] * 5 + ["/items/1", "/items/2", "/items/3"]:
            client.get(path)


def one_decimal(value: float) -> str:
    """As the page shows a number: grouped thousands, at most one decimal."""
    text = f"{value:,.1f}"
    return text[:-2] if text.endswith(".0") else text


def wait_for_stored(server: Server, total: int, token: str) -> dict[str, Any]:
    """The 1h top endpoints once ``total`` requests are in the stored rollups."""
    import time

    headers = {"authorization": f"Bearer {token}"}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        url = f"{server.url}/api/metrics/top-endpoints?range=1h"
        top = httpx.get(url, headers=headers).json()["data"]
        if sum(e["requests"] for e in top["endpoints"]) == total:
            return dict(top)
        time.sleep(0.2)  # polling a condition with a deadline: rollups land every 5 s
    raise AssertionError(f"{total} requests never reached the stored rollups")


def live_rows(driver: Any) -> dict[str, list[str]]:
    """The top endpoints table by route, in one read (it is redrawn at every update)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#top-endpoints tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent))"
    )
    return {row[1]: row for row in rows}


def check_live_table(driver: Any, server: Server, bearer: dict[str, str]) -> None:
    """The live table after :func:`send_traffic`, its p95 those of the realtime API."""
    url = f"{server.url}/api/metrics/realtime"
    realtime = httpx.get(url, timeout=WAIT, headers=bearer).json()["data"]
    p95 = {row["route"]: row["latency_ms"]["p95"] for row in realtime["top_endpoints"]}
    by_route = live_rows(driver)
    assert by_route["/ok"][:4] == ["GET", "/ok", "20", "0"]
    assert by_route["/fail"][:4] == ["GET", "/fail", "5", "5"]
    assert by_route["/items/{item_id}"][:4] == ["GET", "/items/{item_id}", "3", "0"]
    assert {route: row[5] for route, row in by_route.items()} == {
        route: one_decimal(value) for route, value in p95.items()
    }
    assert all(row[5] != "\u2013" for row in by_route.values())  # the page's "no value"


def chart_scales(driver: Any) -> dict[str, float]:
    """The value each live chart is scaled to (0 while it is flat or empty)."""
    scales = driver.execute_script(
        "return Object.fromEntries(['chart-rate', 'chart-latency', 'chart-status']"
        ".map((id) => [id, Number(document.getElementById(id).dataset.max || 0)]))"
    )
    return {name: float(value) for name, value in scales.items()}


def test_the_page_shows_what_was_sent(browser: Any, tmp_path: Path) -> None:
    env = child_environment(AEGIS_UPDATE_INTERVAL="200")
    with uvicorn_server(APP, tmp_path, env=env) as server:
        send_traffic(server)
        link, bearer = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: text_of(d, "tile-total") == "28", "28 requests shown")
        wait_until(browser, lambda d: text_of(d, "status") == "live", "the stream is live")
        assert text_of(browser, "tile-error-rate") == "17.9%"  # 5 of 28
        assert text_of(browser, "tile-in-flight") == "0"
        # The page's own stream is a WebSocket connection too (not app traffic).
        assert text_of(browser, "tile-connections") == "1"
        assert text_of(browser, "tile-connections-detail") == "app 0 · metrics stream 1"
        assert text_of(browser, "tile-p95").endswith(" ms")
        check_live_table(browser, server, bearer)
        # Live charts: one point a second over the last minute.
        for chart in ("chart-rate", "chart-latency", "chart-status"):
            assert browser.find_element("id", chart).get_attribute("data-points") == "60"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

        # A stored range: the charts and the table read the JSON API (1 h in
        # 1-minute steps), once the rollups are stored (every 5 s).
        stored = wait_for_stored(server, 28, bearer["authorization"][len("Bearer ") :])
        browser.find_element("css selector", "#ranges button[data-range='1h']").click()
        wait_until(browser, lambda d: text_of(d, "range-rate") == "last 1h", "the range label")
        expected = httpx.get(
            f"{server.url}/api/metrics/request-rate?range=1h", headers=bearer
        ).json()["data"]
        points = str(len(expected["points"]))
        wait_until(
            browser,
            lambda d: d.find_element("id", "chart-rate").get_attribute("data-points") == points,
            "the 1h series drawn",
        )
        assert browser.find_element(
            "css selector", "#ranges button[data-range='1h']"
        ).get_attribute("aria-pressed") == "true"  # fmt: skip
        wait_until(browser, lambda d: text_of(d, "range-top") == "last 1h", "the table's range")
        p95 = {e["route"]: e["latency_ms"]["p95"] for e in stored["endpoints"]}
        expected = {route: one_decimal(value) for route, value in p95.items()}

        def shown(d: Any) -> dict[str, str]:
            rows = d.execute_script(
                "return [...document.querySelectorAll('#top-endpoints tbody tr')]"
                ".map((tr) => [...tr.cells].map((td) => td.textContent))"
            )
            return {row[1]: row[5] for row in rows}

        # The label changes as the range is chosen; the rows once its answer came.
        wait_until(browser, lambda d: shown(d) == expected, "the table's p95 over 1h")
        assert shown(browser) == expected

        # Dark, as the system asks.
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        background = browser.execute_script(
            "return getComputedStyle(document.body).backgroundColor"
        )
        assert background == "rgb(18, 21, 28)"
        browser.save_screenshot(str(ARTIFACTS / "dashboard-dark.png"))

        # No script error and no Content-Security-Policy violation.
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert problems == [], json.dumps(problems, indent=1)


def test_the_page_reconnects_after_the_stream_drops(browser: Any, tmp_path: Path) -> None:
    """Server gone: the indicator says so; a new server on the same port: live again
    (with the same access token, as an app's restarted process has it: from its
    file, or here from AEGIS_ACCESS_TOKEN, the memory sink keeping none)."""
    env = child_environment(AEGIS_UPDATE_INTERVAL="200", AEGIS_ACCESS_TOKEN="restart-proof-token-1")
    with uvicorn_server(APP, tmp_path, env=env) as server:
        link, _ = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: text_of(d, "status") == "live", "live")
        server.terminate()
        wait_until(browser, lambda d: text_of(d, "status") == "reconnecting", "reconnecting")
        port = server.port
    with uvicorn_server(APP, tmp_path, env=env, port=port) as again:
        send_traffic(again)
        wait_until(browser, lambda d: text_of(d, "status") == "live", "live again")
        wait_until(browser, lambda d: text_of(d, "tile-total") == "28", "the new server's figures")


POLLING = "polling: live stream unavailable"


def test_without_websocket_support_the_page_polls_and_draws(browser: Any, tmp_path: Path) -> None:
    """uvicorn without WebSockets (``--ws none``, as after a bare ``pip install
    uvicorn``): the page says it polls and why, and its polling fills the
    charts and the live table as the stream would."""
    env = child_environment(AEGIS_UPDATE_INTERVAL="200")
    with uvicorn_server(APP, tmp_path, "--ws", "none", env=env) as server:
        send_traffic(server)
        link, bearer = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: text_of(d, "status") == POLLING, "polling, and says so")
        assert browser.find_element("id", "status").get_attribute("data-state") == "polling"
        assert "no WebSocket support" in text_of(browser, "status-reason")
        assert "uvicorn[standard]" in text_of(browser, "status-reason")
        wait_until(browser, lambda d: text_of(d, "tile-total") == "28", "28 requests shown")
        wait_until(browser, lambda d: all(chart_scales(d).values()), "three charts drawn")
        for chart in ("chart-rate", "chart-latency", "chart-status"):
            assert browser.find_element("id", chart).get_attribute("data-points") == "60"
        # 28 requests within the last minute: a bar or more of them.
        bars = browser.execute_script(
            "return document.querySelectorAll('#chart-status rect').length"
        )
        assert bars >= 1
        wait_until(browser, lambda d: "/ok" in live_rows(d), "the live table filled")
        check_live_table(browser, server, bearer)
        assert text_of(browser, "tile-connections") == "0"  # polling holds no stream open
        problems = [
            e for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "/ws/metrics" not in e["message"]
        ]  # fmt: skip
        assert problems == [], json.dumps(problems, indent=1)  # the failed handshake aside


#: Wraps the page's WebSocket sends from outside the page: the acks it sends,
#: and how each of its streams ended.
WATCH_THE_STREAM = """
window.acks = []; window.closes = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  const message = JSON.parse(data);
  if (message.type === "ack") window.acks.push(message.data);
  if (!this.watched) {
    this.watched = true;
    this.addEventListener("close", (event) => window.closes.push([event.code, event.reason]));
  }
  return send.call(this, data);
};
"""


def test_the_page_acknowledges_the_stream(browser: Any, tmp_path: Path) -> None:
    """The page acknowledges messages once processed, so the stream stays
    open for many stall timeouts; when its script is busy for longer than one,
    the server closes the stream (1008) and the page reconnects."""
    env = child_environment(AEGIS_UPDATE_INTERVAL="200", AEGIS_WS_STALL_TIMEOUT="1")
    with uvicorn_server(APP, tmp_path, env=env) as server:
        link, _ = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: text_of(d, "status") == "live", "live")
        browser.execute_script(WATCH_THE_STREAM)
        wait_until(browser, lambda d: len(d.execute_script("return acks")) >= 15, "15 acks")
        acks = browser.execute_script("return acks")
        # Every second message, in order: half the window of 4, and at 200 ms an
        # ack every 400 ms stays well within the 1 s stall timeout.
        assert [b - a for a, b in itertools.pairwise(acks)] == [2] * (len(acks) - 1)
        assert browser.execute_script("return closes") == []  # 3 s: three stall timeouts
        # A long task: nothing is processed, so nothing is acknowledged, for 2.5 s.
        browser.execute_script("const end = Date.now() + 2500; while (Date.now() < end) {}")
        wait_until(
            browser,
            lambda d: d.execute_script("return closes") == [[1008, "client stopped reading"]],
            "the stream closed for it",
        )
        wait_until(browser, lambda d: text_of(d, "status") == "live", "live again")


def test_a_token_in_the_url_opens_the_page_and_its_stream(browser: Any, tmp_path: Path) -> None:
    token = "dashboard-token-1234"
    env = child_environment(
        AEGIS_UPDATE_INTERVAL="200", AEGIS_ACCESS=json.dumps({"dashboard": {"tokens": [token]}})
    )
    with uvicorn_server(APP, tmp_path, env=env) as server:
        assert httpx.get(f"{server.url}/dashboard").status_code == 401
        send_traffic(server)
        browser.get(f"{server.url}/dashboard?token={token}")
        wait_until(browser, lambda d: text_of(d, "tile-total") == "28", "figures behind a token")


def test_the_token_leaves_the_url_and_the_page_keeps_working(browser: Any, tmp_path: Path) -> None:
    """Opened with ?token=: the browser lands on the URL without it (other
    parameters kept), holding a cookie no script can read; the stream connects
    and a stored range reads the API (which needs the token too) with that
    cookie; a reload does not put the token in the access log again."""
    token = "dashboard-token-1234"
    access = {"dashboard": {"tokens": [token]}, "api": {"tokens": [token]}}
    env = child_environment(
        AEGIS_UPDATE_INTERVAL="200", AEGIS_ACCESS=json.dumps(access), PYTHONUNBUFFERED="1"
    )
    with uvicorn_server(APP, tmp_path, env=env) as server:
        send_traffic(server)
        browser.get(f"{server.url}/dashboard?token={token}&from=mail")
        wait_until(browser, lambda d: text_of(d, "status") == "live", "the stream is live")
        wait_until(browser, lambda d: text_of(d, "tile-total") == "28", "figures behind a token")
        assert browser.current_url == f"{server.url}/dashboard?from=mail"
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly
        wait_for_stored(server, 28, token)
        browser.find_element("css selector", "#ranges button[data-range='1h']").click()
        expected = httpx.get(
            f"{server.url}/api/metrics/request-rate?range=1h",
            headers={"authorization": f"Bearer {token}"},
        ).json()["data"]
        points = str(len(expected["points"]))
        wait_until(
            browser,
            lambda d: d.find_element("id", "chart-rate").get_attribute("data-points") == points,
            "the 1h series read from the API with the cookie",
        )
        assert text_of(browser, "range-rate") == "last 1h"  # not "(unavailable)"
        browser.refresh()
        wait_until(browser, lambda d: text_of(d, "status") == "live", "live after a reload")
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert problems == [], json.dumps(problems, indent=1)
    access_log = (tmp_path / "uvicorn-stdout.log").read_text()
    assert access_log.count(token) == 1, access_log  # the first load only


@pytest.mark.parametrize("stream", [True, False], ids=["stream-on-its-port", "polling"])
def test_the_page_of_a_wsgi_app(browser: Any, tmp_path: Path, stream: bool) -> None:
    """gunicorn (sync) serving a WSGI app: the page reads the stream from the
    app's stream server (ws_port), or polls the API when there is none."""
    import signal
    import time

    from tests.servers import free_port, gunicorn_command, gunicorn_process, wait_for

    env = {name: value for name, value in os.environ.items() if not name.startswith("AEGIS_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", AEGIS_UPDATE_INTERVAL="200")
    if stream:
        env["AEGIS_WS_PORT"] = str(free_port())
    command = gunicorn_command(1, "tests.wsgi.wsgi_app:app", worker_class="sync")
    with gunicorn_process(command, tmp_path, env) as (process, lines, seen):
        deadline = time.monotonic() + WAIT
        [listening] = wait_for(lines, seen, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, deadline)
        base = f"http://127.0.0.1:{int(listening.group(1))}"
        with httpx.Client(base_url=base, timeout=WAIT) as client:
            for number in range(7):
                client.get(f"/items/{number}", headers={"connection": "close"})
        # The worker's start-up line: the link with its access token.
        [banner] = wait_for(lines, seen, PRINTED_LINK.pattern, 1, deadline)
        browser.get(f"{base}{banner.group(1)}")
        wait_until(browser, lambda d: text_of(d, "tile-total") == "7", "7 requests shown")
        if stream:
            wait_until(browser, lambda d: text_of(d, "status") == "live", "live")
        else:
            wait_until(browser, lambda d: text_of(d, "status") == POLLING, "polling, and says so")
            assert "set ws_port" in text_of(browser, "status-reason")
        # Streamed or polled, the charts draw the requests.
        wait_until(browser, lambda d: all(chart_scales(d).values()), "three charts drawn")
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        if stream:
            assert problems == [], problems  # the stream connected at once
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_a_firing_alert_shows_in_the_panel(browser: Any, tmp_path: Path) -> None:
    """A rule given as JSON in the environment, evaluated by the server's own
    alert service over the SQLite rollups: the panel lists the alert once it
    fires (the buckets settle for 10 s first), as the API does."""
    rule = {
        "name": "failing", "input": "error_ratio", "operator": ">", "threshold": 0.1,
        "window": "30s", "min_requests": 5, "severity": "critical",
        "annotations": {"summary": "$value_percent of requests fail"},
    }  # fmt: skip
    env = child_environment(
        AEGIS_UPDATE_INTERVAL="200", AEGIS_ALERT_RULES=json.dumps([rule]), AEGIS_ALERT_INTERVAL="1"
    )
    with uvicorn_server(APP, tmp_path, env=env) as server:
        link, bearer = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: text_of(d, "status") == "live", "the stream is live")
        assert text_of(browser, "alerts") == "none"
        send_traffic(server)
        wait_until(
            browser,
            lambda d: text_of(d, "alerts") == "failing firing: 17.9 % of requests fail",
            "the alert in the panel",
        )
        answer = httpx.get(f"{server.url}/api/metrics/alerts", headers=bearer).json()["data"]
        assert [(a["name"], a["state"]) for a in answer["alerts"]] == [("failing", "firing")]
        # Its history: the transition that fired it, as the API has it.
        wait_until(
            browser, lambda d: " → firing" in text_of(d, "alert-history"),
            "the firing in the panel's history",
        )  # fmt: skip
        history = httpx.get(f"{server.url}/api/metrics/alert-history", headers=bearer).json()
        [fired] = [t for t in history["data"]["transitions"] if t["to_state"] == "firing"]
        shown = time.strftime("%H:%M:%S", time.localtime(fired["at"]))
        assert text_of(browser, "alert-history").startswith(shown), text_of(
            browser, "alert-history"
        )
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert problems == [], json.dumps(problems, indent=1)


def custom_rows(driver: Any) -> list[list[str]]:
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#custom-series tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent))"
    )
    return [list(row) for row in rows]


def test_the_apps_own_metrics_in_their_panel(browser: Any, tmp_path: Path) -> None:
    """The panel lists the app's metrics; the chosen one's series are those the
    API answers, and its chart is drawn live."""
    from selenium.webdriver.support.select import Select

    env = child_environment(AEGIS_UPDATE_INTERVAL="200")
    with uvicorn_server("tests.realtime.custom_app:app", tmp_path, env=env) as server:
        link, bearer = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: text_of(d, "status") == "live", "the stream is live")
        options = browser.execute_script(
            "return [...document.getElementById('custom-metric').options].map((o) => o.value)"
        )
        assert options == ["widgets", "widgets_in_stock"]
        assert custom_rows(browser) == [["no series yet"]]  # widgets: none made yet
        with httpx.Client(base_url=server.url, timeout=WAIT) as client:
            for color in ["red"] * 5 + ["blue"] * 2:
                assert client.post(f"/widgets/{color}").status_code == 200
        wait_until(
            browser,
            lambda d: custom_rows(d) == [["color=blue", "2"], ["color=red", "5"]],
            "the counter's series in the panel",
        )
        answer = httpx.get(f"{server.url}/api/metrics/custom-metrics", headers=bearer).json()
        [widgets] = [m for m in answer["data"]["metrics"] if m["name"] == "widgets"]
        assert [(s["labels"]["color"], s["value"]) for s in widgets["series"]] == [
            ("blue", 2),
            ("red", 5),
        ]
        assert text_of(browser, "custom-unit") == "live: per second"
        Select(browser.find_element("id", "custom-metric")).select_by_value("widgets_in_stock")
        wait_until(
            browser, lambda d: custom_rows(d) == [["(no labels)", "7"]], "the gauge in the panel"
        )
        assert text_of(browser, "custom-unit") == "live: value"
        wait_until(
            browser,
            lambda d: (
                float(d.find_element("id", "chart-custom").get_attribute("data-max") or 0) == 7
            ),
            "the gauge's chart",
        )
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert problems == [], json.dumps(problems, indent=1)


def event_rows(driver: Any) -> list[list[str]]:
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#events tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent))"
    )
    return [list(row) for row in rows]


def test_the_apps_events_in_their_panel(browser: Any, tmp_path: Path) -> None:
    """The panel lists what the events API answers, newest first, the request
    log's errors among them; its filters ask the API again."""
    from selenium.webdriver.support.select import Select

    env = child_environment(AEGIS_UPDATE_INTERVAL="200", AEGIS_FLUSH_INTERVAL="0.2")
    with uvicorn_server("tests.realtime.custom_app:app", tmp_path, env=env) as server:
        link, bearer = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: event_rows(d) == [["no events"]], "the empty panel")
        with httpx.Client(base_url=server.url, timeout=WAIT) as client:
            assert client.post("/deploys/2.4.1").status_code == 200
            assert client.get("/boom").status_code == 500
        wait_until(browser, lambda d: len(event_rows(d)) == 2, "two events in the panel")
        answer = httpx.get(f"{server.url}/api/metrics/events", headers=bearer).json()
        shown = event_rows(browser)
        assert [row[1:3] for row in shown] == [
            [event["level"], event["source"]] for event in answer["data"]["events"]
        ]
        levels = {row[1]: row for row in shown}
        assert levels["info"][3] == "deployed 2.4.1 [deploy]"  # the first line, and the tags
        assert levels["error"][3] == "RuntimeError: kaput [request]"
        Select(browser.find_element("id", "events-level")).select_by_value("error,critical")
        wait_until(
            browser,
            lambda d: [row[1] for row in event_rows(d)] == ["error"],
            "only the request's error",
        )
        Select(browser.find_element("id", "events-level")).select_by_value("")
        tags = browser.find_element("id", "events-tags")
        tags.send_keys("deploy\n")
        browser.execute_script(
            "document.getElementById('events-tags').dispatchEvent(new Event('change'))"
        )
        wait_until(
            browser,
            lambda d: [row[3] for row in event_rows(d)] == ["deployed 2.4.1 [deploy]"],
            "only the tagged event",
        )
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert problems == [], json.dumps(problems, indent=1)


def test_an_incident_and_its_timeline_in_their_panels(browser: Any, tmp_path: Path) -> None:
    """The active incidents are listed; picking one shows its timeline, with
    the request errors around it, as the API answers them: a timeline longer
    than the panel's 50 items shows its last 50, and says so."""
    env = child_environment(AEGIS_UPDATE_INTERVAL="200", AEGIS_FLUSH_INTERVAL="0.2")
    with uvicorn_server("tests.realtime.custom_app:app", tmp_path, env=env) as server:
        link, bearer = printed_link(server.log.text)
        browser.get(f"{server.url}{link}")
        wait_until(browser, lambda d: text_of(d, "incidents") != "", "the panel")
        with httpx.Client(base_url=server.url, timeout=WAIT) as client:
            opened = client.post("/incidents/open", params={"notes": "60"})
            # Last: the server closes the connection after the app raised.
            assert client.get("/boom").status_code == 500
        assert opened.status_code == 200
        incident_id = opened.text
        row = f"#incidents tr[data-id='{incident_id}']"
        wait_until(
            browser,
            lambda d: bool(d.find_elements("css selector", row)),
            "the incident listed",
        )
        cells = browser.execute_script(
            f'return [...document.querySelector("{row}").cells].map((td) => td.textContent)'
        )
        assert cells[1:] == ["critical", "open", "checkout errors"]
        browser.find_element("css selector", row).click()
        answer = httpx.get(
            f"{server.url}/api/metrics/incident-timeline",
            params={"id": incident_id, "limit": "50", "latest": "true"},
            headers=bearer,
        ).json()["data"]
        assert answer["total"] > 50 and answer["offset"] == answer["total"] - 50

        def shown(driver: Any) -> list[str]:
            return list(
                driver.execute_script(
                    "return [...document.querySelectorAll('#timeline li')].map((li) => li.dataset.kind)"
                )
            )

        wait_until(
            browser,
            lambda d: (
                shown(d) == [item["kind"] for item in answer["items"]]
                and "request_error" in shown(d)
            ),
            "the timeline, as the API answers it",
        )
        total = answer["total"]
        assert text_of(browser, "timeline-title") == f"checkout errors (last 50 of {total})"
        shown_text = text_of(browser, "timeline")
        assert "ana: note — more 59" in shown_text  # the latest, not the first page
        assert "ana: note — looking" not in shown_text
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert problems == [], json.dumps(problems, indent=1)

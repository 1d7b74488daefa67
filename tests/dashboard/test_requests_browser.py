"""The recent requests panel in headless Chromium (Debian's package) against a
real uvicorn app: the latest stored requests as the request log API answers
them, newest first; each trace id shortened to 8 digits and linked to the
``trace_url`` template filled in; no link without a trace id; the filters ask
the API again; a store that cannot be read, or an API that refuses the page,
is said in words.

Records with known ids are also written straight into the app's memory sink
(``POST /test/seed``) beside real traffic: a trace without a span, a slow
request without a trace, a path that is markup; the real requests carry a
W3C ``traceparent``, which the request path records."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.record import UNMATCHED_ROUTE, Batch, RequestRecord
from aegis_mw.sinks.memory import MemorySink
from tests.dashboard import test_browser
from tests.dashboard.test_browser import ARTIFACTS, WAIT, one_decimal, printed_link, wait_until
from tests.servers import Server, child_environment, uvicorn_server

pytestmark = pytest.mark.slow

#: Headless Chromium through chromedriver, as the dashboard's other browser
#: tests get it (the same fixture: it skips, or fails in CI, without them).
browser = test_browser.browser

APP = "tests.dashboard.test_requests_browser:requests_app"
TRACE_URL = "http://localhost:16686/trace/{trace_id}?span={span_id}"
#: Written straight into the store: (request id, method, route, path, status,
#: duration ms, trace id, span id), the newest first (a second apart).
SEEDED = [
    ("seed-traced", "GET", "/checkout", "/checkout", 200, 12.5,
     "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    ("seed-no-span", "POST", "/orders", "/orders", 502, 40.0,
     "0af7651916cd43dd8448eb211c80319c", None),
    ("seed-untraced", "GET", "/reports/{name}", "/reports/q3", 200, 1500.0, None, None),
    # A path that is markup: shown as text, as a route of its own never a link.
    ("seed-markup", "GET", UNMATCHED_ROUTE, "/x<img src=x onerror=alert(1)>", 404, 3.0,
     None, None),
]  # fmt: skip


class BreakableSink(MemorySink):
    """A memory sink whose request log a test can make unreadable (as a
    database that cannot be reached: an OSError, which opens the breaker)."""

    broken = False

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        if self.broken:
            raise OSError("the test made the store unreadable")
        return super().read_requests(query)


def requests_app() -> Starlette:
    """An app on a breakable memory sink with ``trace_url`` set; its
    ``/test/*`` routes (not recorded) seed records, flush and break the store.
    ``REQUESTS_ACCESS`` (JSON) sets the access rules."""
    sink = BreakableSink()
    access = json.loads(os.environ.get("REQUESTS_ACCESS", "null"))
    aegis = Aegis(
        sink=sink,
        trace_url=TRACE_URL,
        exclude_paths=("/test/*",),
        read_retry_after=1,
        **({"access": access} if access else {}),
    )

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def fail(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=500)

    async def seed(request: Request) -> PlainTextResponse:
        now = time.time()
        records: list[RequestRecord] = []
        for number, (request_id, method, route, path, status, duration, *ids) in enumerate(SEEDED):
            # Started `number` seconds ago, 2 bytes sent, the first byte halfway.
            timing = (now - number, method, route, path, status, duration, duration / 2)
            records.append(RequestRecord(request_id, *timing, 0, 2, "127.0.0.1", "", *ids))
        sink.write(Batch(requests=records))
        return PlainTextResponse("seeded")

    async def flush(request: Request) -> PlainTextResponse:
        flushed = await anyio.to_thread.run_sync(aegis.force_flush, 10.0)
        return PlainTextResponse("flushed", status_code=200 if flushed else 503)

    async def store(request: Request) -> PlainTextResponse:
        sink.broken = request.path_params["state"] == "broken"
        return PlainTextResponse(request.path_params["state"])

    return Starlette(
        routes=[
            Route("/ok", ok),
            Route("/fail", fail),
            Route("/test/seed", seed, methods=["POST"]),
            Route("/test/flush", flush, methods=["POST"]),
            Route("/test/store/{state}", store, methods=["POST"]),
        ],
        middleware=[Middleware(AegisMiddleware, aegis=aegis)],
    )


@contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[Server]:
    with uvicorn_server(APP, tmp_path, "--factory", env=child_environment(**env)) as server:
        yield server


def post(server: Server, path: str) -> None:
    answer = httpx.post(f"{server.url}{path}", timeout=WAIT)
    assert answer.status_code == 200, (path, answer.text)


def traceparent(trace_id: str, span_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{span_id}-01"}


#: Real traffic: two traced requests, an untraced one and a traced error.
TRAFFIC = [
    ("/ok", traceparent("a" * 31 + "1", "b" * 15 + "1")),
    ("/ok", traceparent("c" * 31 + "2", "d" * 15 + "2")),
    ("/ok", {}),
    ("/fail", traceparent("e" * 31 + "3", "f" * 15 + "3")),
]


def send_traffic(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=WAIT) as client:
        for path, headers in TRAFFIC:
            client.get(path, headers=headers)
    post(server, "/test/seed")
    post(server, "/test/flush")


def stored(server: Server, bearer: dict[str, str], query: str = "") -> list[dict[str, Any]]:
    url = f"{server.url}/api/metrics/requests?limit=20{query}"
    answer = httpx.get(url, headers=bearer, timeout=WAIT)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"]["requests"])


def rows(driver: Any) -> list[dict[str, Any]]:
    """The panel's rows in one read: id, cell texts and titles, the trace link."""
    found = driver.execute_script(
        """return [...document.querySelectorAll('#requests tbody tr')].map((tr) => {
          const a = tr.cells.length > 5 ? tr.cells[5].querySelector('a') : null;
          return {id: tr.dataset.id || null, cells: [...tr.cells].map((td) => td.textContent),
                  titles: [...tr.cells].map((td) => td.getAttribute('title')),
                  links: tr.querySelectorAll('a').length, elements: tr.querySelectorAll('*').length,
                  link: a && {href: a.getAttribute('href'), rel: a.getAttribute('rel'),
                              target: a.getAttribute('target'), title: a.getAttribute('title'),
                              text: a.textContent}};
        })"""
    )
    return list(found)


def ids(driver: Any) -> list[str | None]:
    return [row["id"] for row in rows(driver)]


def state(driver: Any) -> str:
    return str(driver.find_element("id", "requests-state").text)


def time_shown(iso: str) -> str:
    """As the page shows a time: local, with the date when it is not today."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    day = "" if moment.date() == datetime.now().date() else f"{moment:%Y-%m-%d} "
    return f"{day}{moment:%H:%M:%S}"


def filled(trace_id: str, span_id: str | None) -> str:
    """The template filled in as the page must: each id URL-encoded, "" for no span."""
    return TRACE_URL.format(
        trace_id=quote(trace_id, safe=""), span_id=quote(span_id or "", safe="")
    )


def expected_row(record: dict[str, Any]) -> dict[str, Any]:
    trace_id = record["trace_id"]
    link = None
    if trace_id:
        link = {"href": filled(trace_id, record["span_id"]), "rel": "noopener noreferrer",
                "target": "_blank", "title": trace_id, "text": trace_id[:8]}  # fmt: skip
    duration = record["duration_ms"]
    return {
        "id": record["request_id"],
        "cells": [
            time_shown(record["timestamp"]),
            record["method"],
            record["route"],
            str(record["status"]),
            one_decimal(duration),
            trace_id[:8] if trace_id else "",
        ],
        "titles": [record["timestamp"], None, record["path"], None, None, None],
        "links": 1 if trace_id else 0,
        "elements": 6 + (1 if trace_id else 0),  # the cells, and the link: no markup from data
        "link": link,
    }


def open_dashboard(driver: Any, server: Server) -> dict[str, str]:
    link, bearer = printed_link(server.log.text)
    driver.get(f"{server.url}{link}")
    return bearer


def choose(driver: Any, value: str) -> None:
    from selenium.webdriver.support.select import Select

    Select(driver.find_element("id", "requests-filter")).select_by_value(value)


def no_page_errors(driver: Any) -> None:
    problems = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == [], json.dumps(problems, indent=1)


def test_the_latest_requests_with_links_to_their_traces(browser: Any, tmp_path: Path) -> None:
    """The panel shows the API's latest 20, newest first, cell by cell; a
    trace id is its first 8 digits linking to the template filled in (span
    "" when there is none); without one the cell is empty; the filters read
    the 5xx and the slow ones."""
    with serve(tmp_path) as server:
        send_traffic(server)
        bearer = open_dashboard(browser, server)
        answer = stored(server, bearer)
        assert len(answer) == len(TRAFFIC) + len(SEEDED)
        expected = [expected_row(record) for record in answer]
        wait_until(browser, lambda d: ids(d) == [r["id"] for r in expected], "the stored requests")
        assert rows(browser) == expected
        assert state(browser) == "latest 20"
        by_id = {row["id"]: row for row in rows(browser)}
        # What a person reads: exactly these, from the records written.
        traced = by_id["seed-traced"]
        assert traced["cells"][1:] == ["GET", "/checkout", "200", "12.5", "4bf92f35"]
        assert traced["link"] == {
            "href": "http://localhost:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"
            "?span=00f067aa0ba902b7",
            "rel": "noopener noreferrer", "target": "_blank",
            "title": "4bf92f3577b34da6a3ce929d0e0e4736", "text": "4bf92f35",
        }  # fmt: skip
        assert by_id["seed-no-span"]["link"]["href"] == (
            "http://localhost:16686/trace/0af7651916cd43dd8448eb211c80319c?span="
        )
        untraced = by_id["seed-untraced"]
        assert untraced["cells"][1:] == ["GET", "/reports/{name}", "200", "1,500", ""]
        assert untraced["links"] == 0 and untraced["link"] is None
        markup = by_id["seed-markup"]
        assert markup["cells"][2] == "<unmatched>" and markup["links"] == 0
        assert markup["titles"][2] == "/x<img src=x onerror=alert(1)>"
        images = browser.execute_script("return document.querySelectorAll('#requests img').length")
        assert images == 0
        browser.execute_script(
            "document.getElementById('requests').closest('.panel').scrollIntoView()"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-requests.png"))

        # Errors only: the 5xx, as the API answers them.
        errors = stored(server, bearer, "&status=5xx")
        assert {r["status"] // 100 for r in errors} == {5} and len(errors) == 2
        choose(browser, "errors")
        wait_until(browser, lambda d: ids(d) == [r["request_id"] for r in errors], "the 5xx")
        assert state(browser) == "latest 20, errors only (5xx)"
        # Slow: at or over the app's slow threshold (1000 ms by default).
        slow_label = browser.find_element("id", "requests-slow").text
        assert slow_label == "slow (\u2265 1,000 ms)"
        choose(browser, "slow")
        wait_until(browser, lambda d: ids(d) == ["seed-untraced"], "the slow one")
        choose(browser, "")
        wait_until(browser, lambda d: ids(d) == [r["id"] for r in expected], "all of them again")
        no_page_errors(browser)


def test_a_store_that_cannot_be_read_is_said_in_words(browser: Any, tmp_path: Path) -> None:
    """The store breaks: at the next read (every 5 s) the panel says it cannot
    read the log, rather than keep stale rows; healed, the rows are back
    once the page is shown again."""
    with serve(tmp_path) as server:
        send_traffic(server)
        bearer = open_dashboard(browser, server)
        count = len(stored(server, bearer))
        wait_until(browser, lambda d: len(ids(d)) == count, "the stored requests")
        post(server, "/test/store/broken")
        message = "the request log cannot be read now (503); trying again"
        wait_until(browser, lambda d: [r["cells"] for r in rows(d)] == [[message]], message)
        assert state(browser) == "unavailable"
        post(server, "/test/store/healed")
        # Shown again: read at once (then every 5 s), past the breaker's second.
        browser.execute_script("document.dispatchEvent(new Event('visibilitychange'))")
        wait_until(browser, lambda d: len(ids(d)) == count, "the requests once it reads again")
        assert state(browser) == "latest 20"


def test_an_api_that_refuses_the_page_is_said_in_words(browser: Any, tmp_path: Path) -> None:
    """The page's token opens the page but not the API (another token guards
    it): the panel says it is not allowed to read the log."""
    access = {"dashboard": {"tokens": ["page-token-123456"]},
              "api": {"tokens": ["api-token-1234567"]}}  # fmt: skip
    with serve(tmp_path, REQUESTS_ACCESS=json.dumps(access)) as server:
        browser.get(f"{server.url}/dashboard?token=page-token-123456")
        message = "not allowed to read the request log (401): the API needs an access token"
        wait_until(browser, lambda d: [r["cells"] for r in rows(d)] == [[message]], message)
        assert state(browser) == "unavailable"


def test_a_traceparent_request_links_to_its_trace(browser: Any, tmp_path: Path) -> None:
    """Requests that carried a W3C ``traceparent``: the request path records
    the caller's trace and span, and the panel links to them."""
    with serve(tmp_path) as server:
        send_traffic(server)
        bearer = open_dashboard(browser, server)
        real = [r for r in stored(server, bearer) if not r["request_id"].startswith("seed-")]
        # trace id -> span id, as sent
        sent = dict(h["traceparent"].split("-")[1:3] for _, h in TRAFFIC if h)
        assert sorted(r["trace_id"] or "" for r in real) == sorted([*sent, ""])
        wait_until(browser, lambda d: len(ids(d)) == len(TRAFFIC) + len(SEEDED), "the requests")
        links = {row["id"]: row["link"] for row in rows(browser)}
        for record in real:
            link = links[record["request_id"]]
            trace_id = record["trace_id"]
            if trace_id is None:
                assert link is None
                continue
            assert record["span_id"] == sent[trace_id]
            assert link["href"] == TRACE_URL.format(trace_id=trace_id, span_id=sent[trace_id])
            assert link["text"] == trace_id[:8]
        no_page_errors(browser)

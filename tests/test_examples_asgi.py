"""The FastAPI and Starlette apps in examples/, started for real with the command their
docstrings give (uvicorn, on 127.0.0.1): traffic, a /metrics scrape (judged by
``promtool`` too), the overview from the stored history, frames from /ws/metrics and
its origin rule, /health/ready (the FastAPI example's check is a FastAPI dependency),
and a clean stop. Each example is served once per module; the tests read that run."""

from __future__ import annotations

import ast
import json
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.servers import ROOT, promtool_checks, uvicorn_server

pytestmark = pytest.mark.slow
CLIENT_TIMEOUT = 10.0
WAIT = 60.0  # for what lands on its own schedule: flushes (1 s), rollups (5 s), frames (1 s)
MAX_FRAMES = 90  # one a second: WAIT's worth, and a bound on the loop that reads them
POLL = 0.25  # between two polls of a condition that has a deadline


@dataclass(frozen=True)
class Example:
    """An example app, the requests sent to it and the record each one must make."""

    file: str
    traffic: tuple[tuple[str, str, int], ...]  # (path, route label, status)
    checks: tuple[str, ...]  # the health checks it registers


ITEM = "/items/{item_id}"
FASTAPI = Example(
    "examples/fastapi_app.py",
    (
        *((f"/items/{number}", ITEM, 200) for number in range(5)),
        ("/stream", "/stream", 200),
        ("/fail", "/fail", 500),
        ("/items/not-a-number", ITEM, 422),
        ("/no/such/page", "<unmatched>", 404),
    ),
    ("database",),
)
USER = "/api/v1/users/{user_id}"
STARLETTE = Example(
    "examples/starlette_app.py",
    (
        ("/", "/", 200),
        *((f"/api/v1/users/{number}", USER, 200) for number in range(4)),
        ("/api/v1/nothing", "/api/v1/{path}", 404),
        ("/nowhere", "<unmatched>", 404),
    ),
    (),
)


def expected_counts(example: Example) -> Counter[tuple[str, str]]:
    return Counter((route, str(status)) for _, route, status in example.traffic)


def status_classes(example: Example) -> dict[str, int]:
    counts = Counter(f"{status // 100}xx" for _, _, status in example.traffic)
    return {f"{digit}xx": counts[f"{digit}xx"] for digit in range(1, 6)}


def failures(example: Example) -> int:
    return sum(status >= 500 for _, _, status in example.traffic)


def served_target(example: Example) -> str:
    """The ``module:app`` of the ``uvicorn ...`` command the example's docstring gives
    (read, not imported: importing an example builds its pipeline)."""
    docstring = ast.get_docstring(ast.parse((ROOT / example.file).read_text())) or ""
    match = re.search(r"^\s*uvicorn (\S+:\w+)", docstring, re.MULTILINE)
    assert match, f"{example.file}: its docstring does not say how to run it"
    return match.group(1)


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    """What one example answered, and what its server said."""

    example: Example
    statuses: list[int]
    metrics: str
    metrics_type: str
    overview: dict[str, Any]
    health: httpx.Response
    hello: dict[str, Any]
    frame: dict[str, Any]
    foreign_origin: InvalidStatus | None
    own_origin_hello: dict[str, Any]
    returncode: int
    log: str


def scrape_counts(text: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aegis_http_requests_total":
                counts[sample.labels["route"], sample.labels["status"]] += int(sample.value)
    return counts


def poll(read: Any, done: Any, what: str) -> Any:
    """``read()`` until ``done(answer)``, or fail at the deadline."""
    deadline = time.monotonic() + WAIT
    answer = read()
    while not done(answer):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never came; last answer: {answer!r}")
        time.sleep(POLL)  # polling a condition with a deadline
        answer = read()
    return answer


def stream_frames(
    url: str, total: int, credential: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hello, then the first metrics frame whose overview counts ``total`` requests."""
    with connect(url, open_timeout=CLIENT_TIMEOUT, close_timeout=CLIENT_TIMEOUT,
                 additional_headers=credential) as stream:  # fmt: skip
        hello = json.loads(stream.recv(timeout=CLIENT_TIMEOUT))
        deadline = time.monotonic() + WAIT
        frame: dict[str, Any] = {}
        for _ in range(MAX_FRAMES):
            frame = json.loads(stream.recv(timeout=CLIENT_TIMEOUT))
            if frame["type"] == "metrics" and frame["data"]["overview"]["total_requests"] == total:
                return hello, frame
            if time.monotonic() > deadline:
                break
    pytest.fail(f"no frame counted {total} requests; the last: {frame}")


def serve(example: Example, workdir: Path) -> Run:
    total = len(example.traffic)
    with uvicorn_server(served_target(example), workdir) as server:
        # A new connection per request: uvicorn closes one after an unhandled
        # exception (/fail), and a keep-alive client could race that close.
        client = httpx.Client(
            base_url=server.url, timeout=CLIENT_TIMEOUT, headers={"connection": "close"}
        )
        # The monitoring data is private: the token the example generated, kept
        # beside its SQLite file, is the credential (and in the start-up line).
        token = (workdir / "aegis.db.token").read_text().strip()
        assert f"dashboard at /dashboard?token={token}" in server.log.text
        credential = {"Authorization": f"Bearer {token}"}
        with client:
            assert client.get("/api/metrics/overview").status_code == 401
            statuses = [client.get(path).status_code for path, _, _ in example.traffic]
            # The counters are the live aggregates, the overview the stored 5-second
            # rollups: both are polled until they hold the traffic, within WAIT.
            scrape = poll(
                lambda: client.get("/metrics"),
                lambda answer: scrape_counts(answer.text) == expected_counts(example),
                "a /metrics with every request",
            )
            overview = poll(
                lambda: client.get("/api/metrics/overview?range=1h", headers=credential).json()[
                    "data"
                ],
                lambda answer: answer["total"] == total,
                f"an overview of {total} requests",
            )
            health = client.get("/health/ready")
        ws_url = f"ws://127.0.0.1:{server.port}/ws/metrics"
        hello, frame = stream_frames(ws_url, total, credential)
        foreign: InvalidStatus | None = None
        foreign_page = "https://evil.example.net"
        try:
            with connect(ws_url, origin=foreign_page, open_timeout=CLIENT_TIMEOUT,  # type: ignore[arg-type]
                         additional_headers=credential):  # fmt: skip
                pass  # admitted: the test below says so
        except InvalidStatus as refused:
            foreign = refused
        own = f"http://127.0.0.1:{server.port}"
        with connect(ws_url, origin=own, open_timeout=CLIENT_TIMEOUT,  # type: ignore[arg-type]
                     additional_headers=credential) as stream:  # fmt: skip
            own_hello = json.loads(stream.recv(timeout=CLIENT_TIMEOUT))
        returncode = server.terminate()
        log = server.log.text
    return Run(
        example, statuses, scrape.text, scrape.headers["content-type"], overview, health,
        hello, frame, foreign, own_hello, returncode, log,
    )  # fmt: skip


@pytest.fixture(scope="module", params=[FASTAPI, STARLETTE], ids=["fastapi", "starlette"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    example: Example = request.param
    return serve(example, tmp_path_factory.mktemp(Path(example.file).stem))


# --------------------------------------------------------------------------- the tests


def test_the_traffic_was_answered_as_planned(run: Run) -> None:
    assert run.statuses == [status for _, _, status in run.example.traffic]


def test_metrics_count_every_request_by_route_and_status(run: Run) -> None:
    assert run.metrics_type == "text/plain; version=0.0.4; charset=utf-8"
    assert scrape_counts(run.metrics) == expected_counts(run.example)


def test_promtool_has_nothing_to_say_about_the_scrape(run: Run) -> None:
    promtool_checks(run.metrics)


def test_the_stored_overview_counts_the_traffic(run: Run) -> None:
    overview, example = run.overview, run.example
    assert overview["total"] == len(example.traffic)
    assert overview["failed"] == failures(example)
    assert overview["client_errors"] == status_classes(example)["4xx"]
    assert overview["status"] == status_classes(example)


def test_the_stream_says_hello_then_sends_the_figures(run: Run) -> None:
    assert run.hello["type"] == "hello"
    assert run.hello["data"]["subscription"]["overview"] is True
    overview = run.frame["data"]["overview"]
    assert overview["total_requests"] == len(run.example.traffic)
    assert overview["total_errors"] == failures(run.example)
    assert overview["status_totals"] == status_classes(run.example)


def test_the_stream_refuses_a_foreign_origin_and_admits_its_own(run: Run) -> None:
    assert run.foreign_origin is not None, "a page on another site could read the stream"
    assert run.foreign_origin.response.status_code == 403
    assert json.loads(run.foreign_origin.response.body)["error"]["code"] == "forbidden_origin"
    assert run.own_origin_hello["type"] == "hello"


def test_readiness_runs_the_example_checks(run: Run) -> None:
    """The FastAPI example's "database" check is a FastAPI dependency (a sync `yield`
    dependency on the app's SQLite file); the Starlette example has none."""
    assert run.health.status_code == 200
    assert run.health.headers["content-type"] == "application/health+json"
    body = run.health.json()
    assert body["status"] == "pass"
    assert sorted(body["checks"]) == sorted(run.example.checks)
    for name in run.example.checks:
        [result] = body["checks"][name]
        assert (result["status"], result["outcome"]) == ("pass", "pass"), result
    if run.example is FASTAPI:
        [database] = body["checks"]["database"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", database["details"]["sqlite_version"])


def test_the_server_stops_cleanly(run: Run) -> None:
    """SIGTERM: the lifespan shutdown ran; the only tracebacks are the failing route's."""
    # uvicorn re-raises the signal it handled after a graceful shutdown (older ones exit 0).
    assert run.returncode in (0, -signal.SIGTERM), run.log
    assert "Application shutdown complete." in run.log
    purposeful = run.log.count("RuntimeError: example failure")
    assert run.log.count("Traceback (most recent call last)") == purposeful, run.log

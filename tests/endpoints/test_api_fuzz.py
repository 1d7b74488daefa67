"""The JSON API fuzzed against the OpenAPI document it serves (schemathesis): whatever
the parameters, no 500, only documented statuses and content types, and every body
matches the document's schema. History is real: traffic recorded in SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import jsonschema_rs  # schemathesis' own validator
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.endpoints.api import MetricsAPI
from aegis_mw.history.ranges import MAX_SPAN
from aegis_mw.testing import FakeClock
from tests.endpoints.test_api import API, TOTAL, send_traffic, starlette_app
from tests.harness import OPEN_MONITORING

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # Input the document rules out (a limit of 0, a status of "6xx") must be refused.
    negative_data_rejection,
]


class Deferred:
    """The app schemathesis calls: the document is loaded at import, the history
    is built (with a fresh SQLite file) by the fixture."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


deferred = Deferred()


def load_schema() -> Any:
    """The document as the middleware serves it (it does not depend on the sink)."""
    aegis = Aegis(sink="memory://", environ={}, metrics_registry="none", access=OPEN_MONITORING)
    deferred.app = AegisMiddleware(starlette_app(FakeClock()), aegis=aegis)
    try:
        return schemathesis.openapi.from_asgi(f"{API}/openapi.json", deferred)
    finally:
        deferred.app = None
        aegis.shutdown(timeout=5)


schema = load_schema()


def _instant(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


@schema.hook
def flatmap_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> Any:
    """Explicit windows the API can answer, often enough to matter.

    The document cannot say that ``range`` excludes ``from``/``to``, nor that the
    end follows the start by at most 400 days, so independent values almost
    never make a window the API answers (unit tests cover those 400s). With a
    valid start, this draws the range's end (or the log's ``until``) a little
    after it; times near the ends of the calendar stay as drawn."""
    if not query:
        return st.just(query)
    query = dict(query)
    if "from" in query or "to" in query:
        query.pop("range", None)
    for first, last in (("from", "to"), ("since", "until")):
        start = _instant(query.get(first))
        if start is None or (last in query and _instant(query[last]) is None):
            continue
        try:
            latest = start + timedelta(seconds=MAX_SPAN + 3600)
        except OverflowError:
            continue
        return st.datetimes(
            min_value=start.replace(tzinfo=None), max_value=latest.replace(tzinfo=None)
        ).map(
            lambda end, last=last, tz=start.tzinfo: {
                **query,
                last: end.replace(tzinfo=tz).isoformat(),
            }
        )
    return st.just(query)


@pytest.fixture(scope="module")
def recorded_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aegis]:
    """The middleware over a Starlette app, with 30 requests stored in SQLite."""
    clock = FakeClock()
    path = tmp_path_factory.mktemp("fuzz") / "aegis.db"
    aegis = Aegis(
        clock=clock,
        sink=f"sqlite:///{path}",
        flush_interval=3600,
        metrics_registry="none",
        environ={},
    )
    app = AegisMiddleware(starlette_app(clock), aegis=aegis)

    async def traffic() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            await send_traffic(http, clock)
            clock.advance(5.0)

    try:
        anyio.run(traffic)
        assert aegis.force_flush(10.0)  # no event loop runs here: waiting is fine
        deferred.app = app
        yield aegis
        # The fuzzing never reached the app: the API's requests were not recorded.
        assert aegis.force_flush(10.0)
        assert aegis.stats().sinks[0].written == TOTAL
    finally:
        deferred.app = None
        aegis.shutdown(timeout=5)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_the_api_keeps_to_its_document(case: schemathesis.Case, recorded_history: Aegis) -> None:
    case.call_and_validate(checks=CHECKS)


#: Offsets as text: a datetime could not carry one that moves it past year 1 or 9999.
OFFSETS = st.one_of(
    st.just("Z"),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
        lambda m: f"{'-' if m < 0 else '+'}{abs(m) // 60:02d}:{abs(m) % 60:02d}"
    ),
)


@pytest.fixture(scope="module")
def api(recorded_history: Aegis) -> MetricsAPI:
    return MetricsAPI(recorded_history)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    start=st.one_of(
        st.datetimes(),
        # The edges, where a range's aligned start or end leaves the calendar.
        st.datetimes(max_value=datetime(1, 1, 1, 23, 59, 59)),
        st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(1970, 1, 1, 23)),
        st.datetimes(min_value=datetime(9998, 12, 31)),
        # Around the recorded traffic (FakeClock's wall time).
        st.datetimes(min_value=datetime(2023, 11, 1), max_value=datetime(2023, 11, 15)),
    ),
    offset=OFFSETS,
    span=st.one_of(st.integers(1, 86_400), st.integers(1, MAX_SPAN)),
    endpoint=st.sampled_from(["overview", "latency", "top-endpoints", "requests"]),
)
def test_any_explicit_window_is_answered_or_refused(
    api: MetricsAPI, start: datetime, offset: str, span: int, endpoint: str
) -> None:
    """Every calendar instant, in any offset, with any span the API allows: a 200
    that matches the document, or a 400 naming the time. Never a 503 (storage is
    fine here) from an instant the answer cannot be written in."""
    try:
        end = start + timedelta(seconds=span)
    except OverflowError:
        end = datetime.max
    first, last = ("since", "until") if endpoint == "requests" else ("from", "to")
    query = urlencode({first: start.isoformat() + offset, last: end.isoformat() + offset})
    response = api.respond(endpoint, query.encode())
    body = json.loads(response.body)
    if response.status == 400:
        assert body["error"]["parameter"] in (first, last), body
        return
    assert response.status == 200, body
    document = api.respond("openapi.json", b"")
    operation = json.loads(document.body)["paths"][f"{API}/{endpoint}"]["get"]
    shape = operation["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema_rs.Draft202012Validator(shape, validate_formats=True).validate(body)

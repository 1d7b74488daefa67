"""``{api_path}/events`` over the mounted API, under ASGI (a Starlette app with
``install``) and under WSGI (a Flask app with the extension): events POSTed
(one, or a list) are answered 202 with their ids and read back by GET once
flushed; POST needs the editor role and GET the viewer's; every bad field is
a 400 naming it, a bad body a 400, 413 or 415, a pipeline storing no events
a 409, a full queue a 503 naming what was taken; GET filters, and names a
bad parameter; the request log's errors read as events; never a 500."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx
import pytest

from aegis_mw import Aegis, Batch
from aegis_mw.contrib.starlette import install
from aegis_mw.endpoints.alert_writes import MAX_BODY
from aegis_mw.endpoints.events import EVENT_PARAMETERS, MAX_EVENTS
from aegis_mw.testing import FakeClock, MemorySink
from tests import api_apps
from tests.api_apps import ACCESS, ADMIN, API, EDITOR, VIEWER, Served, iso, seconds, serving
from tests.harness import Exchange, call, http_scope

pytestmark = pytest.mark.anyio

EVENTS = f"{API}/events"
TRACE_A, TRACE_B = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"
#: Whole seconds some hours ago: inside the raw retention, before any request
#: the test sends (so a time filter can leave the request log's errors out).
BASE = float(int(datetime.now(tz=timezone.utc).timestamp()) - 6 * 3600)


def q(timestamp: float) -> str:
    """A time for a query string: ISO 8601 with its offset, escaped ("+" is a space there)."""
    return quote(iso(timestamp), safe="")


class EventsServed(Served):
    """The app, and calls of ``{api_path}/events``."""

    async def post(
        self, body: Any, *, token: str | None = EDITOR, **options: Any
    ) -> httpx.Response:
        headers = {"content-type": "application/json", **options.pop("headers", {})}
        content = json.dumps(body).encode()  # so that a body of None is sent as null
        return await self.request(
            "POST", EVENTS, token=token, content=content, headers=headers, **options
        )

    async def post_raw(
        self, content: Any, content_type: str | None = "application/json", **options: Any
    ) -> httpx.Response:
        headers = {} if content_type is None else {"content-type": content_type}
        return await self.request(
            "POST", EVENTS, token=EDITOR, content=content, headers=headers, **options
        )

    async def get(self, query: str = "", *, token: str | None = VIEWER) -> httpx.Response:
        return await self.request("GET", f"{EVENTS}?{query}" if query else EVENTS, token=token)

    async def events(self, query: str = "") -> list[dict[str, Any]]:
        response = await self.get(query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert list(body) == ["data"]
        assert set(body["data"]) == {"limit", "offset", "events"}
        events: list[dict[str, Any]] = body["data"]["events"]
        return events

    async def ids(self, query: str = "") -> list[str]:
        return [event["id"] for event in await self.events(query)]

    @property
    def accepted(self) -> int:
        return self.aegis.stats().events_accepted


Serve = Callable[..., Awaitable[EventsServed]]
serve = serving(EventsServed)


# -- sent, then read back ----------------------------------------------------------------


async def test_posted_events_are_answered_202_and_read_back_once_flushed(serve: Serve) -> None:
    served = await serve()
    one = {
        "message": "deployed 2.0", "type": "alert", "level": "warning", "source": "deployer",
        "tags": ["deploy", "region:eu"], "payload": {"version": "2.0", "hosts": [1, 2]},
        "timestamp": iso(BASE), "id": "deploy-2.0", "trace_id": TRACE_A,
    }  # fmt: skip
    answer = await served.post(one)
    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"data": {"accepted": 1, "ids": ["deploy-2.0"]}}

    named = "svc/job:42@eu.host_1-b"  # every kind of character an id may hold
    answer = await served.post(
        [
            {"message": "first", "timestamp": BASE + 1},
            {"message": "second", "id": named, "timestamp": iso(BASE + 2, zulu=True)},
        ]
    )
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert data["accepted"] == 2 and data["ids"][1] == named
    generated = data["ids"][0]
    assert len(generated) == 24 and int(generated, 16) >= 0
    assert served.accepted == 3

    await served.flush()
    events = await served.events()
    assert [event["id"] for event in events] == [named, generated, "deploy-2.0"]
    deploy = events[2]
    assert seconds(deploy.pop("timestamp")) == BASE
    assert deploy == {
        "id": "deploy-2.0", "type": "alert", "source": "deployer", "level": "warning",
        "message": "deployed 2.0", "tags": ["deploy", "region:eu"],
        "payload": {"version": "2.0", "hosts": [1, 2]}, "trace_id": TRACE_A,
    }  # fmt: skip
    first = events[1]
    assert (first["type"], first["source"], first["level"], first["message"]) == (
        "log", "app", "info", "first",
    )  # fmt: skip
    assert (first["tags"], first["payload"], first["trace_id"]) == ([], None, None)
    assert seconds(first["timestamp"]) == BASE + 1

    # A client's retry of the same id: taken in again, stored once.
    again = await served.post({**one, "message": "deployed 2.0 (again)"})
    assert again.status_code == 202 and again.json()["data"]["ids"] == ["deploy-2.0"]
    await served.flush()
    events = await served.events()
    assert [event["id"] for event in events] == [named, generated, "deploy-2.0"]
    assert events[2]["message"] == "deployed 2.0"
    assert served.accepted == 4


async def test_post_needs_the_editor_role_and_get_the_viewers(serve: Serve) -> None:
    served = await serve()
    viewer = await api_apps.refused_below_the_editor(
        lambda token: served.post({"message": "refused"}, token=token)
    )
    assert "editor role" in viewer.json()["error"]["message"]
    editor = await served.post({"message": "editor", "id": "by-editor"}, token=EDITOR)
    assert editor.status_code == 202, editor.text
    admin = await served.post({"message": "admin", "id": "by-admin"}, token=ADMIN)
    assert admin.status_code == 202, admin.text
    await api_apps.refused_from_another_site(
        lambda headers: served.post({"message": "csrf"}, token=ADMIN, headers=headers)
    )
    assert served.accepted == 2
    await served.flush()

    assert (await served.get(token=None)).status_code == 401
    for token in (VIEWER, EDITOR, ADMIN):
        read = await served.get(token=token)
        assert read.status_code == 200, read.text
        assert sorted(e["id"] for e in read.json()["data"]["events"]) == ["by-admin", "by-editor"]


async def test_other_methods_are_405(serve: Serve) -> None:
    served = await serve()
    for method in ("PUT", "DELETE", "PATCH"):
        answer = await served.request(method, EVENTS, token=ADMIN, json={"message": "m"})
        assert answer.status_code == 405, answer.text
        assert answer.json()["error"]["code"] == "method_not_allowed"
        assert {m.strip() for m in answer.headers["allow"].split(",")} >= {"GET", "POST"}
    assert served.accepted == 0


# -- bad bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "m", "level": "loud"}, "level"),
        ([{"message": "a"}, {"message": "b", "level": "loud"}], "[1].level"),
        ({"message": "m", "type": "LOG"}, "type"),
        ({"message": "m", "source": ""}, "source"),
        ({"message": "m", "source": 7}, "source"),
        ({"level": "info"}, "message"),
        ({"message": None}, "message"),
        ({"message": "bell\u0007"}, "message"),
        ({"message": "x" * 8193}, "message"),
        ({"message": "m", "tags": "deploy"}, "tags"),
        ({"message": "m", "tags": [f"t{n}" for n in range(33)]}, "tags"),
        ({"message": "m", "tags": ["ok", "a,b"]}, "tags[1]"),
        ({"message": "m", "tags": [""]}, "tags[0]"),
        ({"message": "m", "tags": [3]}, "tags[0]"),
        ([{"message": "a"}, {"message": "b", "tags": ["x", " y"]}], "[1].tags[1]"),
        ({"message": "m", "payload": [1, 2]}, "payload"),
        ({"message": "m", "payload": "text"}, "payload"),
        ({"message": "m", "payload": {"big": "x" * 17_000}}, "payload"),
        ({"message": "m", "timestamp": "yesterday"}, "timestamp"),
        ({"message": "m", "timestamp": "9999-06-01T00:00:00Z"}, "timestamp"),
        ({"message": "m", "timestamp": -1}, "timestamp"),
        ({"message": "m", "timestamp": True}, "timestamp"),
        ({"message": "m", "timestamp": [1]}, "timestamp"),
        ({"message": "m", "id": "request:0123"}, "id"),
        ({"message": "m", "id": "has space"}, "id"),
        ({"message": "m", "id": ""}, "id"),
        ({"message": "m", "id": 12}, "id"),
        ({"message": "m", "trace_id": "XYZ"}, "trace_id"),
        ({"message": "m", "trace_id": "0" * 32}, "trace_id"),
        ({"message": "m", "colour": "red"}, "colour"),
        ([{"message": "a"}, {"message": "b", "event_id": "x"}], "[1].event_id"),
        ([{"message": "a"}, 5], "[1]"),
        ([{"message": "a"}, [{"message": "b"}]], "[1]"),
        (5, "body"),
        ("a string", "body"),
        (None, "body"),
        ([], "body"),
    ],
)
async def test_a_bad_field_is_a_400_naming_it_and_nothing_is_queued(
    serve: Serve, body: Any, field: str
) -> None:
    served = await serve()
    api_apps.assert_bad_field(await served.post(body), field)
    assert served.accepted == 0  # a list is checked whole: its good events are not queued
    await served.flush()
    assert await served.events() == []


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_field"),
        (b"", "application/json", 400, "invalid_field"),
        (b'{"message": "m"', "application/json", 400, "invalid_field"),
        (b'{"message": "m", "timestamp": NaN}', "application/json", 400, "invalid_field"),
        (b'{"message": "\xff\xfe"}', "application/json", 400, "invalid_field"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "body_too_large"),
        (b"[" * 30_000 + b"]" * 30_000, "application/json", 400, "invalid_field"),
        (b'{"message": "m"}', "application/json; charset=utf-8", 202, None),
        (b'{"message": "m"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"message": "m"}', "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"message": "m"}', None, 415, "unsupported_media_type"),
    ],
)
async def test_a_body_that_is_not_json_is_refused(
    serve: Serve, content: bytes, content_type: str | None, status: int, code: str | None
) -> None:
    served = await serve()
    answer = await served.post_raw(content, content_type)
    assert answer.status_code == status, answer.text
    if code is None:
        assert served.accepted == 1
        return
    error = answer.json()["error"]
    assert error["code"] == code
    if status == 400:
        assert error["field"] == "body"
    assert served.accepted == 0


def body_of(size: int) -> bytes:
    """A valid list of events that is exactly ``size`` bytes of JSON."""
    events = [{"message": "x" * 8000} for _ in range(8)] + [{"message": ""}]
    base = len(json.dumps(events, separators=(",", ":")).encode())
    events[-1]["message"] = "y" * (size - base)
    content = json.dumps(events, separators=(",", ":")).encode()
    assert len(content) == size
    return content


async def test_a_body_over_64_kib_is_413(serve: Serve) -> None:
    served = await serve()
    fits = await served.post_raw(body_of(MAX_BODY))
    assert fits.status_code == 202, fits.text
    assert fits.json()["data"]["accepted"] == 9
    over = await served.post_raw(body_of(MAX_BODY + 1))
    assert over.status_code == 413, over.text
    assert over.json()["error"]["code"] == "body_too_large"
    assert served.accepted == 9


async def test_a_streamed_body_over_64_kib_is_413_under_asgi(
    make_aegis: Callable[..., Aegis],
) -> None:
    """No Content-Length (chunked): the bound is kept while reading, and the
    rest of the body is left unread."""
    aegis = make_aegis(access=ACCESS, flush_interval=3600, metrics_registry="none")
    app = api_apps.starlette_app()
    install(app, aegis=aegis)
    headers = [
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {EDITOR}".encode()),
    ]

    async def stream(size: int) -> Exchange:
        content = body_of(size)
        parts = [content[n : n + 4096] for n in range(0, len(content), 4096)]
        exchange = Exchange(
            [{"type": "http.request", "body": part, "more_body": True} for part in parts]
            + [{"type": "http.request", "body": b""}]
        )
        return await call(app, http_scope(EVENTS, method="POST", headers=headers), exchange)

    fits = await stream(MAX_BODY)
    assert fits.status == 202, fits.body
    over = await stream(MAX_BODY + 1)
    assert over.status == 413, over.body
    assert json.loads(over.body)["error"]["code"] == "body_too_large"
    assert aegis.stats().events_accepted == 9


async def test_at_most_100_events_at_once(serve: Serve) -> None:
    served = await serve()
    too_many = await served.post([{"message": f"m{n}"} for n in range(MAX_EVENTS + 1)])
    assert too_many.status_code == 400, too_many.text
    error = too_many.json()["error"]
    assert error["field"] == "body" and "100" in error["message"]
    assert served.accepted == 0
    most = await served.post([{"message": f"m{n}", "id": f"m{n}"} for n in range(MAX_EVENTS)])
    assert most.status_code == 202, most.text
    assert most.json()["data"] == {"accepted": 100, "ids": [f"m{n}" for n in range(100)]}
    await served.flush()
    assert sorted(await served.ids("limit=1000")) == sorted(f"m{n}" for n in range(100))


# -- refused: no store, a full queue ---------------------------------------------------------


async def test_no_sink_storing_events_is_409(serve: Serve) -> None:
    batches: list[Batch] = []
    served = await serve(sink=batches.append)
    answer = await served.post({"message": "nowhere to go"})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "events_not_stored"
    assert served.accepted == 0
    # Nothing keeps history to read them from: a 503, and bad input still a 400.
    read = await served.get()
    assert read.status_code == 503 and read.json()["error"]["code"] == "history_unavailable"
    bad = await served.get("limit=0")
    assert bad.status_code == 400 and bad.json()["error"]["parameter"] == "limit"
    await served.flush()
    assert all(not batch.events for batch in batches)


async def test_a_full_queue_is_503_with_retry_after_and_the_ids_taken(serve: Serve) -> None:
    served = await serve(max_buffer=3)
    answer = await served.post([{"message": f"e{n}", "id": f"e{n}"} for n in range(5)])
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    error = answer.json()["error"]
    assert error["code"] == "events_not_queued"
    assert error["accepted"] == ["e0", "e1", "e2"]
    assert error["accepted_indexes"] == [0, 1, 2]
    stats = served.aegis.stats()
    assert (stats.events_accepted, stats.events_buffered) == (3, 3)
    assert stats.events_dropped["event_buffer_full"] == 2
    # Full still: none of a second send is taken.
    refused = await served.post({"message": "e3", "id": "e3"})
    assert refused.status_code == 503 and refused.json()["error"]["accepted"] == []
    assert served.aegis.stats().events_dropped["event_buffer_full"] == 3

    await served.flush()  # room again: the client sends the others
    answer = await served.post([{"message": f"e{n}", "id": f"e{n}"} for n in (3, 4)])
    assert answer.status_code == 202, answer.text
    await served.flush()
    assert sorted(await served.ids()) == [f"e{n}" for n in range(5)]
    assert served.accepted == 5


# -- GET's filters ------------------------------------------------------------------------


#: id, seconds after BASE, type, source, level, tags, trace id
SENT = [
    ("d1", 1, "alert", "deployer", "info", ["deploy", "eu"], TRACE_A),
    ("d2", 2, "alert", "deployer", "warning", ["deploy", "us"], None),
    ("m1", 3, "metric", "billing", "debug", ["eu"], None),
    ("l1", 4, "log", "worker", "error", [], TRACE_B),
    ("l2", 5, "log", "worker", "critical", ["deploy"], TRACE_A),
    ("t1", 6, "trace", "app", "info", ["eu", "deploy", "us"], None),
    ("x-a", 7, "log", "worker", "info", ["tie"], None),
    ("x-b", 7, "log", "worker", "info", ["tie"], None),
    ("p1", 0, "log", "tagger", "debug", ["50%", "a_b", 'say "hi"', "back\\slash", "ünï"], None),
]


#: query -> the ids it gives, newest first
FILTERS = [
    ("", ["x-b", "x-a", "t1", "l2", "l1", "m1", "d2", "d1", "p1"]),
    ("type=alert", ["d2", "d1"]),
    ("type=alert,metric", ["m1", "d2", "d1"]),
    ("type=metric, alert", ["m1", "d2", "d1"]),
    ("level=error,critical", ["l2", "l1"]),
    ("level=info&type=trace", ["t1"]),
    ("source=worker", ["x-b", "x-a", "l2", "l1"]),
    ("source=app", ["t1"]),
    ("source=nobody", []),
    ("tags=deploy", ["t1", "l2", "d2", "d1"]),
    ("tags=deploy,eu", ["t1", "d1"]),
    ("tags=eu,%20deploy,us", ["t1"]),
    ("tags=nope", []),
    # Whole tags only, whatever they hold: no substrings, no wildcards.
    ("tags=dep", []),
    ("tags=ploy", []),
    ("tags=e", []),
    ("source=work", []),
    ("tags=50%25", ["p1"]),
    ("tags=5%25", []),
    ("tags=%25", []),
    ("tags=a_b", ["p1"]),
    ("tags=axb", []),
    ("tags=a%25", []),
    ("tags=say%20%22hi%22", ["p1"]),
    ("tags=say", []),
    ("tags=back%5Cslash", ["p1"]),
    ("tags=%C3%BCn%C3%AF", ["p1"]),
    ("tags=%C3%BCn%C3%AF,a_b,50%25", ["p1"]),
    ("source=tagger&level=debug", ["p1"]),
    ("tags=deploy&type=alert&level=warning", ["d2"]),
    (f"trace_id={TRACE_A}", ["l2", "d1"]),
    (f"trace_id={TRACE_B}&level=error", ["l1"]),
    (f"since={q(BASE + 2)}", ["x-b", "x-a", "t1", "l2", "l1", "m1", "d2"]),
    (f"until={iso(BASE + 4, zulu=True)}", ["m1", "d2", "d1", "p1"]),
    (f"since={q(BASE + 2)}&until={q(BASE + 4)}", ["m1", "d2"]),
    (f"since={q(BASE + 7)}", ["x-b", "x-a"]),
    ("limit=2", ["x-b", "x-a"]),
    ("limit=2&offset=2", ["t1", "l2"]),
    ("offset=7", ["d1", "p1"]),
    ("offset=8", ["p1"]),
    ("offset=9", []),
    ("tags=deploy&limit=1&offset=1", ["l2"]),
]


async def test_get_filters(serve: Serve, store: str) -> None:
    served = await serve(sink=store)
    body = [
        {"message": f"event {id_}", "id": id_, "timestamp": BASE + after, "type": type_,
         "source": source, "level": level, "tags": tags, "trace_id": trace}
        for id_, after, type_, source, level, tags, trace in SENT
    ]  # fmt: skip
    answer = await served.post(body)
    assert answer.status_code == 202, answer.text
    await served.flush()
    for query, expected in FILTERS:
        response = await served.get(query)
        assert response.status_code == 200, (query, response.text)
        data = response.json()["data"]
        assert [event["id"] for event in data["events"]] == expected, query
        params = dict(part.split("=", 1) for part in query.split("&") if part)
        assert data["limit"] == int(params.get("limit", 100)), query
        assert data["offset"] == int(params.get("offset", 0)), query


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("type=nope", "type"),
        ("type=alert,,log", "type"),
        ("level=LOUD", "level"),
        ("tags=", "tags"),
        ("tags=a,,b", "tags"),
        ("tags=" + "t" * 129, "tags"),
        ("source=", "source"),
        ("source=a%01b", "source"),
        ("trace_id=abc", "trace_id"),
        ("trace_id=" + "A" * 32, "trace_id"),
        ("since=yesterday", "since"),
        ("until=2025-13-01T00:00:00Z", "until"),
        (f"since={q(BASE + 10)}&until={q(BASE)}", "since"),
        (f"since={q(BASE)}&until={q(BASE)}", "since"),
        ("since=9999-06-01T00:00:00Z", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=10001", "offset"),
        ("colour=red", "colour"),
        ("type=log&type=alert", "type"),
        ("trace_id=", "trace_id"),
        ("tags=%ff", "tags"),
        ("source=" + "s" * 1025, "source"),
        ("limit=%20", "limit"),
        ("level=,", "level"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(serve: Serve, query: str, parameter: str) -> None:
    served = await serve()
    api_apps.assert_bad_parameter(await served.get(query), parameter)


# -- the request log's errors ----------------------------------------------------------------


async def test_an_app_error_is_read_as_an_error_event(serve: Serve, store: str) -> None:
    served = await serve(sink=store)
    assert (await served.request("GET", "/boom")).status_code == 500
    assert (await served.request("GET", "/unavailable")).status_code == 503
    assert (await served.request("GET", "/ok")).status_code == 200
    assert (await served.request("GET", "/missing")).status_code == 404
    deploy = {"message": "deployed", "type": "alert", "source": "deployer", "tags": ["deploy"],
              "id": "deploy-3"}  # fmt: skip
    assert (await served.post(deploy)).status_code == 202
    await served.flush()

    events = {event["id"]: event for event in await served.events()}
    failed = sorted(key for key in events if key.startswith("request:"))
    assert len(failed) == 2 and sorted(events) == sorted([*failed, "deploy-3"]), events
    by_route = {events[key]["payload"]["route"]: events[key] for key in failed}
    assert sorted(by_route) == ["/boom", "/unavailable"]
    boom = by_route["/boom"]
    assert (boom["type"], boom["source"], boom["level"], boom["tags"], boom["trace_id"]) == (
        "log", "app", "error", ["request"], None,
    )  # fmt: skip
    assert "RuntimeError: kaboom" in boom["message"]
    assert boom["payload"]["status"] == 500 and boom["payload"]["method"] == "GET"
    assert boom["payload"]["path"] == "/boom"
    assert boom["id"] == f"request:{boom['payload']['request_id']}"
    unavailable = by_route["/unavailable"]
    assert unavailable["payload"]["status"] == 503 and unavailable["level"] == "error"
    assert unavailable["message"] == "GET /unavailable answered 503"
    if store == "memory://":
        sink = served.aegis.sinks[0]
        assert isinstance(sink, MemorySink)
        stored = {f"request:{r.request_id}" for r in sink.requests if r.status >= 500}
        assert stored == set(failed)

    assert await served.ids("type=alert") == ["deploy-3"]
    assert await served.ids("tags=deploy") == ["deploy-3"]
    assert await served.ids("source=deployer") == ["deploy-3"]
    assert sorted(await served.ids("level=error")) == failed
    assert sorted(await served.ids("tags=request")) == failed
    assert sorted(await served.ids("source=app&type=log")) == failed
    assert await served.ids(f"trace_id={TRACE_A}") == []
    assert await served.ids("tags=request,deploy") == []
    assert await served.ids("level=info,warning") == ["deploy-3"]
    assert await served.ids(f"until={q(BASE)}") == []
    assert len(await served.ids("limit=1")) == 1
    paged = [*(await served.ids("limit=2")), *(await served.ids("limit=2&offset=2"))]
    assert paged == await served.ids()


async def test_pages_of_events_and_errors_interleaved_in_time(serve: Serve, store: str) -> None:
    """The two sources merged newest first (ties by id), paged without a gap
    or a repeat, and the time range applying to both."""
    clock = FakeClock(wall=BASE)
    served = await serve(sink=store, clock=clock)
    assert (
        await served.post({"message": "tie", "id": "tie", "timestamp": BASE + 1})
    ).status_code == 202
    for number in range(4):
        clock.advance(1.0)
        assert (await served.request("GET", "/boom")).status_code == 500
        clock.advance(1.0)
        answer = await served.post({"message": f"e{number}", "id": f"e{number}"})
        assert answer.status_code == 202, answer.text
    await served.flush()

    events = await served.events()
    shape = [
        ("r" if e["id"].startswith("request:") else e["id"], seconds(e["timestamp"]) - BASE)
        for e in events
    ]
    assert shape == [
        ("e3", 8),
        ("r", 7),
        ("e2", 6),
        ("r", 5),
        ("e1", 4),
        ("r", 3),
        ("e0", 2),
        ("tie", 1),
        ("r", 1),
    ]
    everything = [event["id"] for event in events]
    for limit in (1, 2, 4):
        paged: list[str] = []
        for offset in range(0, len(everything) + limit, limit):
            paged += await served.ids(f"limit={limit}&offset={offset}")
        assert paged == everything, limit
    ranged = await served.ids(f"since={q(BASE + 3)}&until={q(BASE + 6)}")
    assert ranged == [everything[3], "e1", everything[5]]
    assert await served.ids(f"since={q(BASE + 3)}&until={q(BASE + 6)}&level=error") == [
        everything[3], everything[5],
    ]  # fmt: skip


async def test_after_shutdown_a_post_is_503_and_counted(serve: Serve) -> None:
    served = await serve()
    assert (await served.post({"message": "before", "id": "before"})).status_code == 202
    assert await anyio.to_thread.run_sync(served.aegis.shutdown, 10.0)
    answer = await served.post([{"message": "late"}, {"message": "later"}])
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.json()["error"] == {**answer.json()["error"], "code": "events_not_queued",
                                      "accepted": []}  # fmt: skip
    stats = served.aegis.stats()
    assert stats.events_accepted == 1
    assert stats.events_dropped["event_shutdown"] == 2
    assert await served.ids() == ["before"]  # flushed at shutdown, still read


# -- the description ----------------------------------------------------------------------


async def test_openapi_lists_get_and_post_for_events(serve: Serve) -> None:
    served = await serve()
    answer = await served.request("GET", f"{API}/openapi.json", token=VIEWER)
    assert answer.status_code == 200, answer.text
    operations = answer.json()["paths"][EVENTS]
    assert sorted(operations) == ["get", "post"]
    names = [parameter["name"] for parameter in operations["get"]["parameters"]]
    assert names == list(EVENT_PARAMETERS)
    assert all(parameter["in"] == "query" for parameter in operations["get"]["parameters"])
    events = operations["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert events["properties"]["data"]["required"] == ["limit", "offset", "events"]
    post = operations["post"]
    for status in ("202", "400", "401", "403", "409", "413", "415", "503"):
        assert status in post["responses"], status
    assert "requestBody" in post
    assert "editor" in post["summary"]


# -- never a 500 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"message": "\\ud800"}',
        b'{"message": "m", "payload": {"k": "\\udfff"}}',
        b'{"message": "m", "tags": ["\\ud800"]}',
        b'{"message": "m", "id": "\\ud800"}',
        b'{"message": "m", "payload": {"n": 1e999}}',
        b'{"message": "m", "timestamp": 1e999}',
        b'{"message": "m", "timestamp": ' + b"9" * 400 + b"}",
        b'{"message": "m", "payload": {"n": ' + b"9" * 5000 + b"}}",
        b'{"message": "m", "payload": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
        b'{"message": "m", "tags": {"a": 1}}',
        b'{"message": "m", "tags": [["nested"]]}',
        b'{"message": "m", "tags": [{"a": 1}]}',
        b'{"message": "m", "timestamp": "2025-01-01T00:00:00+99:00"}',
        b'{"message": "m", "timestamp": {"at": 1}}',
        b'{"message": "m", "type": ["log"]}',
        b'{"message": "m", "level": {"x": 1}}',
        b'{"message": "m", "source": null}',
        b'{"\\u0000": 1, "message": "m"}',
        b'{"message": "m", "id": null, "trace_id": null, "payload": null, "tags": null}',
    ],
)
async def test_odd_bodies_never_make_a_500(serve: Serve, content: bytes) -> None:
    served = await serve()
    answer = await served.post_raw(content)
    assert answer.status_code in (202, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["error"]["field"]
        assert served.accepted == 0
    await served.flush()
    assert (await served.get()).status_code == 200

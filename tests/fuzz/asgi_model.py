"""ASGI cases: what the server feeds the app, what the app does, run on both paths.

A case is plain data (it goes to the worker process by pickle and is printed
as the falsifying example): the request, the messages ``receive()`` returns
(then ``http.disconnect``, as a server says once the client is gone), the
app's steps (send a message, receive, move the clock, raise, return) and the
send at which the server fails (the client went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import warnings
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

from hypothesis import strategies as st
from opentelemetry.trace import NonRecordingSpan, SpanContext, use_span

from aegis_mw import AegisMiddleware
from aegis_mw.testing import FakeClock
from tests.harness import http_scope

from .normalize import fresh_pipeline, normal, pipeline_figures, raised, warnings_of

Step = tuple[Any, ...]

#: Exceptions an app (or a failing server) raises, by name (cases stay plain data).
EXCEPTIONS: dict[str, type[BaseException]] = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "RuntimeError": RuntimeError,
    "ConnectionResetError": ConnectionResetError,
    "OSError": OSError,
    "StopIteration": StopIteration,
    "GeneratorExit": GeneratorExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,
}


_TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: Request headers: none, a traceparent (valid, malformed, twice, as a list
#: entry, not bytes) among others, and headers that are no list at all.
REQUEST_HEADERS: list[Any] = [
    [], [], [(b"traceparent", _TRACEPARENT)], [(b"accept", b"*/*"), (b"traceparent", b"00-zz")],
    [(b"traceparent", _TRACEPARENT), (b"traceparent", b"00-x")],
    [[b"traceparent", _TRACEPARENT]], [(b"traceparent", "text")], [(b"traceparent",)],
    ((b"traceparent", _TRACEPARENT),), None, [(b"TRACEPARENT", _TRACEPARENT)],
    [(b"traceparent", b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
]  # fmt: skip


def span_of(ids: tuple[int, int] | None) -> Any:
    """A context in which OpenTelemetry's current span has these ids (an
    invalid span for zeros), as an instrumentation outside ours makes it."""
    if ids is None:
        return contextlib.nullcontext()
    return use_span(NonRecordingSpan(SpanContext(*ids, is_remote=False)))


@dataclass(frozen=True)
class AsgiCase:
    method: str
    path: str
    inbound: tuple[Any, ...]  # what receive() returns, in order, then http.disconnect
    steps: tuple[Step, ...]  # the app's
    send_fails_at: int | None = None  # the server's n-th send raises (0-based)
    send_fails_with: str = "ConnectionResetError"
    route: Any = None  # scope["route"] set by the app (a template object or text)
    headers: Any = ()  # the request's headers (a traceparent, well-formed or not)
    span: Any = None  # OpenTelemetry's current span around the call (span_of)
    inner_span: Any = None  # ... and while the app runs (an instrumentation inside ours)
    #: What the server does when the app suspends (a "suspend" step): resume it
    #: ("send"), throw an exception into it ("throw:<name>", a cancellation; as
    #: its class, "throw-type:", or in the old three-argument form), or close()
    #: it (the task is dropped).
    on_suspend: str = "send"
    #: "async" (an async def), "bare-iterator" (returns an awaitable whose
    #: iterator suspends once and has no throw()), "sync" (returns None: not awaitable)
    app_kind: str = "async"


# -- strategies -------------------------------------------------------------------

exception_names = st.sampled_from(sorted(EXCEPTIONS))
status_values = st.one_of(
    st.integers(100, 599),
    st.sampled_from([0, -1, 99, 600, 1000, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    st.sampled_from([200.0, 404.5, float("nan"), float("inf"), True, False]),
    st.sampled_from([HTTPStatus.OK, HTTPStatus.NOT_FOUND, HTTPStatus.INTERNAL_SERVER_ERROR]),
    st.sampled_from(["200", "OK", b"200", None]),
)
count_values = st.one_of(
    st.integers(0, 10_000),
    st.sampled_from([-1, -(2**63), 2**62, 2**63 - 1, 2**63, 2**64, 10**30]),
    st.sampled_from([1.0, 2.5, True, False, "10", None, HTTPStatus.OK]),
)
more_values = st.sampled_from([True, False, 0, 1, None, "", "no", 2.0])
#: An absent key: the key is left out of the message.
ABSENT = "<absent>"


def _message(kind: str, **fields: Any) -> dict[str, Any]:
    message = {"type": kind}
    message.update({key: value for key, value in fields.items() if value != ABSENT})
    return message


body_values = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=8).map(bytearray),
    st.binary(max_size=8).map(lambda data: ("memoryview", data)),
    st.sampled_from([b"", None, "text", 123, ABSENT]),
)


@st.composite
def odd_messages(draw: st.DrawFn) -> Any:
    """Any message an app might send, well-formed or not."""
    kind = draw(
        st.sampled_from(
            ["start", "body", "body", "zerocopy", "zerocopy", "pathsend", "other", "untyped"]
        )
    )
    if kind == "start":
        message = _message(
            "http.response.start",
            status=draw(st.one_of(status_values, st.just(ABSENT))),
            headers=draw(st.sampled_from([[], [(b"content-length", b"3")], ABSENT])),
        )
    elif kind == "body":
        message = _message(
            "http.response.body",
            body=draw(body_values),
            more_body=draw(st.one_of(more_values, st.just(ABSENT))),
        )
    elif kind == "zerocopy":
        message = _message(
            "http.response.zerocopysend",
            file=3,
            count=draw(st.one_of(count_values, st.just(ABSENT))),
            more_body=draw(st.one_of(more_values, st.just(ABSENT))),
        )
    elif kind == "pathsend":
        message = _message("http.response.pathsend", path="/etc/hostname")
    elif kind == "other":
        message = _message(draw(st.sampled_from(["http.response.trailers", "http.disconnect", ""])))
    else:
        message = draw(st.sampled_from([{}, {"type": None}, {"type": 5}, {"body": b"x"}]))
    how = draw(st.sampled_from(["dict", "dict", "dict", "mapping", "keyword"]))
    return (how, message)


@st.composite
def split_bodies(draw: st.DrawFn, max_size: int = 60) -> list[bytes]:
    """A body cut anywhere into parts (empty parts included)."""
    data = draw(st.binary(max_size=max_size))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


any_step = st.one_of(
    st.tuples(st.just("send"), odd_messages(), st.booleans()).map(
        lambda t: ("send", t[1][0], t[1][1], t[2])
    ),
    st.just(("receive",)),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.003, 2.0])),
    st.tuples(st.just("raise"), exception_names),
    st.just(("return",)),
    st.tuples(st.just("suspend"), st.booleans()),
)


@st.composite
def well_formed_steps(draw: st.DrawFn) -> list[Step]:
    """A usual response (start, then a body in parts), with steps of any kind
    (a raise, a receive, an odd message) dropped in anywhere."""
    steps: list[Step] = [
        (
            "send",
            "dict",
            _message("http.response.start", status=draw(status_values), headers=[]),
            False,
        )
    ]
    parts = draw(split_bodies())
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        steps.append(("advance", draw(st.sampled_from([0.0, 0.001, 0.25]))))
        steps.append(
            ("send", "dict", _message("http.response.body", body=part, more_body=not last), False)
        )
    for _ in range(draw(st.integers(0, 3))):  # anything, anywhere: a raise, an odd message
        steps.insert(draw(st.integers(0, len(steps))), draw(any_step))
    return steps


@st.composite
def inbound_messages(draw: st.DrawFn) -> list[Any]:
    """The request body in parts, more_body patterns, a disconnect anywhere."""
    parts = draw(split_bodies(max_size=30))
    messages: list[Any] = []
    for index, part in enumerate(parts):
        more = draw(more_values) if draw(st.booleans()) else index < len(parts) - 1
        body: Any = draw(st.sampled_from([part, part, bytearray(part), None, ABSENT]))
        messages.append(_message("http.request", body=body, more_body=more))
    if draw(st.booleans()):
        messages.insert(draw(st.integers(0, len(messages))), {"type": "http.disconnect"})
    return messages


@st.composite
def asgi_cases(draw: st.DrawFn) -> AsgiCase:
    steps = draw(st.one_of(well_formed_steps(), st.lists(any_step, max_size=8)))
    return AsgiCase(
        method=draw(st.sampled_from(["GET", "POST", "HEAD", "BREW"])),
        path=draw(st.sampled_from(["/", "/things/1", "/static/x.css", "/" + "x" * 300])),
        inbound=tuple(draw(inbound_messages())),
        steps=tuple(steps),
        send_fails_at=draw(st.one_of(st.none(), st.integers(0, 4))),
        send_fails_with=draw(st.sampled_from(["ConnectionResetError", "OSError", "RuntimeError"])),
        route=draw(st.sampled_from([None, None, "/things/{id}", "", 7])),
        headers=draw(st.sampled_from(REQUEST_HEADERS)),
        span=draw(
            st.sampled_from([None, None, (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xA1), (0, 0)])
        ),
        inner_span=draw(st.sampled_from([None, None, (0x5CF92F3577B34DA6A3CE929D0E0E4736, 0xB2)])),
        on_suspend=draw(
            st.sampled_from(
                [
                    "send",
                    "close",
                    "throw:CancelledError",
                    "throw:ValueError",
                    "throw:GeneratorExit",
                    "throw:KeyboardInterrupt",
                    "throw-type:ValueError",
                    "throw-three-arguments:ValueError",
                    "throw-invalid:KeyError",
                    "throw:StopIteration",
                ]
            )
        ),
        app_kind=draw(st.sampled_from(["async"] * 8 + ["bare-iterator", "sync"])),
    )


# -- running a case ----------------------------------------------------------------


def _build(how: str, message: dict[str, Any]) -> Any:
    """The message object the app sends (a fresh one on each path)."""
    built = {
        key: memoryview(value[1]) if isinstance(value, tuple) and value[:1] == ("memoryview",)
        else bytearray(value) if isinstance(value, bytearray) else value
        for key, value in message.items()
    }  # fmt: skip
    return MappingProxyType(built) if how == "mapping" else built


def run(case: AsgiCase, compiled: bool) -> dict[str, Any]:
    """One path's outcome: everything the server, the app and the pipeline saw."""
    clock = FakeClock()
    aegis = fresh_pipeline(clock, compiled, exclude_paths=["/static/*"])
    own: list[BaseException] = []  # what the app or the server raised
    events: list[Any] = []  # what the app saw
    sent: list[Any] = []  # what the server was sent
    inbound = list(case.inbound)
    sends = 0

    async def receive() -> Any:
        return inbound.pop(0) if inbound else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal sends
        sends += 1
        if sends - 1 == case.send_fails_at:
            own.append(EXCEPTIONS[case.send_fails_with]("the client went away"))
            raise own[-1]
        sent.append(normal(dict(message)))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with span_of(case.inner_span):
            await steps(scope, receive, send)

    async def steps(scope: Any, receive: Any, send: Any) -> None:
        if case.route is not None:
            scope["route"] = case.route
        for step in case.steps:
            if step[0] == "send":
                _, how, message, catch = step
                message = _build(how, message)
                try:
                    await (send(message=message) if how == "keyword" else send(message))
                except Exception as exc:
                    if not catch:
                        raise
                    events.append(("send raised", normal(exc)))
            elif step[0] == "receive":
                events.append(("received", normal(dict(await receive()))))
            elif step[0] == "advance":
                clock.advance(step[1])
            elif step[0] == "raise":
                own.append(EXCEPTIONS[step[1]]("raised by the app"))
                raise own[-1]
            elif step[0] == "return":
                return
            elif step[0] == "suspend":
                try:
                    events.append(("resumed with", normal(await Suspend())))
                except Exception as exc:
                    if not step[1]:
                        raise
                    events.append(("suspension raised", normal(exc)))

    def bare_iterator(scope: Any, receive: Any, send: Any) -> Any:
        return Held()

    def sync(scope: Any, receive: Any, send: Any) -> None:
        return None

    apps = {"async": app, "bare-iterator": bare_iterator, "sync": sync}
    middleware = AegisMiddleware(apps[case.app_kind], aegis=aegis)
    assert middleware.compiled is compiled
    aegis.asgi_lifespan = True  # no "no lifespan" warning: it says nothing here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scope = http_scope(case.path, method=case.method)
        scope["headers"] = case.headers if type(case.headers) is not list else [*case.headers]
        with span_of(case.span):
            outcome = _drive(middleware(scope, receive, send), case.on_suspend, own)
        gc.collect()
    return {
        "server was sent": sent,
        "the app saw": events,
        "raised": raised(outcome, own) if not isinstance(outcome, tuple) else outcome,
        "in flight": aegis.aggregates.in_flight_now(),
        "warnings": warnings_of(caught),
        **pipeline_figures(aegis),
    }


class Held:
    """An app's awaitable whose iterator (a list's) suspends once, with no throw()."""

    def __await__(self) -> Any:
        return iter(["suspended"])


class Suspend:
    """Suspends the coroutine awaiting it, as waiting on the network does."""

    def __await__(self) -> Any:
        return (yield "suspended")


def _drive(coroutine: Any, on_suspend: str, own: list[BaseException]) -> Any:
    """Run the middleware's coroutine as an event loop would: what it raised
    (None), and at each suspension what the server did and what came of it."""
    value: Any = None
    for _ in range(20):
        try:
            if on_suspend.startswith("throw") and value == "suspended":
                how, name = on_suspend.split(":")
                own.append(EXCEPTIONS[name]("thrown in by the server"))
                if how == "throw-type":  # the class: Python makes the instance
                    value = coroutine.throw(EXCEPTIONS[name])
                elif how == "throw-three-arguments":  # deprecated since 3.12, still served
                    value = coroutine.throw(EXCEPTIONS[name], own[-1], None)
                elif how == "throw-invalid":  # an instance with a value: a TypeError
                    value = coroutine.throw(own[-1], 5)
                else:
                    value = coroutine.throw(own[-1])
            elif on_suspend == "close" and value == "suspended":
                coroutine.close()
                return ("closed", None)
            else:
                value = coroutine.send(None if value is None else "resumed")
        except StopIteration:
            return None
        except BaseException as exc:
            return exc
    coroutine.close()
    raise AssertionError("the request kept suspending")


def both_paths(case: AsgiCase) -> tuple[dict[str, Any], dict[str, Any]]:
    return run(case, compiled=False), run(case, compiled=True)

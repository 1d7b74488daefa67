"""Health checks written as FastAPI dependencies, answered at /health/ready of real
FastAPI apps with the middleware installed: resolution as in a route (sub-dependencies,
sync ones in the thread pool, `yield` cleanup, overrides, the per-run cache), failures
and timeouts as failing checks, request data refused when the check is made.

No ``from __future__ import annotations`` here: FastAPI reads the parameters'
annotations at run time, and the dependencies they name are local to each test
(a module of the user's, whose dependencies are module globals, may use it).
"""

import asyncio
import contextvars
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from blockbuster import blockbuster_ctx
from fastapi import Cookie, Depends, FastAPI, Header, HTTPException, Request, WebSocket
from fastapi import Path as PathParam
from pydantic import BaseModel

from aegis_mw import Aegis
from aegis_mw.contrib.fastapi import DependencyCheck, dependency_check, install
from aegis_mw.health import CheckOutcome
from tests.harness import call, http_scope

#: Time a check is given before it is cut off, in the tests that hang one on purpose.
SHORT = 0.1
#: Bound on waiting for something the test is sure will happen.
WAIT = 10.0


def build(make_aegis: Callable[..., Aegis]) -> tuple[FastAPI, Aegis]:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app, install(app, aegis=make_aegis(health_cache_seconds=0, metrics_registry="none"))


async def ready(app: FastAPI) -> tuple[int, dict[str, Any]]:
    """GET /health/ready: the status, and the body (checked to be health+json)."""
    exchange = await call(app, http_scope("/health/ready"))
    headers = dict(exchange.sent[0]["headers"])
    assert headers[b"content-type"] == b"application/health+json"
    assert exchange.status is not None
    return exchange.status, json.loads(exchange.body)


def entry(body: dict[str, Any], name: str) -> dict[str, Any]:
    [result] = body["checks"][name]
    return dict(result)


# --------------------------------------------------------------------------- resolution


@pytest.mark.anyio
async def test_dependencies_resolve_as_in_a_route_and_close_in_reverse(
    make_aegis: Callable[..., Aegis],
) -> None:
    """An async `yield` dependency used twice (opened once), a sync one in a worker
    thread on top of it, a sync `yield` one, the app from the request: the check
    passes, and every dependency is closed, innermost first, before the answer."""
    app, aegis = build(make_aegis)
    app.state.replica = "replica-1"
    log: list[str] = []
    threads: set[str] = set()

    async def get_pool() -> AsyncIterator[str]:
        log.append("pool open")
        try:
            yield "pool"
        finally:
            log.append("pool close")

    def get_session(pool: Annotated[str, Depends(get_pool)]) -> Iterator[str]:
        threads.add(threading.current_thread().name)
        log.append("session open")
        yield f"session on {pool}"
        log.append("session close")

    def settings(request: Request) -> dict[str, Any]:
        threads.add(threading.current_thread().name)
        return {"replica": request.app.state.replica, "path": request.url.path}

    async def database(
        session: Annotated[str, Depends(get_session)],
        pool: Annotated[str, Depends(get_pool)],  # the same one: resolved once per run
        config: Annotated[dict[str, Any], Depends(settings)],
    ) -> dict[str, Any]:
        log.append("check")
        return {"session": session, "pool": pool, **config}

    aegis.health.add("database", dependency_check(app, database))
    status, body = await ready(app)
    assert (status, body["status"]) == (200, "pass")
    database_entry = entry(body, "database")
    assert database_entry["details"] == {
        "session": "session on pool", "pool": "pool", "replica": "replica-1",
        "path": "/health/ready",
    }  # fmt: skip
    assert log == ["pool open", "session open", "check", "session close", "pool close"]
    assert threading.current_thread().name not in threads  # sync ones ran in worker threads
    await ready(app)  # a new run resolves afresh, as a new request would
    assert log.count("pool open") == 2


@pytest.mark.anyio
async def test_decorator_form_and_a_sync_check(make_aegis: Callable[..., Aegis]) -> None:
    app, aegis = build(make_aegis)

    def get_flag() -> bool:
        return False

    @aegis.health.check("search", critical=False)
    @dependency_check(app)
    def search(flag: Annotated[bool, Depends(get_flag)]) -> CheckOutcome:
        return CheckOutcome("warn", "index rebuilding", {"flag": flag})

    assert isinstance(search, DependencyCheck)
    assert search.name.endswith("search")
    status, body = await ready(app)
    assert (status, body["status"]) == (200, "warn")
    assert entry(body, "search")["output"] == "index rebuilding"
    assert entry(body, "search")["details"] == {"flag": False}


@pytest.mark.anyio
async def test_dependency_overrides_of_the_app_are_honoured_at_each_run(
    make_aegis: Callable[..., Aegis],
) -> None:
    app, aegis = build(make_aegis)

    async def get_db() -> AsyncIterator[str]:
        yield "production"

    async def database(db: Annotated[str, Depends(get_db)]) -> dict[str, str]:
        return {"db": db}

    aegis.health.add("database", dependency_check(app, database))
    assert entry((await ready(app))[1], "database")["details"] == {"db": "production"}
    app.dependency_overrides[get_db] = lambda: "fake"  # set after registration, as tests do
    assert entry((await ready(app))[1], "database")["details"] == {"db": "fake"}
    app.dependency_overrides.clear()
    assert entry((await ready(app))[1], "database")["details"] == {"db": "production"}


@pytest.mark.anyio
async def test_the_check_sees_the_context_variables_of_its_caller() -> None:
    """On both backends the run has a task of its own, in a copy of the caller's context."""
    app = FastAPI()
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")

    def get_tenant() -> str:
        return tenant.get()

    async def database(name: Annotated[str, Depends(get_tenant)]) -> dict[str, str]:
        return {"tenant": name}

    check = dependency_check(app, database)
    tenant.set("acme")
    assert await check() == {"tenant": "acme"}


# --------------------------------------------------------------------------- failures


@pytest.mark.anyio
async def test_a_failing_or_raising_check_fails_and_its_dependency_sees_why(
    make_aegis: Callable[..., Aegis],
) -> None:
    app, aegis = build(make_aegis)
    log: list[str] = []

    async def get_conn() -> AsyncIterator[str]:
        try:
            yield "conn"
        except RuntimeError as exc:  # as in a route: the dependency sees the error
            log.append(f"rollback after {exc}")
            raise
        finally:
            log.append("close")

    async def replica(conn: Annotated[str, Depends(get_conn)]) -> bool:
        return False

    async def primary(conn: Annotated[str, Depends(get_conn)]) -> bool:
        raise RuntimeError("connection reset")

    aegis.health.add("replica", dependency_check(app, replica), critical=False)
    status, body = await ready(app)
    assert (status, body["status"]) == (200, "warn")
    assert entry(body, "replica")["output"] == "check returned False"
    assert log == ["close"]

    aegis.health.add("primary", dependency_check(app, primary))
    log.clear()
    status, body = await ready(app)
    assert (status, body["status"]) == (503, "fail")
    primary_entry = entry(body, "primary")
    assert (primary_entry["status"], primary_entry["outcome"]) == ("fail", "fail")
    assert primary_entry["output"] == "RuntimeError: connection reset"
    assert sorted(log) == ["close", "close", "rollback after connection reset"]


@pytest.mark.anyio
async def test_an_http_exception_of_a_dependency_is_a_failing_check_not_a_500(
    make_aegis: Callable[..., Aegis],
) -> None:
    app, aegis = build(make_aegis)

    def get_db() -> str:
        raise HTTPException(status_code=503, detail="database unavailable")

    async def database(db: Annotated[str, Depends(get_db)]) -> bool:
        return True

    aegis.health.add("database", dependency_check(app, database))
    status, body = await ready(app)
    assert (status, body["status"]) == (503, "fail")
    assert entry(body, "database")["output"] == "HTTPException: 503: database unavailable"


@pytest.mark.anyio
async def test_an_override_that_needs_request_data_fails_at_run_time_clearly(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Overrides come after registration, so they are only known at run time: one that
    needs a query parameter the synthetic request lacks makes the check fail, clearly."""
    app, aegis = build(make_aegis)

    def get_db() -> str:
        return "db"

    def needs_a_token(token: str) -> str:  # a required query parameter
        return token

    async def database(db: Annotated[str, Depends(get_db)]) -> bool:
        return True

    aegis.health.add("database", dependency_check(app, database))
    app.dependency_overrides[get_db] = needs_a_token
    status, body = await ready(app)
    assert status == 503
    assert entry(body, "database")["output"] == (
        "ValueError: invalid request data: query 'token': Field required"
    )


# --------------------------------------------------------------------------- timeouts


@pytest.mark.anyio
async def test_a_hanging_async_check_times_out_and_its_dependency_is_closed(
    make_aegis: Callable[..., Aegis],
) -> None:
    app, aegis = build(make_aegis)
    closed = anyio.Event()
    never = anyio.Event()

    async def get_conn() -> AsyncIterator[str]:
        try:
            yield "conn"
        finally:
            closed.set()

    async def database(conn: Annotated[str, Depends(get_conn)]) -> bool:
        await never.wait()  # a server that never answers
        return True

    aegis.health.add("database", dependency_check(app, database), timeout=SHORT)
    status, body = await ready(app)
    assert (status, body["status"]) == (503, "fail")
    database_entry = entry(body, "database")
    assert (database_entry["outcome"], database_entry["output"]) == (
        "unknown", f"no answer within {SHORT:g} s",
    )  # fmt: skip
    with anyio.fail_after(WAIT):
        await closed.wait()  # the cancelled run closed its dependency


@pytest.mark.anyio
async def test_a_hanging_sync_dependency_does_not_hold_the_probe(
    make_aegis: Callable[..., Aegis],
) -> None:
    """A sync dependency blocked in its thread cannot be interrupted: the probe answers
    at the timeout anyway; the run closes the dependencies once the thread returns,
    in order, and no second run starts while it hangs."""
    app, aegis = build(make_aegis)
    release = threading.Event()
    closed = anyio.Event()
    log: list[str] = []

    async def get_pool() -> AsyncIterator[str]:
        try:
            yield "pool"
        finally:
            log.append("pool close")
            closed.set()

    def get_session(pool: Annotated[str, Depends(get_pool)]) -> str:
        log.append("session waits")
        release.wait(WAIT)  # a blocking driver call that hangs until released
        log.append("session returns")
        return "session"

    async def database(session: Annotated[str, Depends(get_session)]) -> bool:
        log.append("check")
        return True

    aegis.health.add("database", dependency_check(app, database), timeout=SHORT)
    for _ in range(2):  # the second probe waits for the hanging run, not a new one
        status, body = await ready(app)
        assert (status, entry(body, "database")["outcome"]) == (503, "unknown")
    assert log == ["session waits"]
    release.set()
    with anyio.fail_after(WAIT):
        await closed.wait()
    # Cancelled while the thread ran: the check never ran, the pool closed after the thread.
    assert log == ["session waits", "session returns", "pool close"]
    log.clear()
    assert (await ready(app))[0] == 200
    assert log == ["session waits", "session returns", "check", "pool close"]


# --------------------------------------------------------------------------- registration


def needs_query(q: str) -> str:
    return q


def needs_header(x_token: Annotated[str, Header()]) -> str:
    return x_token


def needs_cookie(session: Annotated[str, Cookie()]) -> str:
    return session


def needs_path(item_id: Annotated[int, PathParam()]) -> int:  # the health path has none
    return item_id


class Payload(BaseModel):
    name: str


def needs_body(payload: Payload) -> str:
    return payload.name


@pytest.mark.parametrize(
    ("dependency", "parameter", "where"),
    [
        (needs_query, "q", "query"),
        (needs_header, "x_token", "header"),
        (needs_cookie, "session", "cookie"),
        (needs_body, "payload", "body"),
        (needs_path, "item_id", "path"),
    ],
)
def test_request_data_is_refused_at_registration(
    dependency: Callable[..., Any], parameter: str, where: str
) -> None:
    app = FastAPI()

    def middle(value: Annotated[str, Depends(dependency)]) -> str:  # found at any depth
        return value

    async def database(value: Annotated[str, Depends(middle)]) -> bool:
        return True

    with pytest.raises(ValueError, match=r"^health check 'database': ") as caught:
        dependency_check(app, database, name="database")
    assert f"parameter {parameter!r} of {dependency.__qualname__}() is a required {where}" in str(
        caught.value
    )


def test_optional_request_data_takes_its_default() -> None:
    app = FastAPI()

    async def database(limit: int = 5, x_region: Annotated[str, Header()] = "eu") -> dict[str, Any]:
        return {"limit": limit, "region": x_region}

    check = dependency_check(app, database)
    assert anyio.run(check) == {"limit": 5, "region": "eu"}


def test_a_websocket_or_a_signature_fastapi_refuses_is_a_type_error() -> None:
    app = FastAPI()

    async def streaming(websocket: WebSocket) -> bool:
        return True

    with pytest.raises(TypeError, match=r"^health check 'stream': .*takes a WebSocket"):
        dependency_check(app, streaming, name="stream")

    def get_db() -> str:
        return "db"

    async def twice(db: Annotated[str, Depends(get_db)] = Depends(get_db)) -> bool:
        return True

    with pytest.raises(TypeError, match=r"^health check 'twice': .*Depends"):
        dependency_check(app, twice, name="twice")
    with pytest.raises(TypeError, match="needs the FastAPI app"):
        dependency_check(object(), streaming)


def test_an_unwrapped_dependency_check_is_refused_at_registration(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Registered without dependency_check, nothing would resolve its Depends: the
    registry says so at once (naming the parameter and the wrapper), in every
    spelling, instead of failing every probe later."""
    aegis = make_aegis()

    def get_db() -> str:
        return "db"

    async def annotated(db: Annotated[str, Depends(get_db)]) -> bool:
        return True

    def by_default(db: str = Depends(get_db)) -> bool:
        return True

    for check in (annotated, by_default):
        with pytest.raises(TypeError, match=r"'db' is a FastAPI dependency.*dependency_check"):
            aegis.health.add("database", check)
        with pytest.raises(TypeError, match=r"'db' is a FastAPI dependency"):
            aegis.health.check("database")(check)
    assert aegis.health.checks == ()
    aegis.health.add("database", dependency_check(FastAPI(), annotated))
    assert [check.name for check in aegis.health.checks] == ["database"]


# --------------------------------------------------------------------------- the event loop


def test_sync_dependencies_make_no_blocking_call_on_the_loop(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """A sync `yield` dependency holding a real SQLite connection, a sync check and an
    async check over it: with blockbuster watching, all of it stays off the loop."""
    app, aegis = build(make_aegis)
    database_file = tmp_path / "app.db"

    def get_db() -> Iterator[sqlite3.Connection]:
        # As in FastAPI's SQL tutorial: the generator's two halves and the check each
        # run in a pool thread, not necessarily the same one.
        connection = sqlite3.connect(database_file, check_same_thread=False)
        try:
            yield connection
        finally:
            connection.close()

    def sync_check(db: Annotated[sqlite3.Connection, Depends(get_db)]) -> dict[str, int]:
        return {"one": db.execute("SELECT 1").fetchone()[0]}

    def read_config() -> str:
        return database_file.with_name("config.txt").read_text()

    async def async_check(config: Annotated[str, Depends(read_config)]) -> dict[str, str]:
        return {"config": config}

    database_file.with_name("config.txt").write_text("ok")
    aegis.health.add("sync", dependency_check(app, sync_check))
    aegis.health.add("async", dependency_check(app, async_check))

    async def probe() -> tuple[int, dict[str, Any]]:
        return await ready(app)

    with blockbuster_ctx(scanned_modules=["aegis_mw"]):
        status, body = asyncio.run(probe())
    assert (status, body["status"]) == (200, "pass"), json.dumps(body)
    assert entry(body, "sync")["details"] == {"one": 1}
    assert entry(body, "async")["details"] == {"config": "ok"}


def test_the_detector_does_catch_a_blocking_check_on_the_loop(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Control: an async check that reads the file on the loop itself is caught (and,
    as any exception of a check, shown as its failure)."""
    app, aegis = build(make_aegis)
    config = tmp_path / "config.txt"
    config.write_text("ok")

    async def blocking() -> dict[str, str]:
        return {"config": config.read_text()}  # the misuse under test

    aegis.health.add("blocking", dependency_check(app, blocking))
    with blockbuster_ctx(scanned_modules=["aegis_mw"]):
        status, body = asyncio.run(ready(app))
    assert status == 503
    assert entry(body, "blocking")["output"].startswith("BlockingError: ")

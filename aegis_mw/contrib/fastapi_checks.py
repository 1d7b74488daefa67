"""Health checks written as FastAPI dependencies: ``dependency_check(app, function)``.

The function's parameters are resolved by FastAPI's own machinery, as for a
route of ``app``: sub-dependencies, sync ones in FastAPI's thread pool,
``yield`` dependencies closed after the check (also when it fails or times
out), ``app.dependency_overrides`` looked up at every run, a dependency used
twice resolved once per run. A check runs outside any request (its result is
cached and shared by probes), so it is resolved against a synthetic
``GET /health/ready`` with no client, headers, query or body; a parameter
that needs request data is refused when the check is made, not at a probe.

Example::

    from aegis_mw.contrib.fastapi import dependency_check, install

    aegis = install(app, sink="sqlite:///aegis.db")

    async def database(conn: Conn = Depends(get_db)) -> bool:
        return await conn.ping()

    aegis.health.add("database", dependency_check(app, database), timeout=1.0)

    @aegis.health.check("cache", critical=False)  # or as a decorator, under check()
    @dependency_check(app)
    async def cache(redis: Redis = Depends(get_redis)) -> bool:
        return await redis.ping()
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any, overload

from ..types import Message

try:
    from fastapi.dependencies.models import Dependant
    from fastapi.dependencies.utils import get_dependant, solve_dependencies
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("dependency checks need FastAPI: pip install 'aegis_mw[fastapi]'") from exc

__all__ = ["DependencyCheck", "dependency_check"]

#: The path of the synthetic request the checks are resolved against.
HEALTH_PATH = "/health/ready"
#: FastAPI's solve_dependencies grew keyword arguments over its versions (the
#: exit stack, later embed_body_fields): pass only those the installed one takes.
_SOLVE_ACCEPTS = frozenset(inspect.signature(solve_dependencies).parameters)
_REQUEST_DATA = (
    ("path_params", "path"),
    ("query_params", "query"),
    ("header_params", "header"),
    ("cookie_params", "cookie"),
    ("body_params", "body"),
)


class DependencyCheck:
    """A health check whose parameters FastAPI resolves against ``app``; an async
    callable without arguments, for ``aegis.health.add(name, ...)``. Made by
    :func:`dependency_check`."""

    def __init__(self, app: Any, function: Callable[..., Any], *, name: str | None = None) -> None:
        label = name or getattr(function, "__qualname__", None) or repr(function)
        if not callable(function):
            raise TypeError(f"health check {label!r}: {function!r} is not callable")
        if not hasattr(app, "dependency_overrides"):
            raise TypeError(f"health check {label!r}: dependency_check needs the FastAPI app")
        self.app = app
        self.function = function
        self.name = label
        try:
            self.dependant = get_dependant(path=HEALTH_PATH, call=function)
        except Exception as exc:  # FastAPI refuses some signatures with an AssertionError
            raise TypeError(f"health check {label!r}: {exc}") from exc
        refuse_request_data(label, self.dependant)
        self._is_async = _is_async(function)
        self._running: _Run | None = None

    def __repr__(self) -> str:
        return f"DependencyCheck({self.name!r})"

    async def __call__(self) -> Any:
        import anyio

        previous = self._running
        if previous is not None:
            # A run a probe gave up on is still in a thread it cannot leave, or in
            # its cleanup: one at a time, so a hanging dependency cannot pile up.
            await previous.done.wait()
        run = _Run(anyio.Event(), anyio.CancelScope())
        # The run has a task of its own: at the check's timeout the probe stops
        # waiting at once, even for a sync dependency's thread (which cannot be
        # interrupted); the run is cancelled and closes its dependencies itself.
        _spawn(self._resolve, run)
        # Noted once started (a spawn that failed leaves nothing to wait for); the
        # task has not run yet, so it cannot have finished before this.
        self._running = run
        try:
            await run.done.wait()
        finally:
            if not run.done.is_set():
                run.scope.cancel()
        if run.error is not None:
            raise run.error
        return run.value

    async def _resolve(self, run: _Run) -> None:
        try:
            with run.scope:
                run.value = await self._solve_and_call()
        except Exception as exc:  # reported by the waiting probe
            run.error = exc
        finally:
            run.done.set()
            if self._running is run:
                self._running = None

    async def _solve_and_call(self) -> Any:
        import anyio.lowlevel

        # The two stacks of a FastAPI route: "function" scoped dependencies close
        # when the function returns, "request" scoped ones after the background
        # tasks (a route's response), both before the check's result is given.
        async with AsyncExitStack() as request_stack:
            async with AsyncExitStack() as function_stack:
                request = synthetic_request(self.app, request_stack, function_stack)
                offered = {
                    "request": request,
                    "dependant": self.dependant,
                    "dependency_overrides_provider": self.app,
                    "async_exit_stack": request_stack,
                    # The body is always empty: optional body fields take their
                    # defaults whichever way they would be embedded.
                    "embed_body_fields": False,
                }
                solved: Any = await solve_dependencies(
                    **{key: value for key, value in offered.items() if key in _SOLVE_ACCEPTS}
                )
                # A SolvedDependency; a tuple in older FastAPI versions.
                values, errors, tasks = (
                    (solved.values, solved.errors, solved.background_tasks)
                    if hasattr(solved, "values")
                    else solved[:3]
                )
                if errors:  # from overrides, which are only known now
                    raise ValueError(describe_errors(errors))
                # A probe that gave up while a sync dependency held its thread
                # cancelled the run: the check itself is not run for nobody.
                await anyio.lowlevel.checkpoint_if_cancelled()
                if self._is_async:
                    value = await self.function(**values)
                else:  # as FastAPI runs a sync endpoint: in its thread pool
                    value = await run_in_threadpool(self.function, **values)
            if tasks is not None:
                await tasks()
        return value


class _Run:
    """One run of a check, in its own task; the probe waits for ``done``."""

    __slots__ = ("done", "error", "scope", "task", "value")

    def __init__(self, done: Any, scope: Any) -> None:
        self.done = done  # anyio.Event
        self.scope = scope  # anyio.CancelScope, cancelled when the probe gives up
        self.value: Any = None
        self.error: Exception | None = None
        self.task: Any = None  # asyncio keeps only a weak reference to a task


@overload
def dependency_check(
    app: Any, function: Callable[..., Any], /, *, name: str | None = None
) -> DependencyCheck: ...


@overload
def dependency_check(
    app: Any, /, *, name: str | None = None
) -> Callable[[Callable[..., Any]], DependencyCheck]: ...


def dependency_check(
    app: Any, function: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> DependencyCheck | Callable[[Callable[..., Any]], DependencyCheck]:
    """``function`` as a health check whose parameters FastAPI resolves as for a
    route of ``app`` (``Depends``, ``yield`` dependencies, ``app.dependency_overrides``).

    Raises ``ValueError`` (``TypeError`` for a WebSocket or a signature FastAPI
    refuses) naming the check and the parameter when a parameter needs request
    data that a health check does not have. ``name`` is only for those messages
    (default: the function's name). Without ``function``, a decorator::

        aegis.health.add("database", dependency_check(app, database))

        @aegis.health.check("cache", critical=False)
        @dependency_check(app)
        async def cache(redis: Redis = Depends(get_redis)) -> bool: ...
    """
    if function is not None:
        return DependencyCheck(app, function, name=name)

    def wrap(function: Callable[..., Any]) -> DependencyCheck:
        return DependencyCheck(app, function, name=name)

    return wrap


def refuse_request_data(label: str, dependant: Dependant) -> None:
    """Raise if any dependency in the tree needs what a health check cannot give."""
    for node in _walk(dependant):
        owner = f"{getattr(node.call, '__qualname__', repr(node.call))}()"
        if node.websocket_param_name:
            raise TypeError(
                f"health check {label!r}: {owner} takes a WebSocket "
                f"({node.websocket_param_name!r}); a health check has no connection"
            )
        for attribute, where in _REQUEST_DATA:
            for field in getattr(node, attribute):
                if _required(field):
                    raise ValueError(
                        f"health check {label!r}: parameter {field.name!r} of {owner} is a "
                        f"required {where} parameter, and a health check runs outside any "
                        "request (no path parameters, query, headers, cookies or body): "
                        "give it a default, or take the value from the app"
                    )


def synthetic_request(app: Any, request_stack: Any, function_stack: Any) -> Request:
    """``GET /health/ready`` of ``app``: no client, no headers, an empty body."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": HEALTH_PATH,
        "raw_path": HEALTH_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": None,
        "server": None,
        "path_params": {},
        "app": app,
        # Where each FastAPI version looks for the stacks that close `yield`
        # dependencies: one stack in older versions, one per dependency scope now.
        "fastapi_astack": request_stack,
        "fastapi_inner_astack": request_stack,
        "fastapi_function_astack": function_stack,
    }
    read = False

    async def receive() -> Message:
        nonlocal read
        # The empty body once, then a disconnect: a dependency waiting for the
        # client to go away must not spin on an endless supply of bodies.
        if read:
            return {"type": "http.disconnect"}
        read = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        raise RuntimeError("a health check has no response to send")

    return Request(scope, receive, send)


def describe_errors(errors: list[Any]) -> str:
    """FastAPI's validation errors as ``"query 'q': Field required; ..."``."""
    parts = []
    for error in errors[:5]:
        if isinstance(error, dict):
            where = " ".join(repr(part) if i else str(part) for i, part in enumerate(error["loc"]))
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        else:
            parts.append(str(error))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request data: " + "; ".join(parts) + more


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)


def _required(field: Any) -> bool:
    required = getattr(field, "required", None)  # pydantic 1's ModelField
    if isinstance(required, bool):
        return required
    return bool(field.field_info.is_required())


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 (objects with async __call__)
    )


def _spawn(function: Callable[[_Run], Any], run: _Run) -> None:
    """Start ``function(run)`` in a task that no probe's cancellation reaches.

    anyio has no detached task, so each backend's own: a trio system task, an
    asyncio task (referenced from the run, as asyncio holds tasks weakly). Both
    run in a copy of the probe's context variables, as a task started there would.
    """
    trio = sys.modules.get("trio")  # not imported: not running on trio
    if trio is not None and trio.lowlevel.in_trio_task():
        trio.lowlevel.spawn_system_task(function, run, context=contextvars.copy_context())
    else:
        run.task = asyncio.get_running_loop().create_task(function(run))

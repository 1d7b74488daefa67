"""Naming the server span ``tracing = true`` makes for a request, on every side.

OpenTelemetry's instrumentations name a span by the method and the raw path,
which is not bounded; the semantic conventions ask for ``{method}
{http.route}``, or the method alone while no route is known. The span is
created before the app routes the request, so it starts named by the method
alone (``GET``) and is renamed once the route template is known
(``GET /items/{item_id}``). A WebSocket session's span is named
``WEBSOCKET`` then ``WEBSOCKET /ws/chat/{room}``: it covers the whole session,
not one request. The span is duck-typed: OpenTelemetry is not imported here.

The app's hooks (``tracing_request_hook``, ``tracing_response_hook``) are
called through :func:`guarded_hook` on every side.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from .errors import ConfigError
from .labels import STANDARD_METHODS
from .record import UNMATCHED_ROUTE

logger = logging.getLogger("aegis_mw")

#: What a WebSocket session's span is named by in place of a method.
SESSION = "WEBSOCKET"


def span_method(method: object) -> str:
    """The method as a span's name has it: a standard one, else ``HTTP``."""
    return method if type(method) is str and method in STANDARD_METHODS else "HTTP"


def name_span(span: Any, prefix: str, route: object) -> None:
    """Name a request's span ``{prefix} {route}`` (``prefix``: :func:`span_method`,
    or :data:`SESSION`) by the route template it took (none, or a request no
    route matched: left as it is) and set ``http.route``."""
    if type(route) is str and route and route != UNMATCHED_ROUTE and span.is_recording():
        span.update_name(f"{prefix} {route}")
        span.set_attribute("http.route", route)


def tracing_hooks(settings: Any) -> tuple[Callable[..., None] | None, Callable[..., None] | None]:
    """The app's ``tracing_request_hook`` and ``tracing_response_hook``,
    resolved and guarded (see :func:`guarded_hook`); a pipeline with
    ``tracing`` on makes them once, its middlewares call them."""
    return (
        guarded_hook(settings.tracing_request_hook, "tracing_request_hook"),
        guarded_hook(settings.tracing_response_hook, "tracing_response_hook"),
    )


def resolved_hook(value: Callable[..., Any] | str | None, option: str) -> Callable[..., Any] | None:
    """The hook an option holds: a callable, or ``module:name`` imported now
    (when a pipeline with ``tracing`` on is built, not wherever settings are
    read); a :class:`ConfigError` naming the option when it cannot be had."""
    if not isinstance(value, str):
        return value
    module, _, name = value.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except Exception as error:  # an import error, or anything the module raised
        raise ConfigError(option, value, f"it could not be imported ({error!r})") from error
    if not callable(found):
        raise ConfigError(option, value, f"{type(found).__name__} is not callable")
    hook: Callable[..., Any] = found
    return hook


def guarded_hook(value: Callable[..., Any] | str | None, option: str) -> Callable[..., None] | None:
    """The app's ``tracing_request_hook`` or ``tracing_response_hook`` (named by
    ``option``; see :func:`resolved_hook`), called so that it fails nothing:
    what it raises is recorded on the span (its first argument), as
    OpenTelemetry's instrumentations do, and logged the first time; the
    request goes on as without it."""
    hook = resolved_hook(value, option)
    if hook is None:
        return None
    warned = False

    def call(span: Any, *details: Any) -> None:
        nonlocal warned
        try:
            hook(span, *details)
        except Exception as error:
            with suppress(Exception):
                span.record_exception(error)
            if not warned:
                warned = True
                logger.warning(
                    "aegis: %s raised %s (recorded on its span; logged once)",
                    option, type(error).__name__, exc_info=True,
                )  # fmt: skip

    return call

"""The app's own routes on one of our paths: the app keeps them.

An app that already serves ``/dashboard`` (behind its own login, say),
``/health`` or ``/metrics`` must answer exactly as without the middleware, so
where the app's routes can be read (Starlette and FastAPI routes, Flask's URL
map, Django's URLconf) a clash drops our route at that path and the log names
it with the option that moves ours. Apps whose routes cannot be read (any
other ASGI or WSGI app) get ours first, as documented.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger("aegis_mw")

#: Whether the app has a route of its own at a path.
HasRoute = Callable[[str], bool]

#: Which option moves each of our routes.
PATH_OPTIONS = ("metrics_path", "health_path", "liveness_path", "readiness_path",
                "dashboard_path", "api_path", "ws_path")  # fmt: skip


def option_for(settings: Any, path: str) -> str:
    """The option that moves our route at ``path`` (the API's routes share one)."""
    for option in PATH_OPTIONS:
        ours = getattr(settings, option)
        if ours and (path == ours or (option == "api_path" and path.startswith(ours + "/"))):
            return option
    return "exclude_paths"


def report(settings: Any, paths: Iterable[str]) -> None:
    for path in paths:
        option = option_for(settings, path)
        logger.warning(
            "aegis_mw: the app has its own route at %s and keeps serving it; aegis_mw's is "
            "not mounted there (set %s to serve it at another path)",
            path,
            option,
        )


def starlette_routes(app: Any, *, websocket: bool = False) -> HasRoute | None:
    """Routes found down the chain of middleware (``.app``) to a Starlette or
    FastAPI router; None when there are none to read. Those that take an HTTP
    request, or with ``websocket`` those that take a WebSocket handshake
    (mounts count for both: what they hold is not read)."""
    seen = 0
    node = app
    while node is not None and seen < 64:
        seen += 1
        routes = getattr(node, "routes", None)
        if isinstance(routes, list) and all(hasattr(r, "path") for r in routes):
            return _matcher(list(routes), websocket)
        node = getattr(node, "app", None) or getattr(node, "router", None)
    return None


def _takes_websocket(route: Any) -> bool:
    # By name: Starlette's WebSocketRoute and its subclasses (FastAPI's).
    return any(cls.__name__ == "WebSocketRoute" for cls in type(route).__mro__)


def _matcher(routes: list[Any], websocket: bool) -> HasRoute:
    def has_route(path: str) -> bool:
        for route in routes:
            prefix = getattr(route, "path", None)
            if type(route).__name__ == "Mount" or hasattr(route, "routes"):
                # A mount owns the paths under its prefix; one at the root
                # ("" — static files, a catch-all app) is not a route of ours.
                if prefix and (path == prefix or path.startswith(prefix + "/")):
                    return True
                continue
            # A route of the other kind never sees the request: a catch-all
            # GET takes no handshake, a WebSocket route no GET.
            if _takes_websocket(route) != websocket:
                continue
            regex = getattr(route, "path_regex", None)
            if regex is not None and regex.match(path):
                return True
        return False

    return has_route


def flask_routes(app: Any) -> HasRoute:
    """A Flask app's URL map (read again on each call: routes may come later)."""
    from werkzeug.exceptions import HTTPException, NotFound

    def has_route(path: str) -> bool:
        adapter = app.url_map.bind("localhost")
        try:
            adapter.match(path, method="GET")
        except NotFound:
            return False
        except HTTPException:  # another method, or a redirect to the slash form
            return True
        return True

    return has_route


def django_routes() -> HasRoute:
    """The project's URLconf."""
    from django.urls import Resolver404, resolve

    def has_route(path: str) -> bool:
        try:
            resolve(path)
        except Resolver404:
            return False
        return True

    return has_route

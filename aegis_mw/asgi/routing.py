"""Reading the route template from the ASGI scope after routing.

Starlette's router (and so FastAPI's) stores the matched route object in
``scope["route"]`` and the outermost router in ``scope["router"]``; both land
in the same scope dict the middleware passed down. Routes inside ``Mount``
only know their own path, so the full template ("/api/v1/items/{id}") comes
from walking the router's tree once and caching ``id(route) -> template``.
The request path then costs one dict lookup. No Starlette import is needed:
the walk is duck-typed (``.path``, ``.routes``), and any framework may put a
template string in ``scope["route"]`` itself.
"""

from __future__ import annotations

from typing import Any

from ..core.record import UNMATCHED_ROUTE
from ..types import Scope

_MAX_DEPTH = 16


def _walk(routes: Any, prefix: str, out: dict[int, tuple[object, str]], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    for route in list(routes or ()):
        path = getattr(route, "path", None)
        children = getattr(route, "routes", None)
        if children is not None:  # Mount (has a path) or Host (has none)
            inner = prefix + path if isinstance(path, str) else prefix
            # A mounted app without routes of its own (StaticFiles, a raw
            # ASGI app) is reported under the mount's path.
            out.setdefault(id(route), (route, inner or "/"))
            _walk(children, inner, out, depth + 1)
        elif isinstance(path, str):
            out.setdefault(id(route), (route, prefix + path))


class ScopeRouteReader:
    """The route template of a finished request, or ``<unmatched>``.

    ``templates`` maps ``id(route object)`` to its full template; the
    middleware looks there first and calls :meth:`read` only on a miss. The
    route objects are kept referenced, so an id can never be reused while it
    is a key.

    Example::

        reader = ScopeRouteReader()
        reader(scope)  # "/items/{item_id}" after Starlette routed the request
    """

    def __init__(self) -> None:
        self.templates: dict[int, str] = {}
        self._pinned: list[object] = []
        self._walked: tuple[int, int] | None = None

    def read(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED_ROUTE
        known = self.templates.get(id(route))
        if known is not None:
            return known
        if isinstance(route, str):
            return route
        return self._learn(scope, route)

    __call__ = read

    def _remember(self, route: object, template: str) -> None:
        self._pinned.append(route)
        # Single dict assignments: readers on other threads never see a half state.
        self.templates[id(route)] = template

    def _learn(self, scope: Scope, route: object) -> str:
        router = scope.get("router")
        if router is not None:
            routes = getattr(router, "routes", None) or ()
            signature = (id(router), len(routes))
            if signature != self._walked:
                found: dict[int, tuple[object, str]] = {}
                _walk(routes, "", found, 0)
                for key, (each, template) in found.items():
                    if key not in self.templates:
                        self._remember(each, template)
                self._walked = signature
        known = self.templates.get(id(route))
        if known is not None:
            return known
        # Not in the tree (added by hand, or a copied scope): fall back to
        # what the request shows, the mounted prefix plus the route's path.
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            return UNMATCHED_ROUTE
        root = str(scope.get("root_path", ""))
        base = str(scope.get("app_root_path", ""))
        template = (root[len(base) :] if root.startswith(base) else "") + path
        self._remember(route, template)
        return template

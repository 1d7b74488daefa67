"""Reading the route template from the ASGI scope after routing.

Starlette's router stores the matched route object in ``scope["route"]`` and
the outermost router in ``scope["router"]``; both land in the scope dict the
middleware passed down. Routes inside a ``Mount`` only know their own path,
so the full template ("/api/v1/items/{item_id}") comes from walking the
router's tree once and caching ``id(route) -> template``: the request path
then costs one dict lookup.

FastAPI (0.16x) keeps an included router's routes unprefixed and shared by
every inclusion; it puts the prefixed route for this request in
``scope["fastapi"]["effective_route_context"]``, which is read instead
(those routes are never put in the fast cache).

Templates follow the ``http.route`` convention: convertors dropped
(``/users/{user_id}``), and a mounted app without routes of its own reported
as ``/mount/{path}``. No Starlette import is needed: everything is duck-typed,
and any framework may put a template string in ``scope["route"]`` itself.
"""

from __future__ import annotations

from typing import Any

from ..core.record import UNMATCHED_ROUTE
from ..types import Scope

_MAX_DEPTH = 16
_MOUNT_SUFFIX = "/{path}"


def _leaf_template(route: Any) -> str | None:
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


def _mount_prefix(route: Any) -> str:
    template = _leaf_template(route) or ""
    return template.removesuffix(_MOUNT_SUFFIX)


def _walk(routes: Any, prefix: str, out: dict[int, tuple[object, str]], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    for route in list(routes or ()):
        children = getattr(route, "routes", None)
        if children is not None:  # Mount (has a path) or Host (has none)
            inner = prefix + _mount_prefix(route)
            # Reached when the mounted app has no matching route of its own.
            out.setdefault(id(route), (route, inner + _MOUNT_SUFFIX))
            _walk(children, inner, out, depth + 1)
        else:
            template = _leaf_template(route)
            if template is not None:
                out.setdefault(id(route), (route, prefix + template))


def _mounted_prefix(scope: Scope) -> str:
    """What mounts added to ``root_path`` for this request (actual text)."""
    root = str(scope.get("root_path", ""))
    base = str(scope.get("app_root_path", ""))
    return root[len(base) :] if base and root.startswith(base) else ""


class ScopeRouteReader:
    """The route template of a finished request, or ``<unmatched>``.

    ``templates`` maps ``id(route object)`` to its full template; the
    middleware looks there first and calls :meth:`read` only on a miss. Route
    objects are kept referenced, so an id cannot be reused while it is a key.

    Example::

        reader = ScopeRouteReader()
        reader(scope)  # "/items/{item_id}" after Starlette routed the request
    """

    def __init__(self) -> None:
        self.templates: dict[int, str] = {}
        self._contexts: dict[int, str] = {}
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
        fastapi_scope = scope.get("fastapi")
        if isinstance(fastapi_scope, dict):
            context = fastapi_scope.get("effective_route_context")
            if context is not None:
                return self._from_context(scope, context)
        return self._learn(scope, route)

    __call__ = read

    def _pin(self, cache: dict[int, str], key: object, template: str) -> str:
        self._pinned.append(key)
        # One dict assignment: readers on other threads never see a half state.
        cache[id(key)] = template
        return template

    def _from_context(self, scope: Scope, context: object) -> str:
        known = self._contexts.get(id(context))
        if known is not None:
            return known
        template = _leaf_template(context)
        if template is None:
            return UNMATCHED_ROUTE
        return self._pin(self._contexts, context, _mounted_prefix(scope) + template)

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
                        self._pin(self.templates, each, template)
                self._walked = signature
        known = self.templates.get(id(route))
        if known is not None:
            return known
        # Not in the tree (added by hand, or a copied scope): fall back to
        # what the request shows, the mounted prefix plus the route's path.
        leaf = _leaf_template(route)
        if leaf is None:
            return UNMATCHED_ROUTE
        if getattr(route, "routes", None) is not None:  # a mount, innermost
            leaf = leaf.removesuffix(_MOUNT_SUFFIX) + _MOUNT_SUFFIX
        return self._pin(self.templates, route, _mounted_prefix(scope) + leaf)

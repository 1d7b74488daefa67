"""Reading the route template from the ASGI scope after routing.

Starlette's router stores the matched route object in ``scope["route"]`` and
the outermost router in ``scope["router"]``; both land in the scope dict the
middleware passed down. Routes inside a ``Mount`` only know their own path,
so full templates ("/api/v1/items/{item_id}") come from walking the router's
tree once and caching ``id(route) -> template``: the request path then costs
one dict lookup.

Two cases need the request itself, and are never put in that cache:

- a route object reachable under several mounts (one router mounted twice),
  and FastAPI (0.16x) included routers, whose routes stay unprefixed and are
  shared by every inclusion (FastAPI puts the one for this request in
  ``scope["fastapi"]["effective_route_context"]``);
- for both, the mount prefix comes from what the mounts added to
  ``root_path``, turned back into a template by matching it against the mount
  paths found in the walk (so ``/acme/api`` becomes ``/{tenant}/api``).

Templates follow the ``http.route`` convention: convertors dropped
(``/users/{user_id}``), and a mounted app without a matching route of its own
reported as ``/mount/{path}``. No Starlette import is needed: everything is
duck-typed, and any framework may put a template string in ``scope["route"]``.
"""

from __future__ import annotations

import re
from typing import Any

from ..core.record import UNMATCHED_ROUTE
from ..types import Scope

_MAX_DEPTH = 16
_MOUNT_SUFFIX = "/{path}"
_PARAM = re.compile(r"\{[^}]*\}")
_CACHE_LIMIT = 4096


def _leaf_template(route: Any) -> str | None:
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


def _mount_prefix(route: Any) -> str:
    template = _leaf_template(route) or ""
    return template.removesuffix(_MOUNT_SUFFIX)


def _pattern(template: str) -> re.Pattern[str]:
    """A regex matching the paths a mount template stands for (``/{t}/api``)."""
    return re.compile("[^/]+".join(re.escape(part) for part in _PARAM.split(template)))


class _Tree:
    """What one walk of the route tree found."""

    def __init__(self) -> None:
        self.templates: dict[int, tuple[object, str]] = {}
        self.ambiguous: dict[int, object] = {}
        self.mounts: set[str] = set()

    def add(self, route: object, template: str) -> None:
        key = id(route)
        known = self.templates.get(key)
        if known is not None and known[1] != template:
            self.ambiguous[key] = route
        self.templates.setdefault(key, (route, template))

    def walk(self, routes: Any, prefix: str = "", depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            return
        for route in list(routes or ()):
            children = getattr(route, "routes", None)
            if children is not None:  # Mount (has a path) or Host (has none)
                inner = prefix + _mount_prefix(route)
                if inner:
                    self.mounts.add(inner)
                # Reached when the mounted app has no matching route of its own.
                self.add(route, inner + _MOUNT_SUFFIX)
                self.walk(children, inner, depth + 1)
            else:
                template = _leaf_template(route)
                if template is not None:
                    self.add(route, prefix + template)


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
        self._pinned: list[object] = []
        self._ambiguous: dict[int, object] = {}
        self._contexts: dict[tuple[int, str], str] = {}
        self._mount_literals: set[str] = set()
        self._mount_patterns: list[tuple[re.Pattern[str], str]] = []
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
        self._walk_if_changed(scope)
        known = self.templates.get(id(route))
        if known is not None:
            return known
        leaf = _leaf_template(route)
        if leaf is None:
            return UNMATCHED_ROUTE
        if getattr(route, "routes", None) is not None:  # a mount, innermost
            leaf = leaf.removesuffix(_MOUNT_SUFFIX) + _MOUNT_SUFFIX
        prefix, _ = self._prefix(scope)
        if id(route) not in self._ambiguous and not prefix:
            # Not under a mount and not in the tree (added by hand, say): its
            # template cannot depend on the request.
            self._pinned.append(route)
            self.templates[id(route)] = leaf
        return prefix + leaf

    __call__ = read

    def _from_context(self, scope: Scope, context: object) -> str:
        prefix, known_prefix = self._prefix(scope)
        key = (id(context), prefix)
        cached = self._contexts.get(key)
        if cached is not None:
            return cached
        leaf = _leaf_template(context)
        if leaf is None:
            return UNMATCHED_ROUTE
        template = prefix + leaf
        if known_prefix and len(self._contexts) < _CACHE_LIMIT:
            self._pinned.append(context)
            self._contexts[key] = template
        return template

    def _prefix(self, scope: Scope) -> tuple[str, bool]:
        """The mount prefix template for this request, and whether it is one the
        walk found (else it is the literal text, from a mount it did not see)."""
        if "app_root_path" not in scope:
            return "", True
        root = str(scope.get("root_path", ""))
        base = str(scope["app_root_path"])
        added = root[len(base) :] if root.startswith(base) else ""
        if not added or added in self._mount_literals:
            return added, True
        if not self._mount_literals and not self._mount_patterns:
            self._walk_if_changed(scope)
            if added in self._mount_literals:
                return added, True
        for pattern, template in self._mount_patterns:
            if pattern.fullmatch(added):
                return template, True
        return added, False

    def _walk_if_changed(self, scope: Scope) -> None:
        router = scope.get("router")
        if router is None:
            return
        routes = getattr(router, "routes", None) or ()
        signature = (id(router), len(routes))
        if signature == self._walked:
            return
        tree = _Tree()
        tree.walk(routes)
        for key, route in tree.ambiguous.items():
            self._pinned.append(route)
            self._ambiguous[key] = route
            self.templates.pop(key, None)
        for key, (route, template) in tree.templates.items():
            if key not in self.templates and key not in self._ambiguous:
                self._pinned.append(route)
                # One dict assignment: readers on other threads never see a half state.
                self.templates[key] = template
        self._mount_literals |= {m for m in tree.mounts if not _PARAM.search(m)}
        self._mount_patterns = [
            (_pattern(mount), mount) for mount in sorted(tree.mounts) if _PARAM.search(mount)
        ]
        self._walked = signature

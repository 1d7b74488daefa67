"""Route templates for WSGI apps, from a route object left in the environ.

A framework that matched the URL holds the matched route object (Flask's
``Rule``); an integration leaves it in the environ, and the middleware names
it when the request ends. Naming it by its identity, from a cache, keeps the
work inside the framework's request to one dictionary store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Route objects remembered per reader: an app has a bounded set of routes,
#: and past this many a reader stops caching rather than grow.
MAX_CACHED_ROUTES = 10_000


class ObjectRouteReader:
    """Names ``environ[environ_key]`` (a route object, or None) by
    ``template(route)``, cached by the object's identity.

    Example::

        reader = ObjectRouteReader("myframework.route", lambda route: route.pattern)
        AegisWSGIMiddleware(app, route_reader=reader)

    The compiled WSGI path does the same lookup itself (``templates`` is the
    cache it reads), and asks this reader only for an object it has not named.
    """

    def __init__(self, environ_key: str, template: Callable[[Any], str]) -> None:
        self.environ_key = environ_key
        self._template = template
        #: id(route object) -> template; the objects are kept in ``_routes``,
        #: so an id in here is never reused by another object.
        self.templates: dict[int, str] = {}
        self._routes: list[Any] = []

    def __call__(self, environ: dict[str, Any]) -> str | None:
        route = environ.get(self.environ_key)
        if route is None:
            return None
        template = self.templates.get(id(route))
        if template is None:
            template = self._template(route)
            if len(self._routes) < MAX_CACHED_ROUTES:
                self._routes.append(route)
                self.templates[id(route)] = template
        return template

"""The pure-ASGI side: the middleware and the route-template reader."""

from __future__ import annotations

from .middleware import AegisMiddleware
from .routing import ScopeRouteReader

__all__ = ["AegisMiddleware", "ScopeRouteReader"]

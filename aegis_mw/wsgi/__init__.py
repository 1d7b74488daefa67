"""WSGI (PEP 3333): ``AegisWSGIMiddleware`` for Flask, Django and any WSGI app."""

from __future__ import annotations

from .middleware import AegisWSGIMiddleware

__all__ = ["AegisWSGIMiddleware"]
